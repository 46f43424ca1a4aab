"""Read-only access to a snapshot's content: look up a path, list a directory, read a file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import InvalidArgument, NotFound
from .store.format import ENTRY_CHUNKED, ENTRY_DIR, ENTRY_KIND_NAMES, ENTRY_SYMLINK, TreeEntry
from .store.store import Store


@dataclass
class Entry:
    path: str
    kind: str  # file | dir | symlink
    mode: int
    mtime_ns: int
    size: int
    target: str = ""  # symlinks
    object_id: str = ""  # hex content address (files, dirs)


def split_path(path: str) -> list[bytes]:
    """Validate a snapshot-relative path; '' or '.' is the root."""
    if not isinstance(path, str) or "\x00" in path or path.startswith("/"):
        raise InvalidArgument(f"path {path!r} must be relative to the workspace root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"path {path!r} must stay inside the snapshot (no '..')")
    return [os.fsencode(p) for p in parts]


def lookup(store: Store, root_tree: bytes, path: str) -> TreeEntry | None:
    """The entry at `path` (None if absent); the root is returned as a synthetic dir entry."""
    entry = TreeEntry(b"", ENTRY_DIR, 0o755, 0, 0, root_tree)
    for part in split_path(path):
        if entry.kind != ENTRY_DIR:
            return None
        found = None
        for e in store.read_tree(entry.ref):
            if e.name == part:
                found = e
                break
        if found is None:
            return None
        entry = found
    return entry


def to_entry(path: bytes, e: TreeEntry) -> Entry:
    return Entry(
        path=os.fsdecode(path),
        kind=ENTRY_KIND_NAMES[e.kind],
        mode=e.mode,
        mtime_ns=e.mtime_ns,
        size=e.size,
        target=os.fsdecode(e.ref) if e.kind == ENTRY_SYMLINK else "",
        object_id=e.ref.hex() if e.kind != ENTRY_SYMLINK else "",
    )


def list_dir(
    store: Store, root_tree: bytes, path: str = "", recursive: bool = False
) -> Iterator[Entry]:
    entry = lookup(store, root_tree, path)
    if entry is None:
        raise NotFound(f"{path!r} does not exist in this snapshot")
    prefix = b"/".join(split_path(path))
    if entry.kind != ENTRY_DIR:
        yield to_entry(prefix, entry)
        return
    stack = [(prefix, entry.ref)]
    while stack:
        rel, tree = stack.pop()
        for e in store.read_tree(tree):
            p = rel + b"/" + e.name if rel else e.name
            yield to_entry(p, e)
            if recursive and e.kind == ENTRY_DIR:
                stack.append((p, e.ref))


def read_file(store: Store, root_tree: bytes, path: str) -> tuple[Entry, Iterator[bytes]]:
    """The file's entry and its content in pieces (verified against the content address)."""
    entry = lookup(store, root_tree, path)
    if entry is None:
        raise NotFound(f"{path!r} does not exist in this snapshot")
    if entry.kind == ENTRY_DIR:
        raise InvalidArgument(f"{path!r} is a directory; list it instead")
    if entry.kind == ENTRY_SYMLINK:
        raise InvalidArgument(f"{path!r} is a symlink to {os.fsdecode(entry.ref)!r}")
    return to_entry(b"/".join(split_path(path)), entry), store.iter_content(
        entry.kind == ENTRY_CHUNKED, entry.ref
    )
