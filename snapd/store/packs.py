"""Append-only pack files: many objects per file, so small files do not cost one inode each.

A process appends to one active pack at a time and holds an exclusive flock on it while it does;
garbage collection only rewrites packs whose flock it can take, so it never races a writer.
Reads use pread on cached descriptors.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import threading
from collections import OrderedDict

from ..errors import ResourceExhausted
from .format import FORMAT_VERSION, PACK_HEADER, PACK_MAGIC

# Rotate to a new pack past this size. Smaller packs make compaction finer-grained; larger
# ones mean fewer files. 32 MiB is in the range restic and kopia use.
PACK_TARGET_SIZE = 32 * 1024 * 1024


def pack_filename(name: str) -> str:
    return f"{name}.pack"


class PackWriter:
    """The active pack of this process. Thread-safe."""

    def __init__(self, packs_dir: str, register) -> None:
        self._dir = packs_dir
        self._register = register  # callable(name) -> pack id (inserts the catalog row)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pack_id = 0
        self._size = 0
        self.dirty_packs: set[int] = set()

    def _open_new(self) -> None:
        self._close_locked()
        name = secrets.token_hex(8)
        path = os.path.join(self._dir, pack_filename(name))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            _reraise(e)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = PACK_HEADER.pack(PACK_MAGIC, FORMAT_VERSION)
            try:
                _write_all(fd, header)
            except OSError as e:
                _reraise(e)
            pack_id = self._register(name, len(header))
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        self._fd, self._pack_id, self._size = fd, pack_id, len(header)

    def append(self, records: list[bytes]) -> tuple[int, list[int]]:
        """Append records; returns (pack id, offset of each record). Data is written, not synced."""
        blob = b"".join(records)
        with self._lock:
            if self._fd is None or (self._size + len(blob) > PACK_TARGET_SIZE and self._size > 64):
                self._open_new()
            start = self._size
            try:
                _write_all(self._fd, blob, start)
            except OSError as e:
                # A short or failed write leaves garbage at the tail; start a fresh pack next time
                # so offsets stay exact.
                self._close_locked()
                _reraise(e)
            self._size += len(blob)
            self.dirty_packs.add(self._pack_id)
            offsets = []
            pos = start
            for r in records:
                offsets.append(pos)
                pos += len(r)
            return self._pack_id, offsets

    def _close_locked(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also drops the flock
            self._fd = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def seal(self, pack_id: int) -> None:
        """Stop appending to `pack_id` if it is the active pack (so it can be compacted)."""
        with self._lock:
            if self._fd is not None and self._pack_id == pack_id:
                self._close_locked()

    @property
    def active_pack(self) -> int:
        return self._pack_id if self._fd is not None else 0


def _reraise(e: OSError) -> None:
    """Re-raise a write error, as ResourceExhausted when the file system is full."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise ResourceExhausted(
            "no space left on the store's file system; free space or run 'snapd gc', then retry"
        ) from e
    raise e


def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if offset is None:
            n = os.write(fd, view[pos:])
        else:
            n = os.pwrite(fd, view[pos:], offset + pos)
        if n <= 0:
            raise OSError(errno.EIO, "short write to pack")
        pos += n


class PackReader:
    """pread from packs through a cache of open descriptors. Thread-safe.

    A descriptor is closed only when no reader is using it, so a concurrent eviction can never
    make a pread hit a reused descriptor number.
    """

    def __init__(self, packs_dir: str, limit: int = 128) -> None:
        self._dir = packs_dir
        self._fds: OrderedDict[str, list[int]] = OrderedDict()  # name -> [fd, users]
        self._lock = threading.Lock()
        self._limit = limit

    def read(self, name: str, offset: int, length: int) -> bytes:
        slot, fd = self._acquire(name)
        try:
            data = os.pread(fd, length, offset)
        finally:
            self._release(slot)
        if len(data) != length:
            raise EOFError(f"pack {name} is shorter than its index says")
        return data

    def _acquire(self, name: str) -> tuple[list[int], int]:
        with self._lock:
            slot = self._fds.get(name)
            if slot is None:
                path = os.path.join(self._dir, pack_filename(name))
                slot = self._fds[name] = [os.open(path, os.O_RDONLY | os.O_CLOEXEC), 0]
                self._evict_locked()
            else:
                self._fds.move_to_end(name)
            slot[1] += 1
            return slot, slot[0]

    def _release(self, slot: list[int]) -> None:
        with self._lock:
            slot[1] -= 1
            if slot[1] == 0 and slot[0] < 0:
                os.close(-slot[0] - 1)

    def _evict_locked(self) -> None:
        for name in list(self._fds):
            if len(self._fds) <= self._limit:
                break
            self._drop_locked(name)

    def _drop_locked(self, name: str) -> None:
        slot = self._fds.pop(name, None)
        if slot is None:
            return
        if slot[1] == 0:
            os.close(slot[0])
        else:
            slot[0] = -slot[0] - 1  # closed by the last user

    def forget(self, name: str) -> None:
        with self._lock:
            self._drop_locked(name)

    def close(self) -> None:
        with self._lock:
            for name in list(self._fds):
                self._drop_locked(name)
