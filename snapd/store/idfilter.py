"""A Bloom filter over the store's object ids, so a put of new content skips the index lookup.

Object ids are keyed hashes, uniformly distributed: four 32-bit slices of an id serve as the
filter's hash functions. A "no" is certain for ids this process has seen inserted and all ids
present when the filter was built; ids inserted by another process after that read as "no" too,
which costs at most a duplicate copy in a pack (the index insert is idempotent), never a wrong
answer. Deleted ids stay "maybe" until the filter is rebuilt, which costs one index lookup.
"""

from __future__ import annotations

import struct
import threading

_unpack = struct.Struct("<4I").unpack


class IdFilter:
    __slots__ = ("_bits", "_count", "_lock", "_mask", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 1 << 16)
        nbits = 1 << (self.capacity * 12 - 1).bit_length()  # ~12 bits per id: ~0.5% false "maybe"
        self._bits = bytearray(nbits >> 3)
        self._mask = nbits - 1
        self._count = 0
        self._lock = threading.Lock()

    def _positions(self, oid: bytes):
        m = self._mask
        a, b, c, d = _unpack(oid)
        return a & m, b & m, c & m, d & m

    def add(self, oid: bytes) -> None:
        bits = self._bits
        with self._lock:
            for p in self._positions(oid):
                bits[p >> 3] |= 1 << (p & 7)
            self._count += 1

    def might_contain(self, oid: bytes) -> bool:
        bits = self._bits
        for p in self._positions(oid):  # noqa: SIM110 - a plain loop is faster on this hot path
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
        return True

    @property
    def full(self) -> bool:
        return self._count > self.capacity
