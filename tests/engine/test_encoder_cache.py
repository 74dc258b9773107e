"""Encoder cache: keys by content, LRU under a byte budget, stats, one-call gather into a splice buffer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from echo.engine.encoder_cache import EncoderCache, audio_hash


def _emb(rows, hidden=8, fill=0.0):
    return torch.full((rows, hidden), fill)  # rows * 32 bytes


def test_hash_is_by_content():
    a = np.sin(np.arange(1000, dtype=np.float32))
    assert audio_hash(a) == audio_hash(a.copy()) == audio_hash(torch.from_numpy(a))
    b = a.copy()
    b[500] += 1e-3
    assert audio_hash(a) != audio_hash(b)


def test_hits_misses_and_lru_eviction():
    cache = EncoderCache(max_bytes=10 * 32)
    cache.put(("h", 0, 1), _emb(4))
    cache.put(("h", 1, 2), _emb(4))
    assert cache.get(("h", 0, 1)) is not None  # now most recent
    cache.put(("h", 2, 3), _emb(4))            # 12 rows > 10: evicts the least recent, (1, 2)
    assert ("h", 1, 2) not in cache and ("h", 0, 1) in cache and ("h", 2, 3) in cache
    assert cache.get(("h", 1, 2)) is None
    s = cache.stats
    assert (s.hits, s.misses, s.evictions, s.bytes) == (1, 1, 1, 8 * 32)
    assert s.hit_rate == pytest.approx(0.5)


def test_oversized_entry_is_rejected_not_stored():
    cache = EncoderCache(max_bytes=4 * 32)
    cache.put(("h", 0, 1), _emb(5))
    assert len(cache) == 0 and cache.stats.rejected == 1 and cache.stats.bytes == 0


def test_replacing_a_key_keeps_bytes_right():
    cache = EncoderCache(max_bytes=100 * 32)
    cache.put(("h", 0, 1), _emb(4))
    cache.put(("h", 0, 1), _emb(6))
    assert len(cache) == 1 and cache.stats.bytes == 6 * 32
