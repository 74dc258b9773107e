"""Frozen-tower feature cache for training: the audio rows of each clip and each cited span, computed once.

When the audio tower and projector are frozen (LoRA, or a full fine-tune of the decoder), the rows a record's audio
turns into are the same every epoch. Each span's rows are kept under the key the engine's encoder cache uses
(``audio_hash`` of the clip's samples, start and end sample), in memory (least recently used out past a byte budget)
and on disk as one safetensors file per span, below a directory named by a fingerprint of the tower's weights (a
different tower never reads them). The disk copy outlives epochs and resumes; it is bounded (past ``max_disk_bytes``
new spans stay in memory only), and a full disk is a one-line error naming the directory.

Rows from the cache equal the rows ``model.embed_spans`` computes for the same spans (the same function fills it).
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from ..audio import FeatureConfig
from ..engine.encoder_cache import EncoderCache, audio_hash
from ..errors import EchoError

DEFAULT_DISK_BYTES = 8 << 30
DEFAULT_MEMORY_BYTES = 1 << 30
TOWER_PREFIXES = ("audio_tower", "projector")


def tower_fingerprint(model) -> str:
    """A hash of the frozen parts' weights (names, shapes, bytes): rows cached for one tower are never read for
    another."""
    h = hashlib.blake2b(digest_size=12)
    for name, p in sorted(model.state_dict().items()):
        if name.startswith(TOWER_PREFIXES):
            t = p.detach().to("cpu").contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # the raw bytes, whatever the dtype
    return h.hexdigest()


class FeatureCache:
    """``rows(model, wave, spans)``: each span's ``(num_audio_tokens, hidden)`` rows, computed only on a miss."""

    def __init__(self, model, features: FeatureConfig, directory: str | os.PathLike | None = None, *,
                 max_disk_bytes: int = DEFAULT_DISK_BYTES, max_memory_bytes: int = DEFAULT_MEMORY_BYTES):
        self.features = features
        self.memory = EncoderCache(max_memory_bytes)
        self.dir = None if directory is None else Path(directory) / tower_fingerprint(model)
        self.max_disk_bytes = max_disk_bytes
        self.disk_bytes = 0
        self.computed = 0  # spans the tower ran for (misses in memory and on disk)
        self.read = 0  # spans read back from disk
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.disk_bytes = sum(f.stat().st_size for f in self.dir.glob("*.safetensors"))

    def rows(self, model, wave: torch.Tensor, spans: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        clip = audio_hash(wave)
        keys = [(clip, int(s), int(e)) for s, e in spans]
        found: dict[tuple[str, int, int], torch.Tensor] = {}
        for key in dict.fromkeys(keys):
            value = self.memory.get(key)
            if value is None and self.dir is not None and self._path(key).is_file():
                value = load_file(self._path(key))["rows"].to(model.device)
                self.memory.put(key, value)
                self.read += 1
            if value is not None:
                found[key] = value
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing:
            fresh = model.embed_spans(self.features, [wave], [(0, s, e) for _, s, e in missing])
            self.computed += len(missing)
            for key, value in zip(missing, fresh):
                found[key] = value
                self.memory.put(key, value)
                self._save(key, value)
        return [found[k] for k in keys]

    def _path(self, key: tuple[str, int, int]) -> Path:
        return self.dir / f"{key[0]}-{key[1]}-{key[2]}.safetensors"

    def _save(self, key: tuple[str, int, int], value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if self.dir is None or self.disk_bytes + size > self.max_disk_bytes:
            return  # past the bound: memory only
        path = self._path(key)
        tmp = path.with_suffix(".tmp")
        try:
            save_file({"rows": value.detach().to("cpu").contiguous()}, str(tmp))
            os.replace(tmp, path)  # whole under its final name, or absent: a kill leaves no torn entry
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise EchoError(f"feature cache {self.dir}: the disk is full ({exc.strerror}); free space, or train "
                                "without the cache (SFTConfig.feature_cache=False, --no-feature-cache)") from None
            raise
        self.disk_bytes += path.stat().st_size
