"""Encoder-feature cache: audio embeddings of clips and re-listened spans, keyed by (audio content hash,
start_sample, end_sample), least-recently-used eviction under a byte budget, resident on the model's device.

The n samples of a GRPO group re-listen overlapping spans of one clip; a hit skips the mel op, the audio encoder
and the projector. The entries are what the engine's step embeds from: ``model.embed_gathered`` copies a step's
audio rows out of them into the step's embeddings in one native ``gather_rows`` call (engine/step_batch.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
import torch


Key = tuple[str, int, int]


def audio_hash(wave: np.ndarray | torch.Tensor) -> str:
    """Content hash of a waveform (float32 samples): equal audio from different files shares cache entries."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu", torch.float32).numpy()
    data = np.ascontiguousarray(wave, dtype=np.float32)
    return hashlib.blake2b(data.view(np.uint8), digest_size=16).hexdigest()


@dataclasses.dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    rejected: int = 0  # entries larger than the whole budget, never stored
    bytes: int = 0     # held now

    @property
    def hit_rate(self) -> float:
        return self.hits / max(1, self.hits + self.misses)


class EncoderCache:
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[Key, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def get(self, key: Key) -> torch.Tensor | None:
        """The cached (num_tokens, hidden) embeddings, marked most recently used; None (a miss) otherwise."""
        value = self._entries.get(key)
        if value is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return value

    def put(self, key: Key, embeddings: torch.Tensor) -> None:
        """Store embeddings (kept as given: same device and dtype), evicting least recently used entries."""
        size = embeddings.numel() * embeddings.element_size()
        if size > self.max_bytes:
            self.stats.rejected += 1
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.stats.bytes -= old.numel() * old.element_size()
        while self.stats.bytes + size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.stats.bytes -= evicted.numel() * evicted.element_size()
            self.stats.evictions += 1
        self._entries[key] = embeddings
        self.stats.bytes += size

    def clear(self) -> None:
        """Drop every entry (e.g. after the audio encoder's weights changed)."""
        self._entries.clear()
        self.stats.bytes = 0

    def embed(self, spans: Sequence[tuple], encode: Callable) -> tuple[list[torch.Tensor], list[bool]]:
        """Embeddings of ``(clip, start_sample, end_sample)`` spans (a clip has ``.hash`` and ``.wave``): hits from
        the cache, plus one ``encode(waves, [(wave_index, start, end), ...])`` call for all distinct misses (n
        samples re-listening the same span in one step encode it once). Returns the embeddings and whether each
        span was served without encoding."""
        keys = [(c.hash, s, e) for c, s, e in spans]
        first: dict = {}
        out: list[torch.Tensor | None] = []
        hit: list[bool] = []
        for i, k in enumerate(keys):
            if k in first:  # a repeat within this call: shares the first one's rows
                self.stats.hits += 1
                out.append(None)
                hit.append(True)
            else:
                first[k] = i
                out.append(self.get(k))
                hit.append(out[-1] is not None)
        misses = [i for i, o in enumerate(out) if o is None and first[keys[i]] == i]
        if misses:
            clips = list({id(spans[i][0]): spans[i][0] for i in misses}.values())
            index = {id(c): j for j, c in enumerate(clips)}
            rows = encode([c.wave for c in clips], [(index[id(spans[i][0])], spans[i][1], spans[i][2]) for i in misses])
            for i, piece in zip(misses, rows):
                out[i] = piece
                self.put(keys[i], piece)
        return [o if o is not None else out[first[k]] for o, k in zip(out, keys)], hit
