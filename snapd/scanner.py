"""Change detection: bring a workspace's index up to date with the directory, storing what changed.

Two ways in: a full walk (every directory listed, every entry lstat'ed) or a list of paths that
may have changed (from the file watcher), each re-checked the same way. In both, the stat cache
decides: an entry whose (size, mtime, ctime, inode, mode) match the index and that is not racy
is not read again. Everything else is read through a descriptor opened beneath the root without
following symlinks, with an fstat before and after the read; a file that changed while it was
read is read again, so a torn read is never stored.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from pyfastcdc import FastCDC

from .batchstat import FAILED, LOOK, MATCH, Read, lstat_compare, read_small
from .errors import Aborted, PermissionDenied
from .fsutil import join, open_beneath, read_all, split
from .ignore import IGNORE_FILE, INTERNAL_PREFIX, Excludes, is_internal
from .index import DirNode, FileNode, Node, lookup, walk
from .store import format as fmt
from .store.format import (
    ENTRY_CHUNKED,
    ENTRY_FILE,
    ENTRY_SYMLINK,
    KIND_CHUNKLIST,
    KIND_DATA,
    KIND_TREE,
    encode_chunklist,
    encode_tree_index,
)

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
S_IFMT = 0o170000
# Names lstat'ed in one batchstat call by the fast pass of a full walk (bounds its memory: a
# level of a 100k-file tree can hold most of its names).
STAT_BATCH_PATHS = 8192
S_IFREG, S_IFDIR, S_IFLNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK

# Files up to this size are stored whole (as restic and borg do below 512 KiB-1 MiB); larger
# ones are split by content-defined chunking so that an append or insert stores only new chunks.
CHUNK_THRESHOLD = 1024 * 1024
# A large ingest (a first snapshot, a checkout) reads the files it stores whole ahead, this many
# at a time (so at most 64 MiB in memory at once), in one batchstat call without the GIL. Below
# READ_AHEAD_MIN files it is not worth a call.
READ_BATCH_FILES = 64
READ_AHEAD_MIN = 16
CHUNK_MIN, CHUNK_AVG, CHUNK_MAX = 64 * 1024, 256 * 1024, 1024 * 1024
# A file whose ctime is this close to the scan's start is "racy" on file systems with coarse
# timestamps: a later write in the same clock tick would leave its stat data unchanged.
RACY_MARGIN_NS = 100_000_000
# A file changed this recently may be mid-write: read it twice and compare.
HOT_NS = 20_000_000
MAX_READ_ATTEMPTS = 5
REUSE_MIN = 32  # new files in one pass before looking for moved ones by inode
# Files to read in one pass before their compression goes to a helper thread.
COMPRESS_BEHIND_MIN = 64
# A store gets its dictionary from the first ingest of at least this many files.
DICT_TRAIN_MIN = 500
DICT_SAMPLES = 1000
DICT_SAMPLE_MAX = 16 * 1024


@dataclass
class ScanStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0  # logical bytes of the regular files visited
    read_files: int = 0
    read_bytes: int = 0
    skipped_special: int = 0
    vanished: int = 0
    retried_reads: int = 0
    reused_moved: int = 0  # files found under a new path with unchanged content (renames)
    scan: str = "full"  # "full" walk, or "hinted" (only paths the watcher or caller named)
    special_paths: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["special_paths"] = d["special_paths"][:20]
        return d


class HashOnly:
    """An object sink for dry runs: computes ids, stores nothing."""

    def __init__(self, keys) -> None:
        self._keys = keys

    def put(self, kind: int, raw: bytes, *, children=None, base=None) -> bytes:
        return self._keys.object_id(kind, raw)


class _Rescan(Exception):
    """The entry changed type between lstat and open; look at it again."""


class Scanner:
    """One change-detection pass over a workspace. Mutates the index in place.

    After a failed pass the index may mention objects that were never committed: the caller
    must reload it from the catalog.
    """

    def __init__(
        self,
        rootfd: int,
        root: DirNode,
        excludes: Excludes,
        sink,
        *,
        fine_timestamps: bool,
        links: dict[int, set[bytes]] | None = None,
        trust_dir_mtime: bool = False,
        compress_helper: Callable[[], Executor] | None = None,
    ) -> None:
        self.rootfd = rootfd
        # Gives the thread a large ingest hands its compression to (ObjectWriter.compress_behind).
        self.compress_helper = compress_helper
        # A full walk may skip listing a directory whose mtime, ctime and inode match its last
        # listing (entries cannot have been added, removed or renamed) and stat its known names
        # instead, as git's untracked cache does. Only where the workspace confirmed it.
        self.trust_dir_mtime = trust_dir_mtime
        self.root = root
        self.excludes = excludes
        self.sink = sink
        self.fine_timestamps = fine_timestamps
        self.start_ns = time.time_ns()
        self.stats = ScanStats()
        self.changed: dict[bytes, Node] = {}  # path -> new node (files, symlinks, dirs)
        self.removed: set[bytes] = set()  # paths removed (dirs: with their subtree)
        self.cleared: set[bytes] = set()  # directories replaced by another kind of entry
        # A directory left the tree during this pass: changes recorded below it (before it
        # left, or files read after) describe no node of the tree; the caller keeps only what
        # the tree still holds at those paths (index.live_changes).
        self.dropped_dirs = False
        self.errors: list[tuple[str, str]] = []
        self.ignore_file_changed = False
        # (path, name, parent, chain, old node, lstat) of files whose content must be read
        self._candidates: list[tuple] = []
        # Hard links: a full walk records every multi-name inode in `found_links`; a hinted pass
        # re-checks the other names of any inode it touches (`links`, kept by the workspace).
        self.links = links if links is not None else {}
        self.found_links: dict[int, set[bytes]] = {}
        self._link_hits: dict[int, set[bytes]] = {}
        self._removed_files: list[FileNode] = []  # may still match a renamed path's inode
        self._had_files = bool(root.entries)  # else no file can have moved (first snapshot)

    # --- entry points -------------------------------------------------------------------------
    def full(self) -> None:
        self._scan_dir(self.rootfd, b"", self.root, [])
        self._ingest_candidates()
        self._raise_errors()

    def paths(self, paths: Iterable[bytes], subtrees: Iterable[bytes] = ()) -> None:
        """Re-check only these paths (and rescan these subtrees fully)."""
        subtrees = set(subtrees)
        for rel in sorted(subtrees, key=len):
            self._scan_path(rel, recursive=True)
        done = set(paths) | subtrees
        for rel in sorted(done - subtrees, key=len):
            self._scan_path(rel, recursive=False)
        self._expand_links(done)
        self._ingest_candidates()
        self._raise_errors()

    def _expand_links(self, done: set[bytes]) -> None:
        """Re-check the other names of every hard-linked file this pass touched."""
        while self._link_hits:
            hits, self._link_hits = self._link_hits, {}
            unknown = {ino for ino, rels in hits.items() if rels - self.links.get(ino, set())}
            if unknown:  # a name we did not know for this inode: ask the index once
                for p, n in walk(self.root):
                    if n.__class__ is FileNode and n.ino in unknown and n.kind != ENTRY_SYMLINK:
                        self.links.setdefault(n.ino, set()).add(p)
            for ino, rels in hits.items():
                names = self.links.setdefault(ino, set())
                names |= rels
                for other in sorted(names - done):
                    done.add(other)
                    self._scan_path(other, recursive=False)
                    node = lookup(self.root, other)
                    if node is None or node.__class__ is not FileNode or node.ino != ino:
                        names.discard(other)  # gone, or no longer this inode

    # --- bookkeeping --------------------------------------------------------------------------
    @staticmethod
    def _invalidate(chain: list[DirNode]) -> None:
        for d in reversed(chain):
            if d.tree_id is None:
                break
            d.invalidate()

    def _set(self, parent: DirNode, chain: list[DirNode], name: bytes, path: bytes, node: Node):
        old = parent.entries.get(name)
        if isinstance(old, DirNode) and old is not node:
            self.cleared.add(path)  # the old directory's persisted descendants must go
            self.dropped_dirs = True  # what was recorded below it is dropped by live_changes
        parent.entries[name] = node
        self.changed[path] = node
        if path in self.removed:  # removed earlier in this pass, back now: not a deletion,
            self.removed.discard(path)  # but the rows below the old entry must still go
            self.cleared.add(path)
        self._invalidate(chain)
        if path == IGNORE_FILE:
            self.ignore_file_changed = True

    def _remove(self, parent: DirNode, chain: list[DirNode], name: bytes, path: bytes) -> None:
        old = parent.entries.pop(name, None)
        if old is None:
            return
        self.removed.add(path)
        self.changed.pop(path, None)
        if isinstance(old, DirNode):
            self.dropped_dirs = True  # what was recorded below it is dropped by live_changes
            self._removed_files.extend(
                n for _, n in walk(old) if n.__class__ is FileNode and n.kind != ENTRY_SYMLINK
            )
        elif old.kind != ENTRY_SYMLINK:
            self._removed_files.append(old)
        self._invalidate(chain)
        if path == IGNORE_FILE:
            self.ignore_file_changed = True

    def _racy(self, st: os.stat_result) -> bool:
        return self._racy_ctime(st.st_ctime_ns)

    def _racy_ctime(self, ctime_ns: int) -> bool:
        return not self.fine_timestamps and ctime_ns >= self.start_ns - RACY_MARGIN_NS

    def _raise_errors(self) -> None:
        if self.errors:
            shown = "; ".join(f"{p}: {why}" for p, why in self.errors[:10])
            more = f" (and {len(self.errors) - 10} more)" if len(self.errors) > 10 else ""
            raise PermissionDenied(
                f"cannot read {len(self.errors)} path(s) in the workspace: {shown}{more}. "
                "Make them readable by the daemon's user or exclude them in .snapdignore.",
                details={"paths": [p for p, _ in self.errors]},
            )

    def _error(self, path: bytes, e: OSError) -> None:
        self.errors.append((os.fsdecode(path), e.strerror or str(e)))

    # --- full walk ----------------------------------------------------------------------------
    def _scan_dir(self, dfd: int, rel: bytes, node: DirNode, chain: list[DirNode]) -> None:
        chain.append(node)
        try:
            self._scan_dir_entries(dfd, rel, node, chain)
        finally:
            chain.pop()

    def _scan_dir_entries(self, dfd: int, rel: bytes, node: DirNode, chain) -> None:
        # The hot loop of every full walk: it runs once per entry of the workspace, so it keeps
        # to local names and computes an entry's path only when something needs it.
        entries = node.entries
        get = entries.get
        seen: set[bytes] = set()
        add_seen = seen.add
        new_files = 0  # seen regular files not in `entries` yet (added when their content is read)
        trusted: list[tuple[bytes, DirNode]] = []  # subdirectories whose listing holds
        excludes = self.excludes if self.excludes else None
        stats = self.stats
        files = dirs = size = 0
        prefix = rel + b"/" if rel else b""
        try:
            it = os.scandir(dfd)
        except OSError as e:
            self._error(rel or b".", e)  # the snapshot fails; the index is reloaded
            return
        with it:
            for de in it:
                name = de.name.encode("utf-8", "surrogateescape")
                if name.startswith(INTERNAL_PREFIX):
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    stats.vanished += 1
                    continue
                except OSError as e:  # e.g. a directory we may list but not search
                    self._error(prefix + name, e)
                    continue
                mode = st.st_mode
                fmt = mode & S_IFMT
                old = get(name)
                if fmt == S_IFREG:
                    if excludes is not None and excludes.excluded(prefix + name, False):
                        continue
                    add_seen(name)
                    files += 1
                    size += st.st_size
                    if st.st_nlink > 1:
                        self.found_links.setdefault(st.st_ino, set()).add(prefix + name)
                    if (
                        old is not None
                        and old.__class__ is FileNode
                        and old.key == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, mode)
                    ):
                        continue
                    self._invalidate(chain)
                    self._candidates.append((prefix + name, name, node, old, _key(st)))
                    if old is None:
                        new_files += 1
                elif fmt == S_IFDIR:
                    path = prefix + name
                    if excludes is not None and excludes.excluded(path, True):
                        continue
                    add_seen(name)
                    dirs += 1
                    if self.trust_dir_mtime and _listing_holds(old, st):
                        # Checked after this loop, together: the fast pass stats in batches.
                        trusted.append((path, self._dir_node(node, chain, name, path, st, old)))
                        continue
                    try:
                        cfd = os.open(name, _O_DIR, dir_fd=dfd)
                    except OSError as e:
                        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                            seen.discard(name)  # replaced or gone: dropped below
                            stats.vanished += 1
                            dirs -= 1
                            continue
                        self._error(path, e)
                        continue
                    try:
                        self._list(cfd, node, chain, name, path, old)
                    finally:
                        os.close(cfd)
                elif fmt == S_IFLNK:
                    path = prefix + name
                    if excludes is not None and excludes.excluded(path, False):
                        continue
                    add_seen(name)
                    stats.symlinks += 1
                    if not _symlink_holds(old, st):
                        try:
                            target = os.readlink(name, dir_fd=dfd)
                        except FileNotFoundError:
                            seen.discard(name)
                            stats.vanished += 1
                            continue
                        except OSError as e:
                            if e.errno == errno.EINVAL:  # no longer a symlink: next pass
                                seen.discard(name)
                                continue
                            raise
                        self._set(node, chain, name, path, self._symlink_node(st, target))
                else:
                    stats.skipped_special += 1
                    if len(stats.special_paths) < 100:
                        stats.special_paths.append(os.fsdecode(prefix + name))
        stats.files += files
        stats.dirs += dirs
        stats.bytes += size
        if trusted:
            inner = list(chain)
            self._scan_known([(path, child, inner) for path, child in trusted])
            prefix_len = len(prefix)
            for path, _child in trusted:
                if get(path[prefix_len:]).__class__ is not DirNode:
                    stats.dirs -= 1  # relisted after all, and gone by then
        # Every seen name is in `entries` except the new files; anything else there is gone.
        if len(seen) - new_files != len(entries):
            for name in [n for n in entries if n not in seen]:
                self._remove(node, chain, name, prefix + name)

    def _scan_known(self, starts: list[tuple[bytes, DirNode, list[DirNode]]]) -> None:
        """Check directories whose listing still holds (path, node, chain to its parent), and
        every directory below them whose listing holds too: stat their known names, list
        nothing.

        The fast pass of a full walk. A directory in which every name still shows its recorded
        stat data (the common case: a step changes a few files in a few directories) is done
        here; anything else in a directory hands that directory to _check_known. This pass
        changes nothing before it has seen a whole directory hold, so it has nothing to undo.

        It goes level by level: the known names of a level's directories (up to
        STAT_BATCH_PATHS at a time) are lstat'ed and compared with their nodes' keys in one
        batchstat call, which runs without the GIL on several threads when the C extension is
        built; Python then looks only at what did not match (directories, symlinks, changes).
        The kernel's share of an lstat is ~2.5 us on the VMs we measure on and os.lstat adds
        ~1 us: an unchanged full snapshot of the Django tree (~10k names) takes 32 ms (median)
        against 58 ms with os.lstat, in one process, alternating.
        """
        rootfd = self.rootfd
        found_links = self.found_links
        files = size = dirs = symlinks = 0
        # (path, node, chain to its parent, parent, name); the first level is the caller's.
        level: list[tuple[bytes, DirNode, list[DirNode], DirNode | None, bytes]] = [
            (path, node, chain, None, b"") for path, node, chain in starts
        ]
        while level:
            below: list[tuple[bytes, DirNode, list[DirNode], DirNode | None, bytes]] = []
            i = 0
            while i < len(level):
                # The next batch: whole directories, about STAT_BATCH_PATHS names in all.
                batch: list[tuple[bytes, DirNode, list[DirNode], DirNode | None, bytes]] = []
                careful: list[tuple[bytes, DirNode, list[DirNode], DirNode | None, bytes]] = []
                paths: list[bytes] = []
                nodes: list[Node] = []
                while i < len(level) and len(paths) < STAT_BATCH_PATHS:
                    item = level[i]
                    i += 1
                    d = item[1]
                    prefix = item[0] + b"/"
                    paths += [prefix + n for n in d.entries]
                    nodes += d.entries.values()
                    batch.append(item)
                status, keys, sizes, links = lstat_compare(rootfd, paths, nodes)
                for k in links:  # matching files with other names (hard links)
                    found_links.setdefault(nodes[k].ino, set()).add(paths[k])
                j = 0
                for item in batch:
                    d_path, d, d_chain, parent, d_name = item
                    end = j + len(d.entries)
                    matched = status.count(MATCH, j, end)
                    subdirs: list[tuple[bytes, DirNode]] = []
                    links_here = 0
                    holds = True
                    if matched != end - j:
                        # Directories, symlinks and anything that did not match.
                        if status.find(FAILED, j, end) >= 0:
                            holds = False  # gone or unreadable: list it
                        k = status.find(LOOK, j, end) if holds else -1
                        while k >= 0:
                            key = keys[k]
                            child = nodes[k]
                            mode = key[4]
                            if child.__class__ is DirNode:
                                if not (
                                    child.mtime_ns == key[1]
                                    and child.ctime_ns == key[2]
                                    and child.ino == key[3]
                                    and child.racy is False
                                    and child.mode == mode & 0o7777
                                    and mode & S_IFMT == S_IFDIR
                                ):
                                    holds = False
                                    break
                                subdirs.append((paths[k], child))
                            elif (
                                child.kind == ENTRY_SYMLINK
                                and mode & S_IFMT == S_IFLNK
                                and child.mtime_ns == key[1]
                                and child.ctime_ns == key[2]
                                and child.ino == key[3]
                                and not child.racy
                            ):
                                links_here += 1
                            else:
                                holds = False  # a changed file or symlink: the careful pass
                                break
                            k = status.find(LOOK, k + 1, end)
                    if holds:
                        files += matched
                        size += sum(sizes[j:end])
                        symlinks += links_here
                        if parent is not None:
                            dirs += 1
                        if subdirs:
                            inner = [*d_chain, d]
                            prefix_len = len(d_path) + 1
                            for p, sub in subdirs:
                                below.append((p, sub, inner, d, p[prefix_len:]))
                    else:
                        careful.append(item)
                    j = end
                for d_path, d, d_chain, parent, d_name in careful:
                    self._check_known(d_path, d, d_chain)
                    if parent is not None and parent.entries.get(d_name).__class__ is DirNode:
                        dirs += 1  # (not if it was relisted after all, and gone by then)
            level = below
        stats = self.stats
        stats.files += files
        stats.dirs += dirs
        stats.bytes += size
        stats.symlinks += symlinks

    def _check_known(self, path: bytes, node: DirNode, chain: list[DirNode]) -> None:
        """Check a directory whose listing still holds: stat its known names, list nothing.

        Names are stat'ed through the root descriptor (the metadata of a path that a hostile
        process redirects can mislead only this check; content is always read through
        descriptors opened beneath the root without following symlinks). Anything unexpected
        (a name gone, a type changed) undoes this pass's candidates and lists the directory.
        """
        rootfd = self.rootfd
        lstat = os.lstat
        candidates = self._candidates
        mark = len(candidates)
        stats = self.stats
        counted = (stats.files, stats.dirs, stats.bytes, stats.symlinks)
        prefix = path + b"/"
        files = size = dirs = 0
        chain.append(node)
        try:
            # A copy: relisting a subdirectory that vanished meanwhile removes it from here.
            for name, child in list(node.entries.items()):
                p = prefix + name
                try:
                    st = lstat(p, dir_fd=rootfd)
                except OSError:
                    break  # gone (or unreadable) although the listing held: list it
                # (A subdirectory whose stat data is exactly as recorded takes the general
                # path below: _listing_holds, and _dir_node changes nothing. Only the
                # directories _scan_known's loop could not clear come here.)
                if child.__class__ is not DirNode and child.key == (
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    st.st_ino,
                    st.st_mode,
                ):
                    files += 1
                    size += st.st_size
                    if st.st_nlink > 1:
                        self.found_links.setdefault(st.st_ino, set()).add(p)
                    continue  # the common case: an unchanged regular file
                fmt = st.st_mode & S_IFMT
                if child.__class__ is FileNode:
                    if child.kind == ENTRY_SYMLINK:
                        if fmt != S_IFLNK:
                            break
                        stats.symlinks += 1
                        if not _symlink_holds(child, st):
                            try:
                                target = os.readlink(p, dir_fd=rootfd)
                            except OSError:
                                break
                            self._set(node, chain, name, p, self._symlink_node(st, target))
                        continue
                    if fmt != S_IFREG:
                        break
                    files += 1
                    size += st.st_size
                    if st.st_nlink > 1:
                        self.found_links.setdefault(st.st_ino, set()).add(p)
                    if (
                        child.size == st.st_size
                        and child.mtime_ns == st.st_mtime_ns
                        and child.ctime_ns == st.st_ctime_ns
                        and child.ino == st.st_ino
                        and child.mode == st.st_mode & 0o7777
                        and not child.racy
                    ):
                        continue
                    self._invalidate(chain)
                    candidates.append((p, name, node, child, _key(st)))
                    continue
                if fmt != S_IFDIR:
                    break
                if _listing_holds(child, st):
                    self._scan_known([(p, self._dir_node(node, chain, name, p, st, child), chain)])
                else:
                    self._relist(p, node, chain, name, child)
                if node.entries.get(name).__class__ is DirNode:
                    dirs += 1  # (not if it was gone when relisted)
            else:
                stats.files += files
                stats.dirs += dirs
                stats.bytes += size
                return
        finally:
            chain.pop()
        # The listing did not hold after all: forget what this pass queued and counted below
        # here and list the directory (the listing counts its entries again). The relisting
        # trusts the listings this pass already made of its subdirectories (their nodes hold
        # fresh stat data), so it would not see the new files queued from them again: mark
        # those directories racy, to be listed again.
        for cand in candidates[mark:]:
            cand[2].racy = True
        del candidates[mark:]
        stats.files, stats.dirs, stats.bytes, stats.symlinks = counted
        node.racy = True
        self._relist(path, chain[-1], chain, split(path)[1], node)

    def _relist(
        self, path: bytes, parent: DirNode, chain: list[DirNode], name: bytes, node: DirNode
    ) -> None:
        """List a directory after all (its known names did not hold)."""
        try:
            fd = open_beneath(self.rootfd, path)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                self._scan_path(path, recursive=True)  # gone or replaced: let the parent decide
                return
            self._error(path, e)
            return
        try:
            self._list(fd, parent, chain, name, path, node)
        finally:
            os.close(fd)

    def _list(
        self, fd: int, parent: DirNode, chain: list[DirNode], name: bytes, path: bytes, old
    ) -> DirNode:
        """List the directory open at fd. Its node records the stat of that very descriptor:
        a directory swapped in after the parent's lstat must not lend its listing to the stat
        data of the one it replaced (the next walk would trust a listing of another dir)."""
        st = os.fstat(fd)
        child = self._dir_node(parent, chain, name, path, st, old)
        self._scan_dir(fd, path, child, chain)
        racy = self._racy(st)
        if child.racy is not racy:
            self.changed[path] = child  # persist the trust too: a reload must not relist it
            child.racy = racy
        return child

    def _dir_node(self, parent, chain, name, path, st, old) -> DirNode:
        """The directory's node with this stat. Its listing is not redone here: if the stat
        moved, the node is marked racy so that no later walk trusts the old listing (the
        caller that lists it, _list, then records whether the new listing can be trusted)."""
        perms = st.st_mode & 0o7777
        if old is None or old.__class__ is not DirNode:
            child = DirNode(perms, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            self._set(parent, chain, name, path, child)
            return child
        if old.mode != perms or old.mtime_ns != st.st_mtime_ns:
            old.mode, old.mtime_ns = perms, st.st_mtime_ns
            self.changed[path] = old
            self._invalidate(chain)
            old.racy = True
        if old.ctime_ns != st.st_ctime_ns or old.ino != st.st_ino:
            old.ctime_ns, old.ino = st.st_ctime_ns, st.st_ino
            self.changed[path] = old
            old.racy = True
        return old

    def _symlink_node(self, st: os.stat_result, target: str | bytes) -> FileNode:
        t = os.fsencode(target)
        return FileNode(
            ENTRY_SYMLINK,
            st.st_mode & 0o7777,
            len(t),
            st.st_mtime_ns,
            t,
            st.st_ctime_ns,
            st.st_ino,
            self._racy(st),
        )

    # --- single paths -------------------------------------------------------------------------
    def _chain_to(self, rel: bytes) -> tuple[list[DirNode], bytes | None]:
        """Index directories from the root to rel's parent, or (partial chain, first missing)."""
        chain = [self.root]
        if not rel:
            return chain, None
        parts = rel.split(b"/")
        node = self.root
        for i, part in enumerate(parts[:-1]):
            nxt = node.entries.get(part)
            if not isinstance(nxt, DirNode):
                return chain, b"/".join(parts[: i + 1])
            chain.append(nxt)
            node = nxt
        return chain, None

    def _scan_path(self, rel: bytes, recursive: bool) -> None:
        if not rel:
            self._scan_dir(self.rootfd, b"", self.root, [])
            return
        chain, missing = self._chain_to(rel)
        if missing is not None:
            # An ancestor is new to the index (or was not a directory): scan it whole.
            self._scan_path(missing, recursive=True)
            return
        parent_rel, name = split(rel)
        if any(is_internal(p) for p in rel.split(b"/")):
            return
        parent = chain[-1]
        try:
            pfd = open_beneath(self.rootfd, parent_rel)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                if parent_rel:
                    self._scan_path(parent_rel, recursive=True)
                return
            self._error(parent_rel, e)
            return
        try:
            self._scan_entry(pfd, parent_rel, parent, chain, name, rel, recursive)
            if parent_rel:
                self._refresh_dir_stat(pfd, parent_rel, chain)
        finally:
            os.close(pfd)

    def _refresh_dir_stat(self, dfd: int, rel: bytes, chain: list[DirNode]) -> None:
        """Record the parent's new mode and mtime (the tree holds them) after one of its
        entries was checked. The parent was not listed, and other names may have come and gone
        in it meanwhile: mark it racy, so that a later full walk lists it instead of trusting
        the recorded listing (one directory's listing, not a hidden new file)."""
        st = os.fstat(dfd)
        node = chain[-1]
        if node.mode != st.st_mode & 0o7777 or node.mtime_ns != st.st_mtime_ns:
            node.mode, node.mtime_ns = st.st_mode & 0o7777, st.st_mtime_ns
            node.ctime_ns, node.ino = st.st_ctime_ns, st.st_ino
            node.racy = True
            self.changed[rel] = node
            self._invalidate(chain[:-1])

    def _scan_entry(self, pfd, parent_rel, parent, chain, name, rel, recursive) -> None:
        old = parent.entries.get(name)
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            self._remove(parent, chain, name, rel)
            return
        except OSError as e:
            self._error(rel, e)
            return
        fmt = st.st_mode & S_IFMT
        is_dir = fmt == stat.S_IFDIR
        if self.excludes and self.excludes.excluded(rel, is_dir):
            self._remove(parent, chain, name, rel)
            return
        if is_dir:
            fresh = old is None or old.__class__ is not DirNode
            if not (fresh or recursive):
                self._dir_node(parent, chain, name, rel, st, old)
                return
            try:
                cfd = os.open(name, _O_DIR, dir_fd=pfd)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    self._remove(parent, chain, name, rel)
                    return
                self._error(rel, e)
                return
            try:
                self._list(cfd, parent, chain, name, rel, old)
            finally:
                os.close(cfd)
        elif fmt == stat.S_IFREG:
            if st.st_nlink > 1 or st.st_ino in self.links:
                self._link_hits.setdefault(st.st_ino, set()).add(rel)
            if (
                old is not None
                and old.__class__ is FileNode
                and old.kind != ENTRY_SYMLINK
                and not old.racy
                and old.size == st.st_size
                and old.mtime_ns == st.st_mtime_ns
                and old.ctime_ns == st.st_ctime_ns
                and old.ino == st.st_ino
                and old.mode == st.st_mode & 0o7777
            ):
                return
            self._invalidate(chain)
            self._candidates.append((rel, name, parent, old, _key(st)))
        elif fmt == stat.S_IFLNK:
            try:
                target = os.readlink(name, dir_fd=pfd)
            except OSError:
                self._remove(parent, chain, name, rel)
                return
            node = self._symlink_node(st, target)
            if not (_symlink_holds(old, st) and old.ref == node.ref):
                self._set(parent, chain, name, rel, node)
        else:
            self.stats.skipped_special += 1
            self._remove(parent, chain, name, rel)

    # --- reading file content -----------------------------------------------------------------
    def _ingest_candidates(self) -> None:
        cands, self._candidates = self._candidates, []
        if not cands:
            return
        cands = self._reuse_moved(cands)
        behind = getattr(self.sink, "compress_behind", None)
        if behind is not None and self.compress_helper and len(cands) >= COMPRESS_BEHIND_MIN:
            behind(self.compress_helper())
        if len(cands) >= DICT_TRAIN_MIN:
            self._maybe_train_dictionary(cands)
        prefetch = getattr(self.sink, "prefetch_bases", None)
        if prefetch is not None:
            # Earlier versions are delta bases: their catalog rows in one query.
            prefetch(
                [c[3].ref for c in cands if c[3].__class__ is FileNode and c[3].kind == ENTRY_FILE]
            )
        # Reading, hashing and bookkeeping stay on this thread: handing whole files to a
        # thread pool cost more in GIL hand-offs than it saved (measured on 2 cores: first
        # snapshot of Django 5.0 1.6-1.8 s serial, 2.0-2.4 s with 1-3 workers). Compression
        # alone overlaps well in a large ingest, handed to a helper thread in batches. A small
        # one (a watched snapshot's dozen files) compresses here: in the daemon, with its many
        # threads, the hand-offs ate the gain (A/B, 30 watched steps: 26.0 vs 24.4 ms median).
        results = []
        for start in range(0, len(cands), READ_BATCH_FILES):
            batch = cands[start : start + READ_BATCH_FILES]
            pre = self._read_ahead(batch)
            if pre is None:
                results += [self._ingest_safe(c) for c in batch]
            else:
                results += [self._ingest_safe(c, r) for c, r in zip(batch, pre, strict=True)]
        hand_over = getattr(self.sink, "hand_over", None)
        if hand_over is not None:
            hand_over()  # the helper compresses the last files while the trees are encoded
        rescan = []
        for (path, name, parent, _old, _key), res in zip(cands, results, strict=True):
            # Queuing a candidate invalidated its directory and the ones above it already.
            if isinstance(res, FileNode):
                self._set(parent, (parent,), name, path, res)
            elif res is None:
                self.stats.vanished += 1
                self._remove(parent, (parent,), name, path)
                # Files are read by path, after their directory was listed through its own
                # descriptor. Gone by path may mean deleted, or that a directory above was
                # renamed meanwhile and the file is still in the listed one, whose stat data
                # then still matches: never trust that listing again without relisting it.
                parent.racy = True
            elif isinstance(res, _Rescan):
                parent.racy = True  # as above: the path may lead to another directory now
                rescan.append(path)
            elif isinstance(res, OSError):
                self._error(path, res)
            else:
                raise res
        for path in rescan:
            self._scan_path(path, recursive=True)
        if self._candidates:
            self._ingest_candidates()

    def _maybe_train_dictionary(self, cands: list[tuple]) -> None:
        """Before a large ingest (a first snapshot), give the store a zstd dictionary trained
        on a sample of its small files, if it has none (costs ~0.1 s, saves ~12% of space)."""
        wants = getattr(self.sink, "wants_dictionary", None)
        if wants is None or not wants():
            return
        small = [c for c in cands if 64 <= c[4][0] <= DICT_SAMPLE_MAX]
        if len(small) < DICT_TRAIN_MIN // 2:
            return
        step = max(1, len(small) // DICT_SAMPLES)
        samples = []
        for c in small[::step][:DICT_SAMPLES]:
            try:
                fd = open_beneath(self.rootfd, c[0], _O_FILE)
            except OSError:
                continue
            try:
                samples.append(read_all(fd, c[4][0]))
            except OSError:
                pass
            finally:
                os.close(fd)
        self.sink.install_dictionary(samples)

    def _reuse_moved(self, cands: list[tuple]) -> list[tuple]:
        """Files that only moved (a renamed directory) keep their content: same inode and stat
        data as a file read before means the same bytes, so they are not read again."""
        new = [c for c in cands if c[3] is None]
        if len(new) < REUSE_MIN or not (self._removed_files or self._had_files):
            return cands
        by_ino: dict[int, FileNode] = {n.ino: n for n in self._removed_files}
        for _, n in walk(self.root):
            if n.__class__ is FileNode and n.kind != ENTRY_SYMLINK:
                by_ino.setdefault(n.ino, n)
        rest = []
        for c in cands:
            path, name, parent, old, key = c
            m = by_ino.get(key[3]) if old is None else None
            if m is not None and m.key == key:
                self._set(
                    parent,
                    (parent,),
                    name,
                    path,
                    FileNode(m.kind, m.mode, m.size, m.mtime_ns, m.ref, m.ctime_ns, m.ino, False),
                )
                self.stats.reused_moved += 1
            else:
                rest.append(c)
        return rest

    def _read_ahead(self, batch: list[tuple]) -> list[Read | None] | None:
        """The small files of a large ingest, read in one batchstat call (without the GIL, on
        the C extension's threads); None when there is nothing to gain (a small ingest, no C
        extension). First snapshot of Django 5.0 (6.8k files), in one process, alternating
        ten times: 1.03 s median with it, 1.20 s without."""
        if len(batch) < READ_AHEAD_MIN:
            return None
        # (b"" fails to open: a file to chunk is read its own way.)
        paths = [c[0] if c[4][0] <= CHUNK_THRESHOLD else b"" for c in batch]
        return read_small(self.rootfd, paths, CHUNK_THRESHOLD)

    def _ingest_safe(self, cand, pre: Read | None = None):
        try:
            if pre is not None:
                node = self._store_read(pre, cand[3])
                if node is not None:
                    return node
                # Changed while it was read ahead, or too fresh to trust one read: below.
            return self._ingest(cand[0], cand[3])
        except (_Rescan, OSError, Aborted) as e:
            return e

    def _store_read(self, pre: Read, old: FileNode | None) -> FileNode | None:
        """Store a file read ahead: the checks of _read_file's small-file branch, on the
        keys (size, mtime_ns, ctime_ns, ino, mode) taken before and after the read. None if it
        changed during the read or was changed too recently for one read to vouch for it."""
        data, k1, k2, nlink = pre
        if not _same_keys(k1, k2, nlink) or len(data) != k2[0] or k2[2] >= time.time_ns() - HOT_NS:
            return None
        base = old.ref if old is not None and old.kind == ENTRY_FILE else None
        ref = self.sink.put(KIND_DATA, data, base=base)
        self.stats.read_files += 1
        self.stats.read_bytes += k2[0]
        racy = self._racy_ctime(k2[2])
        return FileNode(ENTRY_FILE, k2[4] & 0o7777, k2[0], k2[1], ref, k2[2], k2[3], racy)

    def _ingest(self, path: bytes, old: FileNode | None) -> FileNode | None:
        for _attempt in range(MAX_READ_ATTEMPTS):
            try:
                fd = open_beneath(self.rootfd, path, _O_FILE)
            except FileNotFoundError:
                return None
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV, errno.ENXIO):
                    raise _Rescan() from e
                raise
            try:
                node = self._read_file(fd, old)
            finally:
                os.close(fd)
            if node is not None:
                return node
            self.stats.retried_reads += 1
        raise Aborted(
            f"{os.fsdecode(path)} kept changing while it was read ({MAX_READ_ATTEMPTS} tries); "
            "retry the snapshot when writes to it have finished"
        )

    def _read_file(self, fd: int, old: FileNode | None) -> FileNode | None:
        """Store the file's content; None if it changed during the read."""
        st1 = os.fstat(fd)
        if not stat.S_ISREG(st1.st_mode):
            raise _Rescan()
        if st1.st_size <= CHUNK_THRESHOLD:
            data = read_all(fd, st1.st_size)
            st2 = os.fstat(fd)
            if not _same(st1, st2) or len(data) != st2.st_size:
                return None
            if st2.st_ctime_ns >= time.time_ns() - HOT_NS and read_all(fd, st2.st_size) != data:
                return None
            hot = False  # the second read vouches for it
            base = old.ref if old is not None and old.kind == ENTRY_FILE else None
            ref = self.sink.put(KIND_DATA, data, base=base)
            kind = ENTRY_FILE
        else:
            chunks = []
            total = 0
            for ch in FastCDC(CHUNK_AVG, min_size=CHUNK_MIN, max_size=CHUNK_MAX).cut_stream(
                _FdReader(fd)
            ):
                data = bytes(ch.data)
                chunks.append((self.sink.put(KIND_DATA, data), len(data)))
                total += len(data)
            st2 = os.fstat(fd)
            if not _same(st1, st2) or total != st2.st_size:
                return None
            hot = st2.st_ctime_ns >= time.time_ns() - HOT_NS
            base = old.ref if old is not None and old.kind == ENTRY_CHUNKED else None
            ref = self.sink.put(
                KIND_CHUNKLIST,
                encode_chunklist(chunks),
                children=[c for c, _ in chunks],
                base=base,
            )
            kind = ENTRY_CHUNKED
        self.stats.read_files += 1
        self.stats.read_bytes += st2.st_size
        return FileNode(
            kind,
            st2.st_mode & 0o7777,
            st2.st_size,
            st2.st_mtime_ns,
            ref,
            st2.st_ctime_ns,
            st2.st_ino,
            # A large file written moments ago may be mid-write (a writer paused inside one
            # large write() leaves size and mtime unchanged): read it again next time.
            self._racy(st2) or hot,
        )


class _FdReader:
    """A readinto() reader over a descriptor, for pyfastcdc's streaming chunker."""

    __slots__ = ("fd", "pos")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0

    def readinto(self, buf) -> int:
        n = os.preadv(self.fd, [buf], self.pos)
        self.pos += n
        return n


def _symlink_holds(old, st: os.stat_result) -> bool:
    """Does an indexed symlink still match this lstat (same inode, times, not racy)?"""
    return (
        old is not None
        and old.__class__ is FileNode
        and old.kind == ENTRY_SYMLINK
        and old.mtime_ns == st.st_mtime_ns
        and old.ctime_ns == st.st_ctime_ns
        and old.ino == st.st_ino
        and not old.racy
    )


def _key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """The stat data a candidate keeps (a stat_result is three times larger)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)


def _listing_holds(old, st: os.stat_result) -> bool:
    """Is a directory's recorded listing still valid (no entry added, removed, renamed)?"""
    return (
        old is not None
        and old.__class__ is DirNode
        and not old.racy
        and old.mtime_ns == st.st_mtime_ns
        and old.ctime_ns == st.st_ctime_ns
        and old.ino == st.st_ino
    )


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    """Did the file stay unchanged between two fstats of one open descriptor?"""
    return _same_keys(_key(a), _key(b), b.st_nlink)


def _same_keys(a: tuple, b: tuple, nlink_after: int) -> bool:
    """_same on keys (size, mtime_ns, ctime_ns, ino, mode) and the link count after."""
    if a[0] != b[0] or a[1] != b[1] or a[3] != b[3]:
        return False
    # Renaming another file over this one (or deleting it) drops its link count to 0, which
    # moves only its ctime: the bytes read are still a whole version of what was at the path.
    # Retrying would chase a writer that replaces the file faster than it can be read.
    return a[2] == b[2] or nlink_after == 0


def encode_dirty(root: DirNode, sink, upserts: list[tuple[bytes, Node]] | None = None) -> bytes:
    """Encode and store every directory whose tree is stale, children first; returns the root id.

    Each re-encoded directory is appended to `upserts` (its persisted record changes).
    """
    if root.tree_id is not None:
        return root.tree_id
    stale: list[tuple[DirNode, bytes]] = []  # children before their parents

    def collect(node: DirNode, path: bytes) -> None:
        for name, child in node.entries.items():
            if child.__class__ is DirNode and child.tree_id is None:
                collect(child, join(path, name))
        stale.append((node, path))

    collect(root, b"")
    prefetch = getattr(sink, "prefetch_bases", None)
    if prefetch is not None:
        # The delta bases' catalog rows in one query rather than one per directory.
        prefetch([n.base_tree for n, _ in stale if n.base_tree is not None])
    for node, path in stale:
        if len(node.entries) > fmt.SPLIT_MIN_ENTRIES:
            # A wide directory: only the parts that changed are packed and stored again.
            parts = node.encode_parts()
            for part in parts:
                if part.oid is None:
                    part.oid = sink.put(KIND_TREE, part.raw, children=part.kids)
            node.tree_id = sink.put(
                KIND_TREE,
                encode_tree_index((part.count, part.oid) for part in parts),
                children=[part.oid for part in parts],
            )
            node.remember_parts(parts, node.tree_id)
        else:
            node.split = None
            raw, children = node.encode()
            node.tree_id = sink.put(KIND_TREE, raw, children=children, base=node.base_tree)
        node.base_tree = node.tree_id
        if upserts is not None:
            upserts.append((path, node))
    assert root.tree_id is not None
    return root.tree_id
