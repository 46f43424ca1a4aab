"""Benchmark: the daemon's overhead. The same snapshot through the client library and the daemon,
and as an in-process engine call, in the same run.

Two identical copies of a synthetic source tree (default 2,000 files in 100 directories, 0.5-8
KiB each, fixed seed): one is a workspace of a real `snapd serve` subprocess (its own store and
socket), the other a workspace of an in-process Store. Same settings on both (file watcher on,
the default). Interleaved, so both sides see the same machine noise:

  unchanged     snapshot of a workspace with no change since the last snapshot
  one file      one file rewritten (same content on both sides), then a snapshot
  ping          a round trip with no engine work (GetStats with no figures), for scale
  bare gRPC     the same round trip to a minimal gRPC server in its own process that answers
                with an empty message: the transport's floor on this machine at this moment

The difference of the medians is the daemon's cost per call (gRPC over the Unix socket,
message conversion, the call log line); the target is under 1 ms.

Run:  .venv/bin/python -m benchmarks.bench_api [--files N] [--iterations N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `snapd` importable from the checkout
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from snapd_client import Client

from snapd.server.testing import DaemonProcess, short_tempdir
from snapd.store.store import Store
from snapd.workspace import Workspace, WorkspaceSettings


def make_tree(root: Path, files: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    rels = []
    for i in range(files):
        rel = f"pkg{i % 100:03d}/sub{i % 7}/mod_{i:05d}.py"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randrange(512, 8192)))
        rels.append(rel)
    return rels


BARE_SERVER = """
import sys, time
from concurrent import futures
import grpc
from snapd_client._proto import snapd_pb2 as pb, snapd_pb2_grpc as pbg
class Bare(pbg.SnapdServiceServicer):
    def GetStats(self, request, context):
        return pb.GetStatsResponse()
server = grpc.server(futures.ThreadPoolExecutor(32))
pbg.add_SnapdServiceServicer_to_server(Bare(), server)
server.add_insecure_port("unix:" + sys.argv[1])
server.start()
print("ready", flush=True)
sys.stdin.read()
"""


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def ms(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(values) * 1000,
        "p95_ms": percentile(values, 0.95) * 1000,
    }


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(files: int, iterations: int, warmup: int, seed: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="snapd-bench-api-"))
    sock_root = short_tempdir("snapd-bench-")
    daemon = None
    bare = None
    try:
        via_daemon, in_process = work / "daemon-ws", work / "engine-ws"
        rels = make_tree(via_daemon, files, seed)
        shutil.copytree(via_daemon, in_process, symlinks=True)
        daemon = DaemonProcess(
            str(work / "daemon-store"),
            os.path.join(sock_root, "snapd.sock"),
            args=["--no-background-gc", "--log-level", "warning"],
        ).start()
        client = daemon.client()
        bare_sock = os.path.join(sock_root, "bare.sock")
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE_SERVER, bare_sock],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
        bare_client = Client(bare_sock)
        settings = dict(keep_last=5, keep_durable=0)
        ws_client = client.open_workspace(str(via_daemon), **settings)
        store = Store.open(str(work / "engine-store"))
        ws_engine = Workspace.open(store, str(in_process), WorkspaceSettings(**settings))
        ws_client.snapshot(label="initial")
        ws_engine.snapshot(label="initial")

        rng = random.Random(seed + 1)
        samples: dict[str, list[float]] = {
            k: [] for k in ("unchanged/client", "unchanged/engine", "one/client", "one/engine")
        }
        samples["ping/client"] = []
        samples["ping/bare"] = []
        for i in range(warmup + iterations):
            keep = i >= warmup
            # unchanged workspace
            order = [("client", ws_client.snapshot), ("engine", ws_engine.snapshot)]
            if i % 2:
                order.reverse()
            for side, snap in order:
                t = timed(snap)
                if keep:
                    samples[f"unchanged/{side}"].append(t)
            # one file changed (the same bytes on both sides)
            rel = rng.choice(rels)
            data = rng.randbytes(rng.randrange(512, 8192))
            for root in (via_daemon, in_process):
                (root / rel).write_bytes(data)
            for side, snap in order:
                t = timed(snap)
                if keep:
                    samples[f"one/{side}"].append(t)
            for name, c in (("client", client), ("bare", bare_client)):
                t = timed(lambda c=c: c.stats(-1, skip_store=True))
                if keep:
                    samples[f"ping/{name}"].append(t)
        ws_engine.close()
        store.close()
        client.close()
        bare_client.close()
        rows = []
        for name, label in (("unchanged", "unchanged workspace"), ("one", "one file changed")):
            c, e = ms(samples[f"{name}/client"]), ms(samples[f"{name}/engine"])
            rows.append(
                {
                    "case": label,
                    "client": c,
                    "engine": e,
                    "overhead_median_ms": c["median_ms"] - e["median_ms"],
                    "overhead_p95_ms": c["p95_ms"] - e["p95_ms"],
                }
            )
        return {
            "files": files,
            "iterations": iterations,
            "ping": ms(samples["ping/client"]),
            "bare_grpc": ms(samples["ping/bare"]),
            "load_average": os.getloadavg(),
            "rows": rows,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
    finally:
        if bare is not None:
            bare.kill()
            bare.wait()
        if daemon is not None:
            daemon.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sock_root, ignore_errors=True)


def render(result: dict) -> str:
    head = (
        f"snapshot through the daemon vs in-process engine: {result['files']} files, "
        f"{result['iterations']} iterations, {result['cpus']} CPUs, Python {result['python']}"
    )
    cols = ["case", "client med", "client p95", "engine med", "engine p95", "overhead med",
            "overhead p95"]  # fmt: skip
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        cells = [
            r["case"],
            f"{r['client']['median_ms']:.3f} ms",
            f"{r['client']['p95_ms']:.3f} ms",
            f"{r['engine']['median_ms']:.3f} ms",
            f"{r['engine']['p95_ms']:.3f} ms",
            f"{r['overhead_median_ms']:+.3f} ms",
            f"{r['overhead_p95_ms']:+.3f} ms",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    p, b = result["ping"], result["bare_grpc"]
    lines.append("")
    lines.append(
        f"ping through the daemon (no engine work): median {p['median_ms']:.3f} ms, "
        f"p95 {p['p95_ms']:.3f} ms"
    )
    lines.append(
        f"bare gRPC round trip (transport floor):    median {b['median_ms']:.3f} ms, "
        f"p95 {b['p95_ms']:.3f} ms"
    )
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    lines.append(f"load average at the end: {load}")
    worst = max(r["overhead_median_ms"] for r in result["rows"])
    verdict = "meets" if worst < 1.0 else "MISSES"
    lines.append(f"target: median overhead < 1 ms: {verdict} (worst {worst:.3f} ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    result = run(args.files, args.iterations, args.warmup, args.seed)
    print(render(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
