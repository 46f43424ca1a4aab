"""Capture a whole directory tree exactly and compare two captures with a readable diff.

Dependency-free (standard library only) so that engine, daemon and client tests can share it.
A capture maps each path below the root (relative, bytes, '/'-separated; names that are not
valid UTF-8 stay bytes) to an `Item`: the entry's type, permission bits, mtime in nanoseconds,
and for files their size, digest and first bytes, for symlinks their target. Directories
(including empty ones) are items too. The root itself is not captured: its mtime changes
whenever anything is created in it, and a snapshot does not record it.

Nothing is ever followed or opened except regular files (opened with O_NOFOLLOW|O_NONBLOCK),
so FIFOs, sockets and devices in the tree are recorded by type and never block a capture.

    before = capture(ws)
    ...
    assert_same(capture(ws), before)            # raises AssertionError listing each difference
    print(describe_diff(capture(ws), before))   # the same listing as text
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from snapd.watcher import COOKIE_PREFIX
from snapd.workspace import PROBE_PREFIX

HEAD_BYTES = 48  # content shown in a diff

KIND_BY_FMT = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
}


class Item(NamedTuple):
    kind: str  # file | dir | symlink | fifo | socket | chardev | blockdev
    mode: int  # permission bits (st_mode & 0o7777)
    mtime_ns: int
    size: int = 0  # files: byte length; symlinks: target length
    digest: str = ""  # files: sha256 of the content
    target: bytes = b""  # symlinks: the link target, exactly
    head: bytes = b""  # files: the first HEAD_BYTES bytes (for the diff only)

    def key(self, *, mtimes: bool = True, dir_mtimes: bool = True) -> tuple:
        """What equality means: everything but `head` (derived from the content)."""
        keep_mtime = mtimes and (dir_mtimes or self.kind != "dir")
        return (
            self.kind,
            self.mode,
            self.mtime_ns if keep_mtime else None,
            self.size,
            self.digest,
            self.target,
        )


Capture = dict[bytes, Item]
PathFilter = Callable[[bytes], bool]


def _read_file(dir_fd: int, name: bytes) -> tuple[int, str, bytes]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        h = hashlib.sha256()
        head = b""
        size = 0
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            if len(head) < HEAD_BYTES:
                head += block[: HEAD_BYTES - len(head)]
            h.update(block)
            size += len(block)
        return size, h.hexdigest(), head
    finally:
        os.close(fd)


# The daemon's transient files: a watcher's sync cookies (created by every snapshot and by the
# background scan after the watches are set up) and the timestamp probe of an open. They come
# and go at any moment a watched workspace is open and are never part of a snapshot.
TRANSIENT_PREFIXES = (COOKIE_PREFIX, PROBE_PREFIX)


def capture(root: str | bytes | os.PathLike, *, skip: PathFilter | None = None) -> Capture:
    """Everything below `root` but the daemon's transient files. `skip(path)` True leaves a
    path (and what is below it) out."""
    out: Capture = {}
    root_fd = os.open(os.fsencode(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _walk(root_fd, b"", out, skip)
    finally:
        os.close(root_fd)
    return out


def _walk(dir_fd: int, rel: bytes, out: Capture, skip: PathFilter | None) -> None:
    # os.scandir(fd) yields str names; listdir on a bytes path is not fd-relative, so turn the
    # str names back into the exact bytes with fsencode (surrogateescape round-trips).
    for name in sorted(os.fsencode(n) for n in os.listdir(dir_fd)):
        if name.startswith(TRANSIENT_PREFIXES):
            continue
        path = rel + b"/" + name if rel else name
        if skip is not None and skip(path):
            continue
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        fmt = stat.S_IFMT(st.st_mode)
        kind = KIND_BY_FMT.get(fmt, f"unknown-{fmt:o}")
        mode = stat.S_IMODE(st.st_mode)
        if kind == "file":
            size, digest, head = _read_file(dir_fd, name)
            out[path] = Item(kind, mode, st.st_mtime_ns, size, digest, b"", head)
        elif kind == "symlink":
            target = os.readlink(name, dir_fd=dir_fd)
            target = os.fsencode(target)
            out[path] = Item(kind, mode, st.st_mtime_ns, len(target), "", target)
        elif kind == "dir":
            # Read the mtime before descending: listing does not change it, and a directory's
            # entry must describe it as it was when its children were captured.
            out[path] = Item(kind, mode, st.st_mtime_ns)
            sub = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
            try:
                _walk(sub, path, out, skip)
            finally:
                os.close(sub)
        else:
            out[path] = Item(kind, mode, st.st_mtime_ns, st.st_size)


def show_path(path: bytes) -> str:
    """A path for messages: plain text when it is UTF-8, else its bytes repr."""
    try:
        return path.decode()
    except UnicodeDecodeError:
        return repr(path)


def _show_item(item: Item | None) -> str:
    if item is None:
        return "absent"
    text = f"{item.kind} mode={item.mode:04o} mtime_ns={item.mtime_ns}"
    if item.kind == "file":
        more = "..." if item.size > len(item.head) else ""
        text += f" size={item.size} sha256={item.digest[:12]} content={item.head!r}{more}"
    elif item.kind == "symlink":
        text += f" -> {item.target!r}"
    return text


def differences(
    actual: Mapping[bytes, Item],
    expected: Mapping[bytes, Item],
    *,
    mtimes: bool = True,
    dir_mtimes: bool = True,
) -> list[str]:
    """One line per path that differs. mtimes=False ignores every mtime, dir_mtimes=False only
    directories' (which change whenever an entry is added or removed)."""
    lines = []
    for path in sorted(set(actual) | set(expected)):
        a, e = actual.get(path), expected.get(path)
        if a is not None and e is not None:
            if a.key(mtimes=mtimes, dir_mtimes=dir_mtimes) == e.key(
                mtimes=mtimes, dir_mtimes=dir_mtimes
            ):
                continue
            fields = [
                f
                for f in ("kind", "mode", "mtime_ns", "size", "digest", "target")
                if getattr(a, f) != getattr(e, f)
            ]
            lines.append(
                f"{show_path(path)}: {', '.join(fields)} differ\n"
                f"    actual:   {_show_item(a)}\n    expected: {_show_item(e)}"
            )
        elif a is None:
            lines.append(f"{show_path(path)}: missing (expected {_show_item(e)})")
        else:
            lines.append(f"{show_path(path)}: unexpected (found {_show_item(a)})")
    return lines


def describe_diff(actual: Mapping[bytes, Item], expected: Mapping[bytes, Item], **kw) -> str:
    return "\n".join(differences(actual, expected, **kw))


def assert_same(
    actual: Mapping[bytes, Item],
    expected: Mapping[bytes, Item],
    what: str = "tree",
    *,
    limit: int = 40,
    **kw,
) -> None:
    """Raise AssertionError listing (up to `limit`) paths where the two captures differ."""
    lines = differences(actual, expected, **kw)
    if lines:
        shown = "\n".join(lines[:limit])
        more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
        raise AssertionError(f"{what}: {len(lines)} path(s) differ\n{shown}{more}")


def subset(cap: Mapping[bytes, Item], prefixes: Iterable[bytes]) -> Capture:
    """The part of a capture at or below any of `prefixes`."""
    pre = tuple(prefixes)
    return {p: i for p, i in cap.items() if any(p == x or p.startswith(x + b"/") for x in pre)}


def without(cap: Mapping[bytes, Item], prefixes: Iterable[bytes]) -> Capture:
    """A capture with the paths at or below any of `prefixes` removed."""
    pre = tuple(prefixes)
    return {p: i for p, i in cap.items() if not any(p == x or p.startswith(x + b"/") for x in pre)}


# --- building trees ---------------------------------------------------------------------------
def write(
    root: str | bytes | os.PathLike,
    rel: str | bytes,
    data: bytes | str = b"",
    *,
    mode: int | None = None,
    mtime_ns: int | None = None,
) -> bytes:
    """Create or replace the file root/rel (making parent directories); returns its path."""
    path = os.path.join(os.fsencode(root), os.fsencode(rel))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(path, mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def read(root: str | bytes | os.PathLike, rel: str | bytes) -> bytes:
    with open(os.path.join(os.fsencode(root), os.fsencode(rel)), "rb") as f:
        return f.read()
