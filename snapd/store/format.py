"""On-disk formats of the store: object ids, pack records, tree and chunk-list encodings.

docs/store-format.md describes these byte for byte; keep the two in step. Everything here is
pure (no I/O), so a second reader can be checked against it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import xxhash

FORMAT_VERSION = 1

# Object kinds. Each kind hashes under its own seed, so a file can never pose as a tree.
KIND_DATA = 1  # a whole small file, or one chunk of a large file
KIND_CHUNKLIST = 2  # the ordered chunks of a large file
KIND_TREE = 3  # one directory
KINDS = (KIND_DATA, KIND_CHUNKLIST, KIND_TREE)
KIND_NAMES = {KIND_DATA: "data", KIND_CHUNKLIST: "chunklist", KIND_TREE: "tree"}

# Codecs of a stored payload.
CODEC_RAW = 0  # stored as is (incompressible data)
CODEC_ZSTD = 1  # one zstd frame
CODEC_ZSTD_DELTA = 2  # one zstd frame compressed with the base object's content as raw dictionary
CODEC_ZSTD_DICT = 3  # one zstd frame compressed with the base object (a trained zstd dictionary)
BASED_CODECS = (CODEC_ZSTD_DELTA, CODEC_ZSTD_DICT)  # codecs whose record names a base object

ID_SIZE = 16

# Tree entry kinds.
ENTRY_FILE = 1  # ref = id of a DATA object holding the whole content
ENTRY_CHUNKED = 2  # ref = id of a CHUNKLIST object
ENTRY_SYMLINK = 3  # ref = the link target bytes
ENTRY_DIR = 4  # ref = id of a TREE object
ENTRY_KIND_NAMES = {
    ENTRY_FILE: "file",
    ENTRY_CHUNKED: "file",
    ENTRY_SYMLINK: "symlink",
    ENTRY_DIR: "dir",
}


class Keys:
    """Keyed content addressing: xxh3-128 with seeds derived from the store's secret."""

    __slots__ = ("seeds",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("store secret must be at least 32 bytes")
        # One independent 64-bit seed per kind (domain separation).
        self.seeds = {kind: xxhash.xxh3_64_intdigest(secret, seed=kind) for kind in KINDS}

    def object_id(self, kind: int, data: bytes | bytearray | memoryview) -> bytes:
        return xxhash.xxh3_128_digest(data, seed=self.seeds[kind])


# --- pack files -------------------------------------------------------------------------------
# A pack is a header followed by records. A record is self-describing so that the index can be
# rebuilt from the packs alone and a damaged index entry can be cross-checked.
PACK_MAGIC = b"SNAPDPK1"
PACK_HEADER = struct.Struct("<8sI4x")  # magic, format version, reserved
RECORD_HEADER = struct.Struct("<2sBB16sII")  # b"OB", kind, codec, id, raw size, stored size
RECORD_MAGIC = b"OB"


class RecordHeader(NamedTuple):
    kind: int
    codec: int
    object_id: bytes
    raw_size: int
    stored_size: int
    base: bytes | None  # present (16 bytes after the fixed header) only for BASED_CODECS


def encode_record(
    kind: int, codec: int, object_id: bytes, raw_size: int, payload: bytes, base: bytes | None
) -> bytes:
    head = RECORD_HEADER.pack(RECORD_MAGIC, kind, codec, object_id, raw_size, len(payload))
    if codec in BASED_CODECS:
        assert base is not None and len(base) == ID_SIZE
        return head + base + payload
    return head + payload


def record_header_size(codec: int) -> int:
    return RECORD_HEADER.size + (ID_SIZE if codec in BASED_CODECS else 0)


def decode_record_header(buf: bytes) -> RecordHeader:
    magic, kind, codec, oid, raw_size, stored = RECORD_HEADER.unpack_from(buf, 0)
    if magic != RECORD_MAGIC or kind not in KINDS or codec > CODEC_ZSTD_DICT:
        raise ValueError("not a pack record")
    base = None
    if codec in BASED_CODECS:
        base = bytes(buf[RECORD_HEADER.size : RECORD_HEADER.size + ID_SIZE])
        if len(base) != ID_SIZE:
            raise ValueError("truncated pack record header")
    return RecordHeader(kind, codec, oid, raw_size, stored, base)


# --- trees ------------------------------------------------------------------------------------
# A tree lists one directory's entries sorted by name (bytes). Per entry:
#   u8 entry kind | u16 name length | u32 mode (permission bits) | i64 mtime_ns | u64 size |
#   u32 ref length | name | ref
TREE_MAGIC = b"SNT1"
TREE_ENTRY = struct.Struct("<BHIqQI")


class TreeEntry(NamedTuple):
    name: bytes
    kind: int
    mode: int  # permission bits only (st_mode & 0o7777)
    mtime_ns: int
    size: int  # file size; symlink target length; 0 for directories
    ref: bytes  # object id (file, chunked, dir) or link target (symlink)


def encode_tree(entries: Iterable[TreeEntry]) -> bytes:
    """Encode entries, which must already be sorted by name and unique."""
    parts = [TREE_MAGIC]
    pack = TREE_ENTRY.pack
    for e in entries:
        parts.append(pack(e.kind, len(e.name), e.mode, e.mtime_ns, e.size, len(e.ref)))
        parts.append(e.name)
        parts.append(e.ref)
    return b"".join(parts)


def decode_tree(data: bytes) -> list[TreeEntry]:
    if data[:4] != TREE_MAGIC:
        raise ValueError("not a tree object")
    out = []
    pos = 4
    end = len(data)
    unpack = TREE_ENTRY.unpack_from
    size = TREE_ENTRY.size
    while pos < end:
        kind, nlen, mode, mtime_ns, fsize, rlen = unpack(data, pos)
        pos += size
        name = data[pos : pos + nlen]
        pos += nlen
        ref = data[pos : pos + rlen]
        pos += rlen
        if len(ref) != rlen or kind not in ENTRY_KIND_NAMES:
            raise ValueError("corrupt tree object")
        out.append(TreeEntry(name, kind, mode, mtime_ns, fsize, ref))
    return out


def tree_children(entries: Iterable[TreeEntry]) -> Iterator[bytes]:
    """Object ids a tree refers to (one per reference, duplicates included)."""
    for e in entries:
        if e.kind != ENTRY_SYMLINK:
            yield e.ref


# A wide directory's tree is an index of parts: TREE objects that each hold a run of its sorted
# entries, cut where an entry's name hashes to a boundary (content-defined, so an edit changes
# one part and an insertion moves no boundary but its own). A change then stores one part and
# a small index instead of re-storing (and re-referencing) every entry.
#   index := "SNX1" part*      part := u32 entry_count | 16-byte id of a "SNT1" tree
TREE_INDEX_MAGIC = b"SNX1"
TREE_PART = struct.Struct("<I16s")
SPLIT_MIN_ENTRIES = 2048  # directories with more entries than this are split
PART_MIN_ENTRIES = 32
PART_MAX_ENTRIES = 4096
PART_BOUNDARY_MASK = 255  # a part ends after an entry whose name's crc32 & mask == 0 (~290)


def is_tree_index(data: bytes) -> bool:
    return data[:4] == TREE_INDEX_MAGIC


def encode_tree_index(parts: Iterable[tuple[int, bytes]]) -> bytes:
    return TREE_INDEX_MAGIC + b"".join(TREE_PART.pack(n, pid) for n, pid in parts)


def decode_tree_index(data: bytes) -> list[tuple[int, bytes]]:
    if data[:4] != TREE_INDEX_MAGIC or (len(data) - 4) % TREE_PART.size or len(data) == 4:
        raise ValueError("not a tree index object")
    return [(n, bytes(pid)) for n, pid in TREE_PART.iter_unpack(memoryview(data)[4:])]


def part_fits(entries: list[TreeEntry], part: list[TreeEntry], count: int) -> bool:
    """Does `part` (decoded) hold `count` entries that sort after all of `entries`, the
    entries of the parts before it?"""
    return len(part) == count and bool(part) and (not entries or part[0].name > entries[-1].name)


def tree_refs(data: bytes) -> list[bytes]:
    """The ids a TREE object refers to: its parts (an index) or its entries' objects."""
    if is_tree_index(data):
        return [pid for _, pid in decode_tree_index(data)]
    if data[:4] != TREE_MAGIC:
        raise ValueError("not a tree object")
    # decode_tree without building the entries (about 3x cheaper: commits and GC call this).
    out = []
    pos = 4
    end = len(data)
    unpack = TREE_ENTRY.unpack_from
    size = TREE_ENTRY.size
    while pos < end:
        kind, nlen, _mode, _mtime, _size, rlen = unpack(data, pos)
        pos += size + nlen
        if kind != ENTRY_SYMLINK:
            out.append(data[pos : pos + rlen])
        pos += rlen
        if pos > end or kind not in ENTRY_KIND_NAMES:
            raise ValueError("corrupt tree object")
    return out


# --- chunk lists ------------------------------------------------------------------------------
CHUNKLIST_MAGIC = b"SNC1"
_CHUNK = struct.Struct("<16sI")


def encode_chunklist(chunks: Iterable[tuple[bytes, int]]) -> bytes:
    return CHUNKLIST_MAGIC + b"".join(_CHUNK.pack(cid, size) for cid, size in chunks)


def decode_chunklist(data: bytes) -> list[tuple[bytes, int]]:
    if data[:4] != CHUNKLIST_MAGIC or (len(data) - 4) % _CHUNK.size:
        raise ValueError("not a chunk list object")
    return [(bytes(cid), size) for cid, size in _CHUNK.iter_unpack(memoryview(data)[4:])]
