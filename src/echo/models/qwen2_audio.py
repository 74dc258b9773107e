"""Qwen2-Audio: Whisper encoder over a 30 s window (padding masked), average pool, linear projector, Qwen2 decoder.

The encoder's positions are absolute over the 30 s window (1500 after the conv stem), and the reference always
runs all 1500 of them with the padding masked out of attention. Masked keys contribute nothing, so echo runs only
the frames an audio can reach: its valid frames plus the two the conv stem reads past the end. Those two must be
the feature extractor's own padding frames for exact parity, so this model takes padded features
``(num_audios, num_mel_bins, T)`` (T up to 3000, as WhisperFeatureExtractor returns them), not packed ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .audio_encoder import EncoderLayer, frames_after_conv, num_audio_tokens
from .config import AudioEncoderConfig, ModelConfig
from .model import AudioLanguageModel


class WhisperEncoder(nn.Module):
    """features ``(batch, num_mel_bins, T)`` + valid frames per row → ``(batch, T2 // 2, d_model)`` pooled,
    LayerNormed states, T2 = ceil(T' / 2) with T' = min(T, max(num_frames) + 2)."""

    def __init__(self, cfg: AudioEncoderConfig, device=None, dtype=None):
        super().__init__()
        self.cfg, kw = cfg, dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, cfg.d_model, kernel_size=3, padding=1, **kw)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=1, **kw)
        self.embed_positions = nn.Embedding(cfg.max_source_positions, cfg.d_model, **kw)
        self.layers = nn.ModuleList(EncoderLayer(cfg, device, dtype) for _ in range(cfg.num_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model, **kw)

    def forward(self, features: torch.Tensor, num_frames: list[int]) -> torch.Tensor:
        max_frames = 2 * self.cfg.max_source_positions
        if features.shape[2] > max_frames:
            raise ValueError(f"Qwen2-Audio encodes at most {max_frames} mel frames (30 s); got {features.shape[2]}")
        # the last valid conv2 output reads conv1 at frame L, which reads frame L+1: nothing later matters
        features = features[:, :, : max(num_frames) + 2].to(self.conv1.weight.dtype)
        x = F.gelu(self.conv1(features))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (batch, T2, d)
        x = x + self.embed_positions.weight[: x.shape[1]]
        lens = frames_after_conv(torch.tensor(num_frames, device=x.device))
        key_mask = torch.arange(x.shape[1], device=x.device) < lens[:, None]
        for layer in self.layers:
            x = layer(x, key_mask)
        x = F.avg_pool1d(x.transpose(1, 2), kernel_size=2, stride=2).transpose(1, 2)
        return self.layer_norm(x)


class Qwen2Audio(AudioLanguageModel):
    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        if cfg.audio.n_window != 0:  # whichever family spec builds it, the encoder is Whisper's full window
            raise ValueError(f"Qwen2Audio's encoder attends over the whole window: needs audio.n_window=0, got "
                             f"{cfg.audio.n_window} (a chunked Qwen2.5-Omni tower?)")
        super().__init__(cfg, device, dtype)
        self.audio_tower = WhisperEncoder(cfg.audio, device, dtype)
        self.projector = self._projector(cfg, device, dtype)

    @staticmethod
    def _projector(cfg: ModelConfig, device, dtype) -> nn.Module:
        """Encoder states -> decoder embeddings (one linear layer here; a subclass may bring its own)."""
        return nn.Linear(cfg.audio.d_model, cfg.decoder.hidden_size, bias=True, device=device, dtype=dtype)

    def _encode(self, features: torch.Tensor, num_frames: list[int]) -> torch.Tensor:
        if features.dim() != 3:
            raise ValueError(f"{type(self).__name__} needs padded features (num_audios, num_mel_bins, T) that "
                             "include the extractor's frames past each audio's end; packed features lack them")
        states = self.projector(self.audio_tower(features, num_frames))
        return torch.cat([s[: num_audio_tokens(n)] for s, n in zip(states, num_frames)])
