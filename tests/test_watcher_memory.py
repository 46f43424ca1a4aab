"""Memory of the watcher and the stat cache on a 100k-file workspace (issue target: < 150 MB).

Measured in fresh child processes (this file run as a script) so that nothing else the test
run has allocated is counted; RSS is VmRSS from /proc/self/status.

- "first open": a process opens the store, then the workspace (watches added in the
  background), takes the initial snapshot (reads and stores every file) and one more through
  the watcher. Reported: RSS after the watches are ready, and after the snapshots.
- "reopen": a second process opens the same store and workspace (the stat cache is loaded
  from the catalog) with the watcher, changes 10 files, adds 2, deletes 1, and snapshots
  through the watcher: the steady state of a daemon that restarted. This is the figure the
  target applies to; the first process's figure also holds what the initial snapshot
  allocated and freed (CPython keeps freed memory), reported with a warning if over.

Run: .venv/bin/pytest -m slow -s tests/test_watcher_memory.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import pytest

FILES = 100_000
PER_DIR = 50  # 2,000 directories of 50 files, two levels deep
LIMIT_MB = 150


def _make_tree(root: str) -> None:
    payload = b"x" * 100
    for i in range(FILES // PER_DIR):
        d = os.path.join(root, f"pkg{i // 100}", f"mod{i % 100}")
        os.makedirs(d)
        for j in range(PER_DIR):
            fd = os.open(os.path.join(d, f"f{j}.js"), os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, payload + b"%d.%d" % (i, j))
            os.close(fd)


def _child(phase: str, base: str) -> dict:
    warnings.filterwarnings("ignore", "Callback with id")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_watcher_support import vm_rss_kib

    from snapd.store.store import Store
    from snapd.workspace import Workspace, WorkspaceSettings

    ws_dir = os.path.join(base, "ws")
    store = Store.open(os.path.join(base, "store"))
    out = {"rss_base_mib": vm_rss_kib() / 1024}
    t0 = time.perf_counter()
    ws = Workspace.open(store, ws_dir, WorkspaceSettings(keep_last=10))
    assert ws.watcher.ready.wait(300)
    out["open_and_watch_s"] = time.perf_counter() - t0
    out["watches"] = ws.watcher.counters["watches"]
    out["rss_watcher_ready_mib"] = vm_rss_kib() / 1024
    if phase == "first":
        t0 = time.perf_counter()
        ws.snapshot()
        out["initial_snapshot_s"] = time.perf_counter() - t0
    else:
        # The walk that follows the watches (it finds nothing: the tree did not change).
        assert ws.settled.wait(300)
        for k in range(10):
            with open(os.path.join(ws_dir, f"pkg{k}", "mod3", "f7.js"), "ab") as f:
                f.write(b"// changed\n")
        for k in range(2):
            with open(os.path.join(ws_dir, f"pkg{k}", f"new{k}.js"), "wb") as f:
                f.write(b"new")
        os.unlink(os.path.join(ws_dir, "pkg5", "mod5", "f5.js"))
        t0 = time.perf_counter()
        rec = ws.snapshot()  # through the watcher: reads exactly the 12 files written
        out["first_snapshot_after_reopen_s"] = time.perf_counter() - t0
        out["read_files"] = rec.stats["read_files"]
    t0 = time.perf_counter()
    rec = ws.snapshot()
    out["watcher_snapshot_ms"] = (time.perf_counter() - t0) * 1000
    out["total_files"] = rec.stats["total_files"]
    out["rss_end_mib"] = vm_rss_kib() / 1024
    out["rss_increase_mib"] = out["rss_end_mib"] - out["rss_base_mib"]
    ws.close()
    store.close()
    return out


@pytest.mark.slow
def test_watcher_and_stat_cache_memory_on_100k_files() -> None:
    base = tempfile.mkdtemp(prefix="snapd-watch-mem-")
    try:
        t0 = time.perf_counter()
        _make_tree(os.path.join(base, "ws"))
        made = time.perf_counter() - t0
        results = {}
        for phase in ("first", "reopen"):
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), phase, base],
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            results[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"\n100k-file tree made in {made:.1f} s")
        for phase, r in results.items():
            print(f"{phase}: " + ", ".join(f"{k}={v:.1f}" for k, v in r.items()))
        assert results["first"]["total_files"] == FILES
        assert results["reopen"]["total_files"] == FILES + 2 - 1
        assert results["reopen"]["read_files"] == 12
        # The watcher itself: its watches, before any snapshot.
        watcher_mib = results["first"]["rss_watcher_ready_mib"] - results["first"]["rss_base_mib"]
        assert watcher_mib < 20, f"watcher alone: {watcher_mib:.0f} MiB"
        # Watcher + stat cache in steady state (a daemon that opened the workspace again).
        steady = results["reopen"]["rss_increase_mib"]
        assert steady < LIMIT_MB, f"watcher + stat cache: {steady:.0f} MiB"
        first = results["first"]["rss_increase_mib"]
        if first >= LIMIT_MB:
            # Not the watcher's: the initial snapshot's transient allocations (reading and
            # storing every file) stay in the process's heap. Reported, not asserted here.
            warnings.warn(
                f"RSS after the initial snapshot of {FILES} files grew by {first:.0f} MiB "
                f"(target {LIMIT_MB} MiB; watcher + stat cache alone: {steady:.0f} MiB)",
                stacklevel=1,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2])))
