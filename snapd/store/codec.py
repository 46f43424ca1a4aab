"""zstd compression of object payloads: plain, as deltas against a base object, or with a
trained dictionary.

A delta is an ordinary zstd frame compressed with the base object's raw content loaded as a
raw-content dictionary (zstd's "patch from" mode), so decoding needs only zstd and the base.
Small files that have no earlier version to delta against use the store's trained dictionary
(an object too): measured on Django 5.0, 14.1 MB plain vs 12.4 MB with a 112 KiB dictionary
trained on 1,000 samples (about 0.1 s of training). Compressor objects are reused per thread:
creating one costs about 8 us, loading a dictionary more.
"""

from __future__ import annotations

import threading

import zstandard

from .format import CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_DELTA, CODEC_ZSTD_DICT

DEFAULT_LEVEL = 3
# Below this a payload is not worth a zstd frame header.
MIN_COMPRESS_SIZE = 64
DICT_SIZE = 112 * 1024
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


def train_dictionary(samples: list[bytes], level: int = DEFAULT_LEVEL) -> bytes:
    """A zstd dictionary for small files like these (fixed COVER parameters: ~0.1 s)."""
    d = zstandard.train_dictionary(DICT_SIZE, samples, k=1024, d=8, level=level)
    return d.as_bytes()


def _dict_for(dict_id: bytes, dict_raw: bytes, level: int):
    """(compressor, decompressor) for a trained dictionary, cached per thread."""
    cache = getattr(_local, "dicts", None)
    if cache is None:
        cache = _local.dicts = {}
    pair = cache.get(dict_id)
    if pair is None:
        d = zstandard.ZstdCompressionDict(dict_raw, dict_type=zstandard.DICT_TYPE_FULLDICT)
        pair = cache[dict_id] = (
            zstandard.ZstdCompressor(level=level, dict_data=d, write_checksum=False),
            zstandard.ZstdDecompressor(dict_data=d),
        )
        if len(cache) > 8:
            cache.pop(next(iter(cache)))
    return pair


def compress_with_dict(
    data: bytes, dict_id: bytes, dict_raw: bytes, level: int = DEFAULT_LEVEL
) -> bytes:
    return _dict_for(dict_id, dict_raw, level)[0].compress(data)


def decompress(
    codec: int,
    payload: bytes,
    raw_size: int,
    base: bytes | None = None,
    base_id: bytes | None = None,
) -> bytes:
    if codec == CODEC_RAW:
        return bytes(payload)
    if codec == CODEC_ZSTD:
        return _decompressor().decompress(payload, max_output_size=raw_size)
    if codec == CODEC_ZSTD_DELTA:
        if base is None:
            raise ValueError("delta object needs its base")
        d = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        return zstandard.ZstdDecompressor(dict_data=d).decompress(payload, max_output_size=raw_size)
    if codec == CODEC_ZSTD_DICT:
        if base is None or base_id is None:
            raise ValueError("dictionary-compressed object needs its dictionary")
        return _dict_for(base_id, base, DEFAULT_LEVEL)[1].decompress(
            payload, max_output_size=raw_size
        )
    raise ValueError(f"unknown codec {codec}")
