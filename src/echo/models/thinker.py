"""Qwen2.5-Omni thinker (audio + text; the vision tower is not built): chunked audio tower → Qwen2 decoder.

The tower's own ``proj`` maps to the decoder width, so there is no separate projector. Positions run
``0, 1, 2, …`` through text and audio (M-RoPE's three streams coincide without images or video, see rope.py).
"""

from __future__ import annotations

import torch

from .audio_encoder import OmniAudioEncoder
from .config import ModelConfig
from .model import AudioLanguageModel


class Qwen2_5OmniThinker(AudioLanguageModel):
    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        if cfg.audio.n_window <= 0:  # whichever family spec builds it, the tower is chunked
            raise ValueError(f"Qwen2_5OmniThinker's audio tower is chunked: needs audio.n_window > 0, got "
                             f"{cfg.audio.n_window} (a Qwen2-Audio encoder?)")
        super().__init__(cfg, device, dtype)
        self.audio_tower = OmniAudioEncoder(cfg.audio, device, dtype)

    def _encode(self, features: torch.Tensor, num_frames: list[int]) -> torch.Tensor:
        if features.dim() == 3:  # padded batch -> valid frames packed along time
            valid = torch.arange(features.shape[2], device=features.device) < torch.tensor(
                num_frames, device=features.device)[:, None]
            features = features.transpose(1, 2)[valid].T
        return self.audio_tower(features, num_frames)
