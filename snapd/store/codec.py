"""zstd compression of object payloads, plain and as deltas against a base object.

A delta is an ordinary zstd frame compressed with the base object's raw content loaded as a
raw-content dictionary (zstd's "patch from" mode), so decoding needs only zstd and the base.
Compressor objects are reused per thread: creating one costs about 8 us.
"""

from __future__ import annotations

import threading

import zstandard

from .format import CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_DELTA

DEFAULT_LEVEL = 3
# Below this a payload is not worth a zstd frame header.
MIN_COMPRESS_SIZE = 64
# A delta is kept only if it is at most this fraction of the plain compressed size.
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=False)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def compress(data: bytes, level: int = DEFAULT_LEVEL) -> tuple[int, bytes]:
    """Compress a payload; returns (codec, stored bytes). Incompressible data is stored raw."""
    if len(data) < MIN_COMPRESS_SIZE:
        return CODEC_RAW, bytes(data)
    z = _compressor(level).compress(data)
    if len(z) >= len(data):
        return CODEC_RAW, bytes(data)
    return CODEC_ZSTD, z


def compress_delta(data: bytes, base: bytes, level: int = DEFAULT_LEVEL) -> bytes:
    """Compress `data` against `base` (raw content of the base object)."""
    d = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(level=level, dict_data=d, write_checksum=False).compress(data)


def decompress(codec: int, payload: bytes, raw_size: int, base: bytes | None = None) -> bytes:
    if codec == CODEC_RAW:
        return bytes(payload)
    if codec == CODEC_ZSTD:
        return _decompressor().decompress(payload, max_output_size=raw_size)
    if codec == CODEC_ZSTD_DELTA:
        if base is None:
            raise ValueError("delta object needs its base")
        d = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        return zstandard.ZstdDecompressor(dict_data=d).decompress(payload, max_output_size=raw_size)
    raise ValueError(f"unknown codec {codec}")
