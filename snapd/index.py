"""A workspace's in-memory index: its directory tree as last snapshotted or restored, with the
stat data (the stat cache) that lets the next snapshot skip unchanged files.

Each directory node remembers the id of its tree object; a directory whose content changed has
tree_id None until the next commit re-encodes it. Unchanged subtrees keep their ids, which is what
makes a snapshot copy-on-write: only changed files and the trees on the paths to them are new.

The index is persisted row by row in the catalog (ws_index) with each commit, so a restarted
daemon resumes with a warm stat cache instead of re-reading every file.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from zlib import crc32

from .store import format as fmt
from .store.format import (
    ENTRY_CHUNKED,
    ENTRY_DIR,
    ENTRY_FILE,
    ENTRY_SYMLINK,
    TREE_ENTRY,
    TREE_MAGIC,
    TreeEntry,
)

try:
    from snapd import _treepack
except ImportError:  # not built (no C compiler at install time, or not Linux): _pack_py
    _treepack = None


class FileNode:
    """A regular file or a symlink. ref: content id (file), chunk-list id (chunked) or target.

    Never changed after it is made (a changed file gets a new node): a wide directory's cached
    tree parts (SplitCache) tell an unchanged entry by the identity of its node.
    """

    __slots__ = ("ctime_ns", "ino", "key", "kind", "mode", "mtime_ns", "racy", "ref", "size")

    def __init__(
        self,
        kind: int,
        mode: int,
        size: int,
        mtime_ns: int,
        ref: bytes,
        ctime_ns: int = 0,
        ino: int = 0,
        racy: bool = True,
    ) -> None:
        self.kind = kind
        self.mode = mode
        self.size = size
        self.mtime_ns = mtime_ns
        self.ref = ref
        self.ctime_ns = ctime_ns
        self.ino = ino
        self.racy = racy  # stat data cannot vouch for the content: re-read on the next scan
        # The stat data a regular file must show to be unchanged, as one tuple so that the hot
        # loop of a walk compares it in one step (None: racy or a symlink, always checked).
        self.key = (
            None
            if racy or kind == ENTRY_SYMLINK
            else (size, mtime_ns, ctime_ns, ino, mode | 0o100000)
        )

    def entry(self, name: bytes) -> TreeEntry:
        return TreeEntry(name, self.kind, self.mode, self.mtime_ns, self.size, self.ref)

    def same_content(self, other: FileNode) -> bool:
        return (
            self.kind == other.kind
            and self.ref == other.ref
            and self.mode == other.mode
            and self.mtime_ns == other.mtime_ns
        )


class DirNode:
    __slots__ = (
        "base_tree",
        "ctime_ns",
        "entries",
        "ino",
        "mode",
        "mtime_ns",
        "racy",
        "split",
        "totals",
        "tree_id",
    )

    kind = ENTRY_DIR
    # No stat key: a directory is checked field by field (its size is not recorded), so the
    # batched comparison of a walk (batchstat.lstat_compare) leaves it to the caller.
    key = None

    def __init__(
        self,
        mode: int = 0o755,
        mtime_ns: int = 0,
        ctime_ns: int = 0,
        ino: int = 0,
        tree_id: bytes | None = None,
    ) -> None:
        self.mode = mode
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.ino = ino
        self.entries: dict[bytes, FileNode | DirNode] = {}
        self.tree_id = tree_id  # None: changed since last encoded
        self.base_tree = tree_id  # the last encoded tree, a good delta base for the next one
        self.totals: tuple[int, int] | None = None  # (file bytes, files) below; None: unknown
        self.split: SplitCache | None = None  # a wide directory's parts as last stored
        # True until a listing of this directory was recorded with stat data that vouches for
        # it: adding, removing or renaming an entry changes a directory's mtime and ctime, so
        # while those are unchanged a full walk may stat the known names without listing.
        self.racy = True

    def entry(self, name: bytes) -> TreeEntry:
        assert self.tree_id is not None
        return TreeEntry(name, ENTRY_DIR, self.mode, self.mtime_ns, 0, self.tree_id)

    def invalidate(self) -> None:
        self.totals = None
        if self.tree_id is not None:
            self.base_tree = self.tree_id
            self.tree_id = None

    def subtree_totals(self) -> tuple[int, int]:
        """(bytes, count) of regular files below; cached until the directory changes."""
        if self.totals is None:
            parts = self.current_parts()
            if parts is not None:
                # A wide directory sums its parts' totals, not every entry again.
                totals = [part.totals() for part in parts]
                self.totals = (sum(b for b, _ in totals), sum(f for _, f in totals))
            else:
                self.totals = _totals(self.entries.values())
        return self.totals

    def encode(self) -> tuple[bytes, list[bytes]]:
        """The tree object of this directory (children must be encoded) and its child ids.

        The same bytes as format.encode_tree of the children's entry() tuples, packed straight
        from the nodes (about 2.5x cheaper than building the tuples).
        """
        part = _pack(sorted(self.entries), self.entries)
        assert part.raw is not None and part.kids is not None
        if part._totals is not None:  # packed in C, which sums them on the way
            self.totals = part._totals
        return part.raw, part.kids

    def encode_parts(self) -> list[Part]:
        """A wide directory's tree as parts (see format.TREE_INDEX_MAGIC), the same parts a
        full encoding gives. Parts still stored as they are come back with their id and no
        bytes; the others with their bytes, to be stored and then passed to remember_parts.

        With the parts of the last encoding cached, only the parts around changed entries are
        packed again: a 43k-entry directory costs ~20 ms after a one-file change instead of
        ~60 ms for a full encoding. Cut decisions depend only on the names since the last cut,
        so after a changed part the cutter re-synchronises at the first old boundary it meets,
        and from there the old parts are the parts a full encoding would make.
        """
        entries = self.entries
        cache = self.split
        if cache is None:
            return _cut(sorted(entries), entries, [])
        get = entries.get
        changed: set[int] = set()
        removed: list[bytes] = []
        for i, part in enumerate(cache.parts):
            # Nodes compare by identity (FileNode has no __eq__): one C-level list comparison.
            if list(map(get, part.names)) != part.nodes:
                changed.add(i)
                removed += [n for n in part.names if n not in entries]
                continue
            nodes = part.nodes
            for j, mode, mtime_ns, tree_id in part.dirs:
                d = nodes[j]
                if d.mode != mode or d.mtime_ns != mtime_ns or d.tree_id != tree_id:
                    changed.add(i)
                    break
        added: dict[int, list[bytes]] = {}
        if removed or len(entries) != len(cache.names):  # else the names are the same
            lasts = [p.names[-1] for p in cache.parts]
            new = entries.keys() - cache.names
            for name in new:
                i = min(bisect_left(lasts, name), len(lasts) - 1)
                added.setdefault(i, []).append(name)
                changed.add(i)
            cache.names.difference_update(removed)
            cache.names.update(new)
        if not changed:
            return list(cache.parts)
        out: list[Part] = []
        run: list[bytes] = []
        for i, part in enumerate(cache.parts):
            if i not in changed and not run:
                out.append(part)  # the cutter is at this old boundary: the part stands
                continue
            if i in changed:
                names = [n for n in part.names if n in entries] + added.get(i, [])
                names.sort()
            else:
                names = part.names
            _cut(names, entries, out, run)
        if run:
            out.append(_pack(run, entries))
        return out

    def remember_parts(self, parts: list[Part], tree_id: bytes) -> None:
        """Cache the parts just stored (each with its id) under the index `tree_id` they make,
        for the next encoding."""
        assert all(p.oid is not None for p in parts)
        for p in parts:
            p.raw = p.kids = None  # stored: keep what identifies them, not their bytes
        cache = self.split
        if cache is None:
            self.split = SplitCache(parts, set(self.entries))
        else:  # encode_parts brought its names up to date
            cache.parts = parts
        self.split.tree_id = tree_id

    def adopt_parts(
        self, layout: list[tuple[bytes, Part | None, list[bytes] | None]], tree_id: bytes
    ) -> None:
        """After a restore made this directory exactly the wide tree `tree_id`: cache its parts
        (`layout`, in order: each part's id with the current part it shares, or the names it
        holds), so the next restore or encoding need not compare every entry again."""
        entries = self.entries
        parts: list[Part] = []
        for pid, shared, names in layout:
            if shared is None:
                if names is None or any(n not in entries for n in names):
                    return  # not what the restore should have left: keep no cache
                nodes = [entries[n] for n in names]
                dirs = [
                    (j, d.mode, d.mtime_ns, d.tree_id)
                    for j, d in enumerate(nodes)
                    if d.__class__ is DirNode
                ]
                part = Part(names, nodes, dirs, None, None)
            else:
                part = shared
            part.oid = pid
            parts.append(part)
        if sum(p.count for p in parts) != len(entries):
            return
        self.split = SplitCache(parts, set(entries))
        self.split.tree_id = tree_id

    def current_parts(self) -> list[Part] | None:
        """The parts of this directory's tree if the cache describes its entries as they are
        (encoded since their last change; a restore may set tree_id to another tree)."""
        split = self.split
        if split is not None and self.tree_id is not None and split.tree_id == self.tree_id:
            return split.parts
        return None


class Part:
    """One part of a wide directory's tree: its entries' names and nodes (in order), the
    stored state of its directory entries, and its id once stored (or its bytes before)."""

    __slots__ = ("_totals", "dirs", "kids", "names", "nodes", "oid", "raw")

    def __init__(self, names, nodes, dirs, raw, kids) -> None:
        self.names: list[bytes] = names
        self.nodes: list = nodes
        # (position, mode, mtime_ns, tree_id) of each directory entry: a DirNode changes in
        # place, so its identity alone does not vouch for its entry.
        self.dirs: list[tuple[int, int, int, bytes]] = dirs
        self.raw: bytes | None = raw
        self.kids: list[bytes] | None = kids
        self.oid: bytes | None = None
        self._totals: tuple[int, int] | None = None

    @property
    def count(self) -> int:
        return len(self.names)

    def totals(self) -> tuple[int, int]:
        """(bytes, count) of the regular files at or below its entries. Computed once: a part
        whose entries or subdirectories change is a new part."""
        if self._totals is None:
            self._totals = _totals(self.nodes)
        return self._totals


class SplitCache:
    """A wide directory's parts as last stored, and the set of its names then."""

    __slots__ = ("names", "parts", "tree_id")

    def __init__(self, parts: list[Part], names: set[bytes]) -> None:
        self.parts = parts
        self.names = names
        self.tree_id: bytes | None = None  # the index these parts make


def _totals(nodes) -> tuple[int, int]:
    """(bytes, count) of the regular files among these nodes and below them."""
    size = files = 0
    for node in nodes:
        if node.__class__ is DirNode:
            b, f = node.subtree_totals()
            size += b
            files += f
        elif node.kind != ENTRY_SYMLINK:
            size += node.size
            files += 1
    return size, files


def _pack(names: list[bytes], entries: dict) -> Part:
    """A part holding these (sorted) names' entries; it keeps the list it is given."""
    if _treepack is not None:
        try:
            raw, kids, dirs, nodes, *totals = _treepack.pack(names, entries, DirNode, TREE_MAGIC)
        except _treepack.Unsupported:
            pass  # a field out of the format's range: the same error (or bytes) from Python
        else:
            part = Part(names, nodes, dirs, raw, kids)
            part._totals = (totals[0], totals[1])
            return part
    return _pack_py(names, entries)


def _pack_py(names: list[bytes], entries: dict) -> Part:
    """_pack without the C extension."""
    out = [TREE_MAGIC]
    add = out.append
    pack = TREE_ENTRY.pack
    kids: list[bytes] = []
    dirs: list[tuple[int, int, int, bytes]] = []
    nodes = [entries[n] for n in names]
    for j, (name, node) in enumerate(zip(names, nodes, strict=True)):
        if node.__class__ is DirNode:
            ref = node.tree_id
            assert ref is not None, "children are encoded first"
            add(pack(ENTRY_DIR, len(name), node.mode, node.mtime_ns, 0, len(ref)))
            kids.append(ref)
            dirs.append((j, node.mode, node.mtime_ns, ref))
        else:
            ref = node.ref
            add(pack(node.kind, len(name), node.mode, node.mtime_ns, node.size, len(ref)))
            if node.kind != ENTRY_SYMLINK:
                kids.append(ref)
        add(name)
        add(ref)
    return Part(names, nodes, dirs, b"".join(out), kids)


def _cut(
    names: list[bytes], entries: dict, out: list[Part], run: list[bytes] | None = None
) -> list[Part]:
    """Feed sorted names to the cutter: each completed run becomes a packed part in `out`;
    the open run stays in `run` (a new list if none is given, packed at the end)."""
    final = run is None
    if run is None:
        run = []
    pmin, pmax, mask = fmt.PART_MIN_ENTRIES, fmt.PART_MAX_ENTRIES, fmt.PART_BOUNDARY_MASK
    for name in names:
        run.append(name)
        k = len(run)
        if k >= pmax or (k >= pmin and crc32(name) & mask == 0):
            out.append(_pack(run.copy(), entries))  # `run` is the caller's, kept open
            run.clear()
    if final and run:
        out.append(_pack(run, entries))
    return out


Node = FileNode | DirNode


def walk(node: DirNode, prefix: bytes = b""):
    """Yield (path, node) for every node below `node`, parents before children."""
    stack = [(prefix, node)]
    while stack:
        path, d = stack.pop()
        for name, child in d.entries.items():
            p = path + b"/" + name if path else name
            yield p, child
            if isinstance(child, DirNode):
                stack.append((p, child))


def lookup(root: DirNode, rel: bytes) -> Node | None:
    if not rel:
        return root
    node: Node = root
    for part in rel.split(b"/"):
        if not isinstance(node, DirNode):
            return None
        nxt = node.entries.get(part)
        if nxt is None:
            return None
        node = nxt
    return node


def live_changes(root: DirNode, changed: dict[bytes, Node]) -> dict[bytes, Node]:
    """The nodes the tree now holds at the changed paths. An operation that detached a
    directory may have recorded changes below it (a file read after its directory was replaced
    or removed); such a path holds another node now, or none, and the persisted index must
    describe the tree, not the detached node (its rows would outlive the directory)."""
    out: dict[bytes, Node] = {}
    for p in changed:
        n = lookup(root, p)
        if n is not None:
            out[p] = n
    return out


# --- persistence --------------------------------------------------------------------------------
# rec := u8 kind | u32 mode | i64 mtime_ns | i64 ctime_ns | u64 ino | u64 size | u8 racy | ref
_REC = struct.Struct("<BIqqQQB")


def encode_record(node: Node) -> bytes:
    if isinstance(node, DirNode):
        return _REC.pack(
            ENTRY_DIR, node.mode, node.mtime_ns, node.ctime_ns, node.ino, 0, node.racy
        ) + (node.tree_id or b"")
    return (
        _REC.pack(
            node.kind, node.mode, node.mtime_ns, node.ctime_ns, node.ino, node.size, node.racy
        )
        + node.ref
    )


def decode_record(rec: bytes) -> Node:
    kind, mode, mtime_ns, ctime_ns, ino, size, racy = _REC.unpack_from(rec)
    ref = bytes(rec[_REC.size :])
    if kind == ENTRY_DIR:
        d = DirNode(mode, mtime_ns, ctime_ns, ino, ref or None)
        d.racy = bool(racy)
        return d
    if kind not in (ENTRY_FILE, ENTRY_CHUNKED, ENTRY_SYMLINK):
        raise ValueError("bad index record")
    return FileNode(kind, mode, size, mtime_ns, ref, ctime_ns, ino, bool(racy))


def load(rows: list[tuple[bytes, bytes]]) -> DirNode | None:
    """Rebuild the tree from persisted rows (sorted by path, so parents come first)."""
    root: DirNode | None = None
    dirs: dict[bytes, DirNode] = {}
    for path, rec in rows:
        node = decode_record(rec)
        if path == b"":
            if not isinstance(node, DirNode):
                return None
            root = node
            dirs[b""] = node
            continue
        i = path.rfind(b"/")
        parent = dirs.get(path[:i] if i >= 0 else b"")
        if parent is None:
            return None  # inconsistent rows: let the caller rescan
        parent.entries[path[i + 1 :]] = node
        if isinstance(node, DirNode):
            dirs[path] = node
    if root is None:
        return None
    # A directory whose tree id was not recorded must be re-encoded, and so must its ancestors.
    for path in sorted(dirs, key=len, reverse=True):
        d = dirs[path]
        if d.tree_id is None or any(
            isinstance(c, DirNode) and c.tree_id is None for c in d.entries.values()
        ):
            d.tree_id = None
    return root
