"""fsutil.read_all: a regular file's whole content whatever the size hint, in one read call
when the hint is right (the common case: the size fstat just gave)."""

from __future__ import annotations

import os

import pytest

from snapd import fsutil


@pytest.mark.parametrize("size", [0, 1, 4095, 65535, 65536, 65537, 300_000])
def test_reads_everything_for_any_hint(tmp_path, size):
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        for hint in (size, 0, size - 7, size + 7, size * 2):
            assert fsutil.read_all(fd, hint) == data
    finally:
        os.close(fd)


def test_one_call_when_the_hint_is_the_size(tmp_path, monkeypatch):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 1000)
    calls = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: calls.append(n) or real(fd, n, off))
    fd = os.open(p, os.O_RDONLY)
    try:
        assert fsutil.read_all(fd, 1000) == b"x" * 1000
    finally:
        os.close(fd)
    assert len(calls) == 1


def test_a_file_longer_than_its_hint_is_read_to_the_end(tmp_path):
    data = os.urandom(200_000)
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert fsutil.read_all(fd, 10) == data  # grew since the stat that gave the hint
    finally:
        os.close(fd)
