"""File-descriptor based access to a workspace that hostile processes may modify concurrently.

Every path inside a workspace is reached from the workspace root's descriptor without following
symlinks: openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) where the kernel has it (Linux 5.6+),
else a component-by-component walk with O_NOFOLLOW. Nothing here resolves a path string from
the top, so swapping a directory for a symlink can make an operation fail, never escape.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SYS_OPENAT2 = 437  # the same number on every architecture that has it
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _libc = None
    _syscall = None
_renameat2 = getattr(_libc, "renameat2", None)  # glibc 2.28+
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    _renameat2.argtypes += [ctypes.c_uint]
    _renameat2.restype = ctypes.c_int
_RENAME_NOREPLACE = 1
_have_openat2: bool | None = None


def _openat2(dirfd: int, path: bytes, flags: int) -> int:
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return fd


def has_openat2() -> bool:
    global _have_openat2
    if _have_openat2 is None:
        _have_openat2 = False
        if _syscall is not None:
            try:
                os.close(_openat2(os.open("/", _O_DIR), b".", _O_DIR))
                _have_openat2 = True
            except OSError:
                pass
    return _have_openat2


def open_root(path: str) -> int:
    """Open a workspace root directory (the last component must not be a symlink)."""
    return os.open(path, _O_DIR)


def open_beneath(rootfd: int, rel: bytes, flags: int = _O_DIR) -> int:
    """Open `rel` (relative, '/'-separated bytes) beneath rootfd, following no symlinks.

    Raises OSError: ENOENT if a component is missing, ELOOP/ENOTDIR if a component is a symlink
    or not a directory, EXDEV if the path would leave the root.
    """
    if not rel:
        return os.open(".", flags | os.O_NOFOLLOW, dir_fd=rootfd)
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    if has_openat2():
        try:
            return _openat2(rootfd, rel, flags)
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise
    parts = rel.split(b"/")
    fd = rootfd
    try:
        for part in parts[:-1]:
            _check_component(part)
            nfd = os.open(part, _O_DIR, dir_fd=fd)
            if fd != rootfd:
                os.close(fd)
            fd = nfd
        _check_component(parts[-1])
        return os.open(parts[-1], flags, dir_fd=fd)
    finally:
        if fd != rootfd:
            os.close(fd)


def _check_component(part: bytes) -> None:
    if part in (b"", b".", b".."):
        raise OSError(errno.EXDEV, "path component leaves the workspace", part)


def rename_noreplace(src: bytes, dst: bytes, dir_fd: int) -> None:
    """Rename src to dst inside one directory; FileExistsError instead of replacing dst."""
    if _renameat2 is not None:
        if _renameat2(dir_fd, src, dir_fd, dst, _RENAME_NOREPLACE) == 0:
            return
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: the file system lacks the flag
            raise OSError(e, os.strerror(e), dst)
    # link() never replaces either; then drop the temporary name.
    os.link(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    os.unlink(src, dir_fd=dir_fd)


def split(rel: bytes) -> tuple[bytes, bytes]:
    """(parent, name) of a relative path; the parent of a top-level name is b''."""
    i = rel.rfind(b"/")
    if i < 0:
        return b"", rel
    return rel[:i], rel[i + 1 :]


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def read_all(fd: int, size_hint: int) -> bytes:
    """Read a regular file from offset 0 to EOF.

    A short read that reached the hinted size (the size fstat gave) ends the read: a file of
    that size takes one call, not a second one that returns nothing (~5 us a call on a VM,
    for every file a first snapshot reads). Callers compare stat data before and after, which
    catches a file that grows after it. A short read before the hinted size (a file system
    that returns less, or a file that shrank) reads on until a read returns nothing.
    """
    chunks = []
    pos = 0
    want = max(size_hint, 0) + 1  # one extra byte reveals growth without another call
    while True:
        ask = max(want, 65536)
        b = os.pread(fd, ask, pos)
        if b:
            chunks.append(b)
            pos += len(b)
        if not b or (len(b) < ask and pos >= size_hint):
            break
        want = 65536
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def is_special(mode: int) -> bool:
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


def fsync_dir_fd(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise


# File systems on which a directory's mtime and ctime change whenever an entry is added,
# removed or renamed in it, and that report stat data directly (no attribute caching).
LOCAL_FS_TYPES = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "bcachefs", "overlay"}
)


def fs_type(path: str) -> str:
    """The type of the file system holding `path`, from /proc/self/mountinfo ('' if unknown)."""
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if "-" not in fields:
                    continue
                sep = fields.index("-")
                mount = fields[4].replace("\\040", " ")
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, fields[sep + 1]
    except OSError:
        return ""
    return kind
