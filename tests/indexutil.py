"""Does a workspace's persisted stat cache describe the index the workspace holds in memory?

It must after every operation, failed ones included: a daemon start, or the reload after a
failed operation, rebuilds the index from these rows and then trusts them. A row that outlives
its directory makes the whole cache unloadable (a full re-read of the workspace); a directory
row that lacks a child makes a later walk trust a listing that misses a file.
"""

from __future__ import annotations

from snapd import index as idx
from snapd.workspace import Workspace


def _fields(node: idx.Node) -> tuple:
    if isinstance(node, idx.DirNode):
        return ("dir", node.mode, node.mtime_ns, node.ctime_ns, node.ino, node.racy)
    return (
        node.kind,
        node.mode,
        node.size,
        node.mtime_ns,
        node.ctime_ns,
        node.ino,
        node.ref,
        node.racy,
    )


def index_mismatches(ws: Workspace) -> list[str]:
    """Every path where the persisted rows and the in-memory index disagree, described."""
    persisted = {p: idx.decode_record(r) for p, r in ws.store.load_index(ws.id)}
    live = dict(idx.walk(ws.root))
    live[b""] = ws.root
    out = []
    for p in sorted(set(persisted) | set(live)):
        mem, row = live.get(p), persisted.get(p)
        if mem is None:
            out.append(f"{p!r}: persisted, not in the index: {_fields(row)}")  # type: ignore[arg-type]
        elif row is None:
            out.append(f"{p!r}: in the index, not persisted: {_fields(mem)}")
        elif _fields(mem) != _fields(row):
            out.append(f"{p!r}: index {_fields(mem)} != persisted {_fields(row)}")
    return out


def assert_index_persisted(ws: Workspace, when: str = "") -> None:
    bad = index_mismatches(ws)
    assert not bad, f"persisted stat cache differs from the index{when}:\n" + "\n".join(bad[:20])
