"""Child program for the crash-consistency test (tests/test_store_crash.py), and its log format.

The child mutates a workspace, takes snapshots, persists some, restores, deletes and collects
garbage, forever, until the test SIGKILLs it. It records what it did in two append-only JSON-lines
files in the log directory, each line written with a single write() so a kill leaves at most one
partial last line:

  snapshots.jsonl  every snapshot it took, with a manifest of the exact tree it holds (written
                   after snapshot() returned; not fsynced: a process crash loses nothing written)
  durable.jsonl    every snapshot made durable, written only AFTER persist() (or a snapshot taken
                   with durable=True) returned, and fsynced, so it survives a simulated power loss
  wrong.jsonl      engine bugs seen as they happen: a snapshot whose trees differ from the tree it
                   was taken of (written before the snapshot is recorded in the other logs), or a
                   restore that did not reproduce its target

A manifest maps path (hex of the bytes) -> [kind, mode, mtime_ns, size, sha256, target hex], the
fields of tests/treeutil.Item that restore must reproduce exactly.

Run by hand: `python tests/crashloop_child.py --store S --workspace W --log-dir L --iterations N`
(stops after N iterations). The test runs it with --zygote (see zygote()) and SIGKILLs the
children it forks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import traceback
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import treeutil

from snapd import browse
from snapd.errors import SnapdError
from snapd.ignore import INTERNAL_PREFIX
from snapd.store import gc
from snapd.store.format import (
    CODEC_ZSTD_DELTA,
    KIND_CHUNKLIST,
    KIND_TREE,
    decode_chunklist,
    tree_refs,
)
from snapd.store.store import Store
from snapd.workspace import Workspace, WorkspaceSettings

SNAPSHOT_LOG = "snapshots.jsonl"
DURABLE_LOG = "durable.jsonl"
WRONG_LOG = "wrong.jsonl"
# Retention the child uses: a small window so eviction and GC have real work, and durable
# snapshots kept without limit so that every one the child recorded must survive.
KEEP_LAST = 5
KEEP_DURABLE = 1_000_000

Manifest = dict[str, list]


# --- manifests (shared with the test) -----------------------------------------------------------
def _is_internal(path: bytes) -> bool:
    # snapd's own temporary names (restore temp files, probes) are never part of a snapshot.
    return path.rsplit(b"/", 1)[-1].startswith(INTERNAL_PREFIX)


def manifest_of(root: str) -> Manifest:
    cap = treeutil.capture(root, skip=_is_internal)
    return {
        path.hex(): [it.kind, it.mode, it.mtime_ns, it.size, it.digest, it.target.hex()]
        for path, it in cap.items()
    }


def manifest_diff(actual: Manifest, expected: Manifest, limit: int = 20) -> list[str]:
    """Readable differences between two manifests (empty when equal)."""
    out = []
    for key in sorted(set(actual) | set(expected)):
        a, e = actual.get(key), expected.get(key)
        if a != e:
            out.append(f"{bytes.fromhex(key)!r}: actual={a} expected={e}")
            if len(out) >= limit:
                out.append("...")
                break
    return out


def tree_listing(store: Store, root_tree: bytes) -> Manifest:
    """What a snapshot's trees say, in manifest form without digests (no content is read)."""
    out: Manifest = {}
    for e in browse.list_dir(store, root_tree, "", recursive=True):
        size = 0 if e.kind == "dir" else e.size
        target = os.fsencode(e.target).hex() if e.kind == "symlink" else ""
        out[os.fsencode(e.path).hex()] = [e.kind, e.mode, e.mtime_ns, size, target]
    return out


def without_digests(manifest: Manifest) -> Manifest:
    return {k: [v[0], v[1], v[2], v[3], v[5]] for k, v in manifest.items()}


def read_log(path: str) -> list[dict]:
    """Complete lines of a JSON-lines log; a torn last line (killed mid-write) is ignored."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:
        try:
            out.append(json.loads(line))
        except ValueError:
            # A record torn by a kill, with the next child's record appended after it: the
            # torn one was never acknowledged, so it is not part of the log.
            start = line.rfind(b'{"')
            if start > 0:
                try:
                    out.append(json.loads(line[start:]))
                except ValueError:
                    pass
    return out


def append_line(path: str, obj: dict, *, fsync: bool) -> None:
    line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        n = os.write(fd, line)
        assert n == len(line), "short append to the log"
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def refcount_errors(store: Store, limit: int = 20) -> list[str]:
    """Objects whose `refs` differs from the store's documented invariant, and dangling references.

    The invariant (snapd/store/store.py): an object's count is the number of references it
    receives from snapshots (root trees), workspace heads, and every object in the catalog,
    garbage included (tree entries, chunk-list entries, delta bases), except the children of an
    object queued in pending_refs beyond its `done` count. Garbage keeps its references until GC
    deletes it and releases them. So this counts from every object, not only the reachable
    ones. Run it with nothing else writing to the store.
    """
    pending = dict(store.query("SELECT id, done FROM pending_refs"))
    want: Counter[bytes] = Counter()
    for (root,) in store.query("SELECT root_tree FROM snapshots"):
        want[root] += 1
    for (head,) in store.query("SELECT head_tree FROM workspaces WHERE head_tree IS NOT NULL"):
        want[head] += 1
    have: dict[bytes, int] = {}

    def named(oid: bytes, kind: int) -> list[bytes]:
        if kind == KIND_TREE:
            return tree_refs(store.read(oid, KIND_TREE))
        if kind == KIND_CHUNKLIST:
            return [cid for cid, _ in decode_chunklist(store.read(oid, KIND_CHUNKLIST))]
        return []

    rows = store.query("SELECT id, kind, codec, base, refs FROM objects")
    for oid, kind, codec, base, refs in rows:
        have[oid] = refs
        if base is not None:
            want[base] += 1
        children = named(oid, kind)
        if codec == CODEC_ZSTD_DELTA and base is not None and children:
            # A delta's children that its base names too are held through the base.
            held = Counter(named(base, kind))
            kept = []
            for c in children:
                if held[c] > 0:
                    held[c] -= 1
                else:
                    kept.append(c)
            children = kept
        if oid in pending:
            children = children[: pending[oid]]
        want.update(children)
    errors = [
        f"{oid.hex()}: refs={refs}, referenced {want.get(oid, 0)} times"
        for oid, refs in have.items()
        if refs != want.get(oid, 0)
    ]
    errors += [
        f"{oid.hex()}: referenced {n} times but missing"
        for oid, n in want.items()
        if oid not in have
    ]
    return errors[:limit] + ([f"... {len(errors) - limit} more"] if len(errors) > limit else [])


# --- the workload -------------------------------------------------------------------------------
DIRS = ["", "src", "src/pkg", "docs", "data", "data/deep/er"]
BIG_FILE = "data/blob.bin"  # above the 1 MiB chunking threshold: stored as a chunk list


def _text(rng: random.Random, n: int) -> bytes:
    words = [b"alpha", b"beta", b"gamma", b"delta", b"snap", b"shot", b"def", b"return", b"\n"]
    return b" ".join(rng.choice(words) for _ in range(max(1, n // 5)))[:n]


def seed_tree(root: str, rng: random.Random) -> None:
    for d in DIRS:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i in range(30):
        d = rng.choice(DIRS)
        size = rng.choice([0, 10, 300, 4000, 20000, 90000])
        data = _text(rng, size) if rng.random() < 0.7 else rng.randbytes(size)
        treeutil.write(root, os.path.join(d, f"f{i}.txt"), data)
    treeutil.write(root, BIG_FILE, rng.randbytes(1_500_000))
    os.symlink("src/f1.txt", os.path.join(root, "link"))
    os.makedirs(os.path.join(root, "empty"), exist_ok=True)


def _files(root: str) -> list[str]:
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if n.encode().startswith(INTERNAL_PREFIX) or os.path.islink(p):
                continue
            out.append(os.path.relpath(p, root))
    return sorted(out)


def mutate(root: str, rng: random.Random) -> None:
    """One random edit of the kinds an agent makes."""
    files = _files(root)
    op = rng.random()
    if op < 0.35 and files:  # rewrite a file
        f = rng.choice(files)
        if f == BIG_FILE:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.seek(rng.randrange(1_400_000))
                fh.write(rng.randbytes(rng.choice([10, 5000, 70000])))
        else:
            treeutil.write(root, f, _text(rng, rng.choice([5, 200, 3000, 30000])))
    elif op < 0.5 and files:  # append
        with open(os.path.join(root, rng.choice(files)), "ab") as fh:
            fh.write(_text(rng, rng.randrange(1, 2000)))
    elif op < 0.65:  # create
        d = rng.choice([*DIRS, "new", "new/sub"])
        data = _text(rng, rng.choice([0, 50, 2000, 40000]))
        treeutil.write(root, os.path.join(d, f"n{rng.randrange(10**6)}.txt"), data)
    elif op < 0.75 and len(files) > 10:  # delete
        f = rng.choice(files)
        if f != BIG_FILE:
            os.unlink(os.path.join(root, f))
    elif op < 0.82 and files:  # chmod
        os.chmod(os.path.join(root, rng.choice(files)), rng.choice([0o644, 0o755, 0o600, 0o444]))
    elif op < 0.88 and files:  # rename within the tree
        f = rng.choice(files)
        if f != BIG_FILE:
            # Half the time within its own directory: one name goes, one appears.
            d = os.path.dirname(f) if rng.random() < 0.5 else rng.choice(DIRS)
            dst = os.path.join(d, f"r{rng.randrange(10**6)}.txt")
            os.replace(os.path.join(root, f), os.path.join(root, dst))
    elif op < 0.93:  # symlink
        link = os.path.join(root, rng.choice(DIRS), f"l{rng.randrange(100)}")
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(rng.choice(["../x", "f1.txt", "/etc/hostname", "dangling/" * 3]), link)
    elif op < 0.97:  # empty directory appears or goes
        d = os.path.join(root, "empty", f"e{rng.randrange(5)}")
        if os.path.isdir(d):
            os.rmdir(d)
        else:
            os.makedirs(d)
    elif files:  # set an old mtime (tools do)
        t = rng.randrange(10**18)
        os.utime(os.path.join(root, rng.choice(files)), ns=(t, t))


# --- the loop -----------------------------------------------------------------------------------
def run(store_dir: str, ws_dir: str, log_dir: str, seed: int, iterations: int | None) -> None:
    rng = random.Random(seed)
    snap_log = os.path.join(log_dir, SNAPSHOT_LOG)
    durable_log = os.path.join(log_dir, DURABLE_LOG)
    wrong_log = os.path.join(log_dir, WRONG_LOG)
    # Manifests of the snapshots taken in this life (reading the whole log back would make
    # start-up slower with every kill; the test has the log).
    known: dict[str, Manifest] = {}
    if not os.listdir(ws_dir):
        seed_tree(ws_dir, rng)
    store = Store.open(store_dir)
    ws = Workspace.open(
        store, ws_dir, WorkspaceSettings(keep_last=KEEP_LAST, keep_durable=KEEP_DURABLE)
    )
    say(f"ready {os.getpid()}")

    def check_snapshot(snap_id: str, root_tree: bytes, manifest: Manifest, i: int) -> None:
        """Log a snapshot whose trees differ from the tree it was taken of (an engine bug,
        reported by the test) before the snapshot is recorded anywhere else."""
        listing = tree_listing(store, root_tree)
        if listing != without_digests(manifest):
            watcher = ws.watcher.counters if ws.watcher else None
            entry = {
                "snapshot": snap_id,
                "iteration": i,
                "diff": manifest_diff(listing, without_digests(manifest)),
                "stats": store.get_snapshot(snap_id).stats,
                "watcher": watcher,
            }
            append_line(wrong_log, entry, fsync=True)

    def record(snap_id: str, manifest: Manifest, how: str) -> None:
        known[snap_id] = manifest
        append_line(snap_log, {"id": snap_id, "how": how, "manifest": manifest}, fsync=False)

    def record_durable(snap_id: str) -> None:
        append_line(durable_log, {"id": snap_id, "manifest": known[snap_id]}, fsync=True)

    i = 0
    while iterations is None or i < iterations:
        i += 1
        for _ in range(rng.randrange(1, 5)):
            mutate(ws_dir, rng)
        action = rng.random()
        if action < 0.75:
            manifest = manifest_of(ws_dir)
            durable = rng.random() < 0.04
            rec = ws.snapshot(label=f"{seed}-{i}", durable=durable)
            check_snapshot(rec.id, rec.root_tree, manifest, i)
            record(rec.id, manifest, "snapshot")
            if durable:
                record_durable(rec.id)
            elif rng.random() < 0.06:
                ws.persist(rec.id)
                record_durable(rec.id)
        elif action < 0.85:
            candidates = ws.snapshots(limit=KEEP_LAST)
            if candidates:
                target = rng.choice(candidates)
                before = manifest_of(ws_dir)
                res = ws.restore(target.id)
                safety = res.safety_snapshot_id
                if safety and safety not in known:
                    check_snapshot(safety, store.get_snapshot(safety).root_tree, before, i)
                    record(safety, before, "safety")
                after = manifest_of(ws_dir)
                if target.id in known and after != known[target.id]:  # check own restores too
                    append_line(
                        wrong_log,
                        {
                            "restore": target.id,
                            "iteration": i,
                            "diff": manifest_diff(after, known[target.id]),
                        },
                        fsync=False,
                    )
        elif action < 0.95:
            gc.collect(store, max_seconds=rng.choice([None, 0.02, 0.2]))
        elif action < 0.97:
            # Make an older snapshot in the window durable.
            older = [s for s in ws.snapshots(limit=KEEP_LAST) if s.id in known and not s.durable]
            if older:
                s = rng.choice(older)
                ws.persist(s.id)
                record_durable(s.id)
        else:
            # Delete a non-durable snapshot outright (never a durable one: those must survive).
            victims = [s for s in ws.snapshots(limit=KEEP_LAST) if not s.durable]
            if len(victims) > 1:
                try:
                    ws.delete_snapshot(rng.choice(victims[1:]).id)
                except SnapdError:
                    pass
    ws.close()
    store.close()


def say(line: str) -> None:
    """One protocol line in one write(): the zygote and its child share the stdout pipe, and
    print() may write a line and its newline separately (it does with PYTHONUNBUFFERED=1), so
    a child's "ready" could land between them. A pipe write under PIPE_BUF is atomic."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"{line}\n".encode())


def zygote(args: argparse.Namespace) -> None:
    """Fork one child per "go <boot id> <seed>" line, report its pid and how it ended.

    The interpreter and every module are loaded once, here; each child is a fresh process
    forked from this one (no threads, no store opened before the fork), so a SIGKILL hits a
    process in the same state a freshly started one would be in, without spending a third of
    a second on start-up per kill. Protocol on stdout: "imported", then per child "pid N",
    "ready N" once it opened the store, and "exit N CODE" (negative: killed by that signal).
    """
    say("imported")
    while True:
        line = sys.stdin.readline().split()
        if not line or line[0] != "go":
            return
        boot, seed = line[1], int(line[2])
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                os.environ["SNAPD_BOOT_ID"] = boot
                run(args.store, args.workspace, args.log_dir, seed, args.iterations)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        say(f"pid {pid}")
        _, status = os.waitpid(pid, 0)
        say(f"exit {pid} {os.waitstatus_to_exitcode(status)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--seed", type=int, default=1, help="without --zygote")
    ap.add_argument("--iterations", type=int, default=None, help="stop after N (exit 0)")
    ap.add_argument("--zygote", action="store_true", help="fork a child per 'go' line on stdin")
    args = ap.parse_args()
    if args.zygote:
        zygote(args)
    else:
        run(args.store, args.workspace, args.log_dir, args.seed, args.iterations)


if __name__ == "__main__":
    main()
