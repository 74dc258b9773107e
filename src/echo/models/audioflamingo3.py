"""Audio Flamingo 3: Qwen2-Audio's Whisper encoder (30 s window, average pool) and Qwen2 decoder, with a two-layer
GELU projector between them. Audio longer than 30 s is heard as consecutive 30 s windows, each encoded as its own
clip (``FeatureConfig.max_windows``); the model itself sees each window as one audio."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .qwen2_audio import Qwen2Audio


class MLPProjector(nn.Module):
    """``linear_2(gelu(linear_1(x)))``, biased, as transformers' ``AudioFlamingo3MultiModalProjector``."""

    def __init__(self, in_dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim, device=device, dtype=dtype)
        self.linear_2 = nn.Linear(out_dim, out_dim, device=device, dtype=dtype)

    def forward(self, x):
        return self.linear_2(F.gelu(self.linear_1(x)))


class AudioFlamingo3(Qwen2Audio):
    @staticmethod
    def _projector(cfg: ModelConfig, device, dtype) -> nn.Module:
        return MLPProjector(cfg.audio.d_model, cfg.decoder.hidden_size, device, dtype)
