"""zstd contexts are pooled and shared by threads (codec.py): round trips stay exact when many
threads compress and decompress at once, plain, with the trained dictionary and as deltas,
and the pools keep a bounded number of idle contexts."""

from __future__ import annotations

import hashlib
import random
import threading

from snapd.store import codec
from snapd.store.format import CODEC_ZSTD_DELTA, CODEC_ZSTD_DICT

THREADS = 8


def _samples(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    words = [b"def", b"return", b"class", b"import", b"self", b"value", b"x", b"None"]
    return [b" ".join(rng.choice(words) for _ in range(rng.randrange(20, 400))) for _ in range(300)]


def test_many_threads_round_trip_exactly() -> None:
    samples = _samples(1)
    dict_raw = codec.train_dictionary(samples)
    dict_id = b"d" * 16
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            rng = random.Random(k)
            for _ in range(200):
                data = rng.choice(samples) + bytes([k])
                c, z = codec.compress(data)
                assert codec.decompress(c, z, len(data)) == data
                zd = codec.compress_with_dict(data, dict_id, dict_raw)
                assert codec.decompress(CODEC_ZSTD_DICT, zd, len(data), dict_raw, dict_id) == data
                base = rng.choice(samples)
                bid = hashlib.blake2b(base, digest_size=16).digest()  # ids name one content
                delta = codec.compress_delta(data, base, base_id=bid)
                assert codec.decompress(CODEC_ZSTD_DELTA, delta, len(data), base, bid) == data
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(len(pool) <= codec.IDLE_CONTEXTS for pool in codec._plain.values())
    assert len(codec._plain_d) <= codec.IDLE_CONTEXTS
    _, comps, decomps = codec._dicts[dict_id]
    assert len(comps) <= codec.IDLE_CONTEXTS and len(decomps) <= codec.IDLE_CONTEXTS
