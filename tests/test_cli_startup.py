"""The CLI starts fast and fails cleanly without a daemon.

Start-up cost is measured structurally, not by the clock: `python -X importtime` lists every
module a run imports, and `--help`, a subcommand's help and a usage error must not import
grpc, rich, protobuf, the client library or the engine (only the command that runs does).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from snapd.server.testing import short_tempdir

HEAVY = ("grpc", "rich", "zstandard", "google.protobuf", "snapd_client", "snapd.store", "xxhash")


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {k: v for k, v in os.environ.items() if k != "SNAPD_SOCKET"}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "snapd.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
    return proc, modules


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize(
    "args",
    [["--help"], ["log", "--help"], ["diff", "--help"], ["workspaces", "open", "--help"]],
    ids=lambda a: " ".join(a),
)
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    proc, modules = imported_modules(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # It measured something (snapd.cli itself runs as __main__, so is not listed).
    assert "snapd.cli_commands.parsers" in modules
    assert heavy(modules) == []
    # Command implementations are loaded only when their command runs.
    assert not any(m.startswith("snapd.cli_commands.") and m.endswith("context") for m in modules)


def test_usage_error_imports_nothing_heavy() -> None:
    proc, modules = imported_modules("log", "--limit", "minus-one")
    assert proc.returncode == 2
    assert "--limit" in proc.stderr
    assert heavy(modules) == []


def test_a_command_does_import_the_client() -> None:
    """The check above can see heavy imports: a real command run shows them."""
    proc, modules = imported_modules("--socket", "/nonexistent/snapd.sock", "log")
    assert proc.returncode == 5
    assert "grpc" in modules and "snapd_client" in modules


def test_help_documents_every_command_and_the_exit_codes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "snapd.cli", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for command in [
        "serve",
        "workspaces",
        "log",
        "show",
        "diff",
        "cat",
        "ls",
        "snapshot",
        "restore",
        "persist",
        "pin",
        "unpin",
        "rm",
        "fork",
        "gc",
        "verify",
        "stats",
    ]:
        assert f"\n    {command} " in out, command
    assert "exit codes:" in out
    for code in ("0", "1", "2", "3", "4", "5", "6", "7", "130"):
        assert f"\n  {code} " in out, code


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snapd.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_no_daemon_exits_5_with_a_json_error(tmp_path) -> None:
    missing = str(tmp_path / "none.sock")
    proc = run_cli("--socket", missing, "log")
    assert proc.returncode == 5
    assert "no snapd daemon is running at" in proc.stderr and missing in proc.stderr
    assert proc.stdout == ""

    proc = run_cli("stats", "--json", "--socket", missing)
    assert proc.returncode == 5
    doc = json.loads(proc.stdout)
    assert doc["error"]["code"] == "UNAVAILABLE" and doc["error"]["exit_code"] == 5


def test_default_socket_comes_from_the_environment(tmp_path) -> None:
    missing = str(tmp_path / "env.sock")
    env = {**os.environ, "SNAPD_SOCKET": missing}
    proc = run_cli("workspaces", env=env)
    assert proc.returncode == 5 and missing in proc.stderr


def test_stale_socket_file_exits_5() -> None:
    """A socket file nobody listens on (a daemon killed with -9): connection refused."""
    root = short_tempdir()
    path = os.path.join(root, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays, nothing listens
    try:
        proc = run_cli("--socket", path, "--json", "workspaces")
        assert proc.returncode == 5, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["error"]["code"] == "UNAVAILABLE"
        assert "cannot reach the snapd daemon" in doc["error"]["message"]
    finally:
        os.unlink(path)
        os.rmdir(root)


def test_usage_errors_exit_2_and_json_runs_still_get_one_document() -> None:
    proc = run_cli("verify", "--sample", "2")
    assert proc.returncode == 2 and "fraction" in proc.stderr

    proc = run_cli("snapshot", "-m", "no-equals-sign", "--json")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["error"]["code"] == "INVALID_ARGUMENT" and doc["error"]["exit_code"] == 2
    assert "KEY=VALUE" in doc["error"]["message"]
