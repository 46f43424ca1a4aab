"""Diff-based, confined restore of a snapshot into its workspace.

Plan: compare the workspace's index (fresh from the safety snapshot) with the target trees,
descending only where tree ids differ. Verify: read and check every object the plan needs, so
a corrupt store fails the restore before anything changes. Apply: walk the plan through directory
descriptors (each opened with O_NOFOLLOW beneath its parent's), write each file under a new
temporary name (O_CREAT|O_EXCL|O_NOFOLLOW), set its mode and mtime through the descriptor and
rename it into place. A symlink swapped in by another process makes an operation fail; it never
redirects a write outside the workspace.

Paths the index does not know (excluded by the current rules or the target's, special files,
files created after the scan) are never deleted; a directory holding such paths is emptied of
what the index knows and kept, and reported as a conflict if the target needs its name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from dataclasses import dataclass, field

from .errors import Aborted, DataLoss, InvalidArgument, PermissionDenied, ResourceExhausted
from .fsutil import join, rename_noreplace
from .ignore import INTERNAL_PREFIX, Excludes
from .index import DirNode, FileNode, Node, Part, walk
from .store.format import (
    ENTRY_CHUNKED,
    ENTRY_DIR,
    ENTRY_FILE,
    ENTRY_KIND_NAMES,
    ENTRY_SYMLINK,
    KIND_TREE,
    TreeEntry,
    decode_tree_index,
    is_tree_index,
)
from .store.store import Store

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_TMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Verified file contents kept in memory between the verify and apply passes.
VERIFY_CACHE_BYTES = 256 * 1024 * 1024


@dataclass
class Change:
    path: str
    change: str  # added | modified | deleted | type_changed | metadata
    kind: str  # file | dir | symlink (the new kind; the old one for deletions)
    old_size: int = 0
    new_size: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RestoreStats:
    files_written: int = 0
    bytes_written: int = 0
    deleted: int = 0
    dirs_created: int = 0
    metadata_only: int = 0
    conflicts: list[str] = field(default_factory=list)


# --- plan ---------------------------------------------------------------------------------------
@dataclass
class _Op:
    name: bytes
    path: bytes
    cur: Node | None
    new: TreeEntry | None  # None: delete
    sub: _DirPlan | None = None  # for directories: what changes inside
    meta_only: bool = False


@dataclass
class _DirPlan:
    ops: list[_Op]
    exact: bool  # after applying, the directory equals the target tree
    # A wide directory's target parts, in order: (id, the current part it shares, else the
    # names it holds). Lets the restored directory keep its parts cached (DirNode.adopt_parts).
    parts: list[tuple[bytes, Part | None, list[bytes] | None]] | None = None


def parse_paths(paths: list[str]) -> dict:
    """Validate restore paths and build a trie: {name: subtrie}; a subtrie of None = whole."""
    trie: dict = {}
    for p in paths:
        if not isinstance(p, str) or not p or p.startswith("/") or "\x00" in p:
            raise InvalidArgument(f"restore path {p!r} must be a non-empty relative path")
        parts = [c for c in p.split("/") if c not in ("", ".")]
        if not parts or ".." in parts:
            raise InvalidArgument(f"restore path {p!r} must stay inside the workspace (no '..')")
        node = trie
        for i, part in enumerate(parts):
            key = os.fsencode(part)
            if i == len(parts) - 1:
                node[key] = None
            else:
                if key in node and node[key] is None:
                    break  # an ancestor is restored whole already
                node = node.setdefault(key, {})
    return trie


class Planner:
    def __init__(self, store: Store, cur_excludes: Excludes, target_excludes: Excludes) -> None:
        self.store = store
        self.cur_excludes = cur_excludes
        self.target_excludes = target_excludes
        self.changes: list[Change] = []
        self.needed: dict[bytes, tuple[bool, int]] = {}  # content ref -> (chunked, size)

    def plan(self, cur: DirNode, target_tree: bytes, scope: dict | None) -> _DirPlan | None:
        if scope is None and cur.tree_id != target_tree:
            return self._subdir(cur, target_tree, b"")
        return self._dir(cur, self._entries(target_tree), b"", scope, cur.tree_id == target_tree)

    def _entries(self, tree_id: bytes | None) -> dict[bytes, TreeEntry]:
        if tree_id is None:
            return {}
        return {e.name: e for e in self.store.read_tree(tree_id)}

    def _subdir(self, cur: DirNode, tree_id: bytes, path: bytes) -> _DirPlan | None:
        """Plan a whole directory against its target tree. A wide one whose index shares parts
        with the directory's current parts compares only the entries of the other parts:
        a shared part holds the same entries on both sides (and none of them is excluded,
        or the scan before the restore would have dropped it from the index)."""
        parts = cur.current_parts()
        if parts is not None:
            raw = self.store.read(tree_id, KIND_TREE)
            if is_tree_index(raw):
                target_parts = [pid for _, pid in decode_tree_index(raw)]
                by_id = {p.oid: p for p in parts}
                target: dict[bytes, TreeEntry] = {}
                layout: list[tuple[bytes, Part | None, list[bytes] | None]] = []
                for pid in target_parts:
                    if pid in by_id:
                        layout.append((pid, by_id[pid], None))
                        continue
                    entries = self.store.read_tree(pid)
                    layout.append((pid, None, [e.name for e in entries]))
                    for e in entries:
                        target[e.name] = e
                names = set(target)
                shared = {pid for pid, part, _ in layout if part is not None}
                for part in parts:
                    if part.oid not in shared:
                        names.update(part.names)
                plan = self._dir(cur, target, path, None, names=names)
                if plan is not None:
                    plan.parts = layout
                return plan
        return self._dir(cur, self._entries(tree_id), path, None)

    def _dir(
        self,
        cur: DirNode | None,
        target: dict[bytes, TreeEntry],
        rel: bytes,
        scope: dict | None,
        same: bool = False,
        names: set[bytes] | None = None,
    ) -> _DirPlan | None:
        if same and scope is None:
            return None
        ops: list[_Op] = []
        exact = scope is None
        cur_entries = cur.entries if cur is not None else {}
        if names is None:
            names = set(target) | set(cur_entries) if scope is None else set(scope)
        for name in sorted(names):
            path = join(rel, name)
            c = cur_entries.get(name)
            t = target.get(name)
            sub_scope = scope[name] if scope is not None else None
            if scope is not None and sub_scope is not None:
                # An ancestor of a requested path: recurse without restoring this dir itself.
                op = self._partial(name, path, c, t, sub_scope)
                if op is not None:
                    ops.append(op)
                continue
            if (
                t is not None
                and c is not None
                and c.mtime_ns == t.mtime_ns
                and c.mode == t.mode
                and (c.tree_id if c.__class__ is DirNode else c.ref) == t.ref
                and (c.__class__ is DirNode) == (t.kind == ENTRY_DIR)
                and (c.__class__ is DirNode or c.kind == t.kind)
            ):
                # Unchanged (most entries of a directory a step touched). It is in the index,
                # so the current rules do not exclude it (the scan before a restore drops
                # what they exclude): skip it before the exclude and comparison work.
                continue
            if t is not None and self.cur_excludes.excluded(path, t.kind == ENTRY_DIR):
                exact = False  # the workspace's rules exclude it now: leave the path alone
                continue
            if t is None:
                if c is None:
                    continue
                if self.target_excludes.excluded(path, isinstance(c, DirNode)):
                    exact = False  # the target never tracked it: leave it alone
                    continue
                ops.append(_Op(name, path, c, None))
                self._note(path, "deleted", c, None)
                if isinstance(c, DirNode):  # list what goes with it, as added trees are listed
                    for sub, node in sorted(walk(c, path)):
                        self._note(sub, "deleted", node, None)
                continue
            op = self._entry(name, path, c, t)
            if op is not None:
                ops.append(op)
                if op.sub is not None and not op.sub.exact:
                    exact = False
        return _DirPlan(ops, exact)

    def _partial(self, name, path, c, t, sub_scope) -> _Op | None:
        t_dir = t if t is not None and t.kind == ENTRY_DIR else None
        c_dir = c if isinstance(c, DirNode) else None
        if t_dir is None and c_dir is None:
            return None  # neither side has a directory here: nothing below to restore
        target = self._entries(t_dir.ref) if t_dir is not None else {}
        sub = self._dir(c_dir, target, path, sub_scope)
        if sub is None or not sub.ops:
            return None
        if c_dir is None:
            # Create the missing ancestor with the target's metadata.
            if c is not None:
                self._note(path, "type_changed", c, t_dir)
            else:
                self._note(path, "added", None, t_dir)
            return _Op(name, path, c, t_dir, sub)
        keep = TreeEntry(name, ENTRY_DIR, c_dir.mode, c_dir.mtime_ns, 0, b"")
        return _Op(name, path, c_dir, keep, sub)

    def _entry(self, name: bytes, path: bytes, c: Node | None, t: TreeEntry) -> _Op | None:
        if t.kind == ENTRY_DIR:
            if isinstance(c, DirNode):
                same = c.tree_id == t.ref
                sub = None if same else self._subdir(c, t.ref, path)
                meta = c.mode != t.mode or c.mtime_ns != t.mtime_ns
                if sub is None and not meta:
                    return None
                if meta:
                    self._note(path, "metadata", c, t)
                return _Op(name, path, c, t, sub or _DirPlan([], True), meta_only=sub is None)
            self._note(path, "type_changed" if c is not None else "added", c, t)
            sub = self._dir(None, self._entries(t.ref), path, None)
            return _Op(name, path, c, t, sub or _DirPlan([], True))
        if isinstance(c, FileNode) and c.kind == t.kind and c.ref == t.ref:
            if c.mode == t.mode and c.mtime_ns == t.mtime_ns:
                return None
            self._note(path, "metadata", c, t)
            return _Op(name, path, c, t, meta_only=True)
        if c is None:
            self._note(path, "added", None, t)
        elif isinstance(c, DirNode) or c.kind == ENTRY_SYMLINK or t.kind == ENTRY_SYMLINK:
            self._note(path, "type_changed" if _kind(c) != _kind(t) else "modified", c, t)
        else:
            self._note(path, "modified", c, t)
        if t.kind in (ENTRY_FILE, ENTRY_CHUNKED):
            self.needed[t.ref] = (t.kind == ENTRY_CHUNKED, t.size)
        return _Op(name, path, c, t)

    def _note(self, path: bytes, change: str, c: Node | None, t: TreeEntry | None) -> None:
        kind = _kind(t) if t is not None else _kind(c)
        self.changes.append(
            Change(
                os.fsdecode(path),
                change,
                kind,
                getattr(c, "size", 0) if c is not None else 0,
                t.size if t is not None else 0,
            )
        )


def _kind(x) -> str:
    if isinstance(x, DirNode):
        return "dir"
    return ENTRY_KIND_NAMES[x.kind]


# --- verify -------------------------------------------------------------------------------------
def verify_needed(store: Store, needed: dict[bytes, tuple[bool, int]]) -> dict[bytes, list[bytes]]:
    """Read and check every object the plan writes; returns contents that fit the cache."""
    cache: dict[bytes, list[bytes]] = {}
    budget = VERIFY_CACHE_BYTES
    for ref, (chunked, size) in needed.items():
        parts = list(store.iter_content(chunked, ref))  # raises DataLoss on damage
        if sum(len(p) for p in parts) != size:
            raise DataLoss(f"object {ref.hex()} has the wrong size")
        if size <= budget:
            cache[ref] = parts
            budget -= size
    return cache


# --- apply --------------------------------------------------------------------------------------
class Applier:
    """Executes a plan through directory descriptors and keeps the index in step."""

    def __init__(
        self,
        store: Store,
        rootfd: int,
        contents: dict[bytes, list[bytes]],
        *,
        fine_timestamps: bool,
        check_listings: bool = True,
    ) -> None:
        # Files written here are as trustworthy as scanned ones: racy only where timestamps
        # are coarse (see scanner.RACY_MARGIN_NS).
        self.racy = not fine_timestamps
        # List each directory written into, so that the next full walk need not (off when a
        # watcher makes the next scans hinted: a watched restore of a dozen files spent ~2 ms
        # on it, for nothing).
        self.check_listings = check_listings and fine_timestamps
        self.store = store
        self.rootfd = rootfd
        self.contents = contents
        self.stats = RestoreStats()
        self.changed: dict[bytes, Node] = {}
        self.removed: set[bytes] = set()
        self.cleared: set[bytes] = set()
        self.dropped_dirs = False  # a directory left the tree (see index.live_changes)

    def apply(self, root: DirNode, plan: _DirPlan, target_root: bytes | None) -> None:
        st = os.fstat(self.rootfd)
        restore_mode = self._make_writable(self.rootfd, st)
        try:
            self._apply_dir(self.rootfd, b"", root, plan)
        finally:
            if restore_mode is not None:
                os.chmod(self.rootfd, restore_mode)
        root.tree_id = target_root if plan.exact and target_root is not None else None
        if root.tree_id is not None and plan.parts is not None:
            root.adopt_parts(plan.parts, root.tree_id)
        self.changed[b""] = root

    @staticmethod
    def _make_writable(fd: int, st: os.stat_result) -> int | None:
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o700 != 0o700:
            os.chmod(fd, mode | 0o700)
            return mode
        return None

    def _apply_dir(self, dfd: int, rel: bytes, node: DirNode, plan: _DirPlan) -> None:
        conflicts = len(self.stats.conflicts)
        try:
            self._apply_ops(dfd, node, plan)
        finally:
            if len(self.stats.conflicts) != conflicts:
                # The directory is not the target tree after all: let the index describe what
                # is there (re-encoded at the commit) instead of claiming the target's tree id.
                plan.exact = False

    def _apply_ops(self, dfd: int, node: DirNode, plan: _DirPlan) -> None:
        for op in plan.ops:
            try:
                self._apply_op(dfd, node, op)
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EPERM):
                    raise PermissionDenied(
                        f"restore cannot write {os.fsdecode(op.path)}: {e.strerror}. Make the "
                        "workspace writable by the daemon's user."
                    ) from e
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ResourceExhausted(
                        f"no space left while restoring {os.fsdecode(op.path)}"
                    ) from e
                if e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    # Something the index does not know occupies the name: leave it.
                    self.stats.conflicts.append(os.fsdecode(op.path))
                    continue
                if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV, errno.ENOENT):
                    raise Aborted(
                        f"the workspace changed during the restore at {os.fsdecode(op.path)} "
                        f"({e.strerror}); nothing outside it was touched. Retry the restore."
                    ) from e
                raise

    def _apply_op(self, dfd: int, parent: DirNode, op: _Op) -> None:
        name, c, t = op.name, op.cur, op.new
        parent.invalidate()
        parent.racy = True  # its listing changed under our hands: list it on the next walk
        if t is None:
            if self._delete(dfd, name, op.path, c):
                parent.entries.pop(name, None)
                self.removed.add(op.path)
                self.changed.pop(op.path, None)
            return
        if t.kind == ENTRY_DIR:
            self._apply_subdir(dfd, parent, op)
            return
        if op.meta_only and isinstance(c, FileNode):
            node = self._set_meta(dfd, name, c, t)
            if node is not None:
                self._put(parent, op.path, name, node)
                self.stats.metadata_only += 1
                return
        if isinstance(c, DirNode) and not self._delete(dfd, name, op.path, c):
            self.stats.conflicts.append(os.fsdecode(op.path))
            return
        # Replace only what the index knows; an entry it does not know (a special file, one
        # created after the scan) is left alone: the rename fails with EEXIST, a conflict.
        replace = c is not None
        if t.kind == ENTRY_SYMLINK:
            node = self._write_symlink(dfd, name, t, replace)
        else:
            node = self._write_file(dfd, name, t, replace)
        self._put(parent, op.path, name, node)

    def _put(self, parent: DirNode, path: bytes, name: bytes, node: Node) -> None:
        old = parent.entries.get(name)
        if isinstance(old, DirNode) and old is not node:
            self.cleared.add(path)
            self.dropped_dirs = True
        parent.entries[name] = node
        self.changed[path] = node
        if path in self.removed:  # deleted earlier in this restore: rows below it still go
            self.removed.discard(path)
            self.cleared.add(path)

    # directories
    def _apply_subdir(self, dfd: int, parent: DirNode, op: _Op) -> None:
        name, c, t = op.name, op.cur, op.new
        if not isinstance(c, DirNode):
            if c is not None:
                os.unlink(name, dir_fd=dfd)
                self.stats.deleted += 1
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
                self.stats.dirs_created += 1
            except FileExistsError:
                # Appeared since the scan (unknown to the index): populate a directory, leave
                # anything else alone.
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    self.stats.conflicts.append(os.fsdecode(op.path))
                    return
            node = DirNode()
        else:
            node = c
        cfd = os.open(name, _O_DIR, dir_fd=dfd)
        try:
            st = os.fstat(cfd)
            self._make_writable(cfd, st)
            sub = op.sub or _DirPlan([], True)
            self._apply_dir(cfd, op.path, node, sub)
            os.chmod(cfd, t.mode)
            os.utime(cfd, ns=(t.mtime_ns, t.mtime_ns))
            st = os.fstat(cfd)
            # Our writes and the mtime set back hide whether anyone else changed the listing
            # meanwhile: trust it only if it holds exactly the index's names when listed after
            # that fstat (a name added later moves the ctime recorded here). Else the next
            # walk lists the directory, as it would every one a restore wrote into (after a
            # 4k-file restore that walk listed 3k directories: ~100 ms more).
            trusted = self.check_listings and _holds_names(cfd, node)
        finally:
            os.close(cfd)
        node.mode, node.mtime_ns = t.mode, t.mtime_ns
        node.ctime_ns, node.ino = st.st_ctime_ns, st.st_ino
        node.racy = not trusted
        if t.ref and sub.exact:
            node.tree_id = node.base_tree = t.ref
            if sub.parts is not None:
                node.adopt_parts(sub.parts, t.ref)
        else:
            node.invalidate()
        self._put(parent, op.path, name, node)

    def _delete(self, dfd: int, name: bytes, path: bytes, node: Node | None) -> bool:
        """Remove what the index knows at `name`; False if something unknown kept a dir alive."""
        if not isinstance(node, DirNode):
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                return True
            except IsADirectoryError:
                self.stats.conflicts.append(os.fsdecode(path))
                return False
            self.stats.deleted += 1
            return True
        try:
            cfd = os.open(name, _O_DIR, dir_fd=dfd)
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                os.unlink(name, dir_fd=dfd)  # it is a symlink or file now: remove the link only
                return True
            raise
        try:
            self._make_writable(cfd, os.fstat(cfd))
            for child_name, child in list(node.entries.items()):
                child_path = join(path, child_name)
                if self._delete(cfd, child_name, child_path, child):
                    node.entries.pop(child_name, None)
                    self.removed.add(child_path)
        finally:
            os.close(cfd)
        try:
            os.rmdir(name, dir_fd=dfd)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                node.invalidate()
                node.racy = True  # it holds entries we never listed: list it next time
                self.stats.conflicts.append(os.fsdecode(path))
                return False
            raise
        self.stats.deleted += 1
        self.dropped_dirs = True
        return True

    # files
    def _tmpname(self) -> bytes:
        return INTERNAL_PREFIX + b"tmp-" + secrets.token_hex(6).encode()

    def _rename(self, tmp: bytes, name: bytes, dfd: int, replace: bool) -> None:
        if replace:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        else:
            rename_noreplace(tmp, name, dfd)

    def _write_file(self, dfd: int, name: bytes, t: TreeEntry, replace: bool) -> FileNode:
        tmp = self._tmpname()
        fd = os.open(tmp, _O_TMP, 0o600, dir_fd=dfd)
        try:
            try:
                parts = self.contents.get(t.ref)
                if parts is None:
                    parts = self.store.iter_content(t.kind == ENTRY_CHUNKED, t.ref)
                written = 0
                for p in parts:
                    view = memoryview(p)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                        written += n
                os.chmod(fd, t.mode)
                os.utime(fd, ns=(t.mtime_ns, t.mtime_ns))
                st = os.fstat(fd)
                self._rename(tmp, name, dfd, replace)
                st = _after_rename(st, os.fstat(fd))
            finally:
                os.close(fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        self.stats.files_written += 1
        self.stats.bytes_written += written
        return FileNode(
            t.kind, t.mode, t.size, t.mtime_ns, t.ref, st.st_ctime_ns, st.st_ino, racy=self.racy
        )

    def _write_symlink(self, dfd: int, name: bytes, t: TreeEntry, replace: bool) -> FileNode:
        tmp = self._tmpname()
        os.symlink(t.ref, tmp, dir_fd=dfd)
        try:
            os.utime(tmp, ns=(t.mtime_ns, t.mtime_ns), dir_fd=dfd, follow_symlinks=False)
            st = os.stat(tmp, dir_fd=dfd, follow_symlinks=False)
            self._rename(tmp, name, dfd, replace)
            with contextlib.suppress(OSError):
                st = _after_rename(st, os.stat(name, dir_fd=dfd, follow_symlinks=False))
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        self.stats.files_written += 1
        return FileNode(
            ENTRY_SYMLINK,
            stat.S_IMODE(st.st_mode),
            len(t.ref),
            t.mtime_ns,
            t.ref,
            st.st_ctime_ns,
            st.st_ino,
            racy=self.racy,
        )

    def _set_meta(self, dfd: int, name: bytes, c: FileNode, t: TreeEntry) -> FileNode | None:
        """Fix mode/mtime in place; None if the file must be rewritten instead."""
        if t.kind == ENTRY_SYMLINK:
            os.utime(name, ns=(t.mtime_ns, t.mtime_ns), dir_fd=dfd, follow_symlinks=False)
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                return None
        else:
            try:
                fd = os.open(
                    name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd
                )
            except OSError:
                return None
            try:
                st = os.fstat(fd)
                # Another hard link would see the change: give this path its own inode instead.
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_ino != c.ino:
                    return None
                os.chmod(fd, t.mode)
                os.utime(fd, ns=(t.mtime_ns, t.mtime_ns))
                st = os.fstat(fd)
            finally:
                os.close(fd)
        return FileNode(
            t.kind, t.mode, t.size, t.mtime_ns, t.ref, st.st_ctime_ns, st.st_ino, racy=c.racy
        )


def _after_rename(before: os.stat_result, after: os.stat_result) -> os.stat_result:
    """The stat data to record for an entry just renamed into place.

    rename() moves the entry's ctime, so the stat taken before it would make the next scan read
    every restored file again. Take the later one when only the ctime differs; anything else
    means another process touched the entry in between, and the earlier stat (which will not
    match) makes the next scan look at it.
    """
    if (
        after.st_ino == before.st_ino
        and after.st_size == before.st_size
        and after.st_mtime_ns == before.st_mtime_ns
        and after.st_mode == before.st_mode
    ):
        return after
    return before


def _holds_names(dfd: int, node: DirNode) -> bool:
    """Does the directory open at dfd hold exactly the names node has (besides snapd's own
    temporaries, which no walk records)? Anything else (a name another process added, an
    excluded or special entry) leaves the listing to the next walk."""
    try:
        names = os.listdir(dfd)
    except OSError:
        return False
    entries = node.entries
    if len(names) < len(entries):
        return False
    # Encoded as the scanner encodes names; a set, so most of the work stays in C (~10 us
    # for a directory of a few names on this VM).
    got = {n.encode("utf-8", "surrogateescape") for n in names}
    if len(got) != len(entries):
        got = {b for b in got if not b.startswith(INTERNAL_PREFIX)}
    return got == entries.keys()
