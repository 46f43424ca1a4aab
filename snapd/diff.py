"""Differences between two trees: two snapshots, or a snapshot and a workspace's live index.

Subtrees with equal ids are skipped without being read, so a diff costs what changed, not the
size of the workspace.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from .fsutil import join
from .index import DirNode, FileNode
from .restore import Change
from .store.format import ENTRY_DIR, ENTRY_KIND_NAMES, TreeEntry
from .store.store import Store


def _tree_side(store: Store, tree_id: bytes | None) -> dict[bytes, TreeEntry | DirNode]:
    if tree_id is None:
        return {}
    return {e.name: e for e in store.read_tree(tree_id)}


def _info(x) -> tuple[int, int, int, int, bytes | None]:
    """(kind, mode, mtime_ns, size, ref) of a tree entry or an index node."""
    if isinstance(x, DirNode):
        return ENTRY_DIR, x.mode, x.mtime_ns, 0, x.tree_id
    if isinstance(x, FileNode):
        return x.kind, x.mode, x.mtime_ns, x.size, x.ref
    return x.kind, x.mode, x.mtime_ns, x.size, x.ref


def _children(store: Store, x) -> dict:
    if isinstance(x, DirNode):
        return x.entries
    return _tree_side(store, x.ref)


def _kind_name(kind: int) -> str:
    return ENTRY_KIND_NAMES[kind]


def diff_trees(store: Store, old, new, rel: bytes = b"") -> Iterator[Change]:
    """Yield changes from `old` to `new`; each is a tree id, a DirNode or None (empty)."""
    a = old.entries if isinstance(old, DirNode) else _tree_side(store, old)
    b = new.entries if isinstance(new, DirNode) else _tree_side(store, new)
    yield from _diff_entries(store, a, b, rel)


def _diff_entries(store: Store, a: dict, b: dict, rel: bytes) -> Iterator[Change]:
    for name in sorted(set(a) | set(b)):
        path = join(rel, name)
        ea, eb = a.get(name), b.get(name)
        if ea is None:
            yield from _all(store, eb, path, "added")
            continue
        if eb is None:
            yield from _all(store, ea, path, "deleted")
            continue
        ka, ma, ta, sa, ra = _info(ea)
        kb, mb, tb, sb, rb = _info(eb)
        p = os.fsdecode(path)
        if ka == ENTRY_DIR and kb == ENTRY_DIR:
            if ma != mb or ta != tb:
                yield Change(p, "metadata", "dir")
            if ra is None or ra != rb:
                yield from _diff_entries(store, _children(store, ea), _children(store, eb), path)
            continue
        if ka == ENTRY_DIR or kb == ENTRY_DIR or _kind_name(ka) != _kind_name(kb):
            yield Change(p, "type_changed", _kind_name(kb), sa, sb)
            if ka == ENTRY_DIR:
                yield from _descendants(store, ea, path, "deleted")
            if kb == ENTRY_DIR:
                yield from _descendants(store, eb, path, "added")
            continue
        if ra != rb:
            yield Change(p, "modified", _kind_name(kb), sa, sb)
        elif ma != mb or ta != tb:
            yield Change(p, "metadata", _kind_name(kb), sa, sb)


def _all(store: Store, x, path: bytes, change: str) -> Iterator[Change]:
    kind, _, _, size, _ = _info(x)
    yield Change(
        os.fsdecode(path),
        change,
        _kind_name(kind),
        size if change == "deleted" else 0,
        size if change == "added" else 0,
    )
    if kind == ENTRY_DIR:
        yield from _descendants(store, x, path, change)


def _descendants(store: Store, x, path: bytes, change: str) -> Iterator[Change]:
    for name, child in sorted(_children(store, x).items()):
        yield from _all(store, child, join(path, name), change)
