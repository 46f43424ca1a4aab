"""The committed generated code in client/snapd_client/_proto/ matches protos/ (CI's check that
nobody edited a .proto without running scripts/gen-protos), and the protos pass buf lint.

Why committed: installing the client (pip install ./client) then needs no code generation step
and no grpcio-tools; this test keeps the committed files honest.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "client" / "snapd_client" / "_proto"


def test_generated_code_is_in_sync(tmp_path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools regenerates the code")
    out = tmp_path / "proto"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-protos"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    fresh = sorted(os.listdir(out))
    committed = sorted(p.name for p in COMMITTED.iterdir() if p.name != "__pycache__")
    assert fresh == committed, "run scripts/gen-protos: the set of generated files differs"
    stale = [name for name in fresh if not filecmp.cmp(out / name, COMMITTED / name, False)]
    assert not stale, f"run scripts/gen-protos: {stale} differ from protos/"


def test_generated_code_imports_with_the_installed_runtime() -> None:
    from snapd_client._proto import snapd_pb2, snapd_pb2_grpc

    service = snapd_pb2.DESCRIPTOR.services_by_name["SnapdService"]
    assert service.full_name == "snapd.v1.SnapdService"
    assert hasattr(snapd_pb2_grpc, "SnapdServiceStub")


def test_buf_lint() -> None:
    buf = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    if not os.path.exists(buf):
        pytest.skip("buf is not installed (pip install buf-bin)")
    result = subprocess.run(
        [buf, "lint"], cwd=REPO / "protos", capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
