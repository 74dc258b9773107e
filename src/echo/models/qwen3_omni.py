"""Qwen3-Omni's thinker (audio + text; the vision tower is not built): windowed audio tower → Qwen3-MoE decoder.

The audio tower cuts each audio into chunks of ``2 * n_window`` mel frames (1 s), runs a 2-D convolution front end
over (mel, time) of each chunk (three stride-2 3x3 convs, so a full chunk gives 13 positions), projects the
flattened channels to ``d_model``, adds sinusoidal positions restarting in every chunk, and attends within windows
of ``n_window_infer // (2 * n_window)`` chunks (8 s in the released model). Audio tokens of ``L`` frames:
``13 * (L // 100) + ceil(ceil(ceil((L % 100) / 2) / 2) / 2)`` (``num_audio_tokens`` below), about 13 per second.

Chunk padding: transformers pads every chunk of a batch to the batch's longest chunk, and the padded convolution
outputs reach the last valid positions of a shorter (tail) chunk, so its embeddings depend on what else is in the
batch. echo pads every chunk to the full ``2 * n_window`` frames, as transformers does whenever the batch holds an
audio of at least one chunk (a prompt's audio and its re-listened spans always do, when the prompt's audio is
1 s or longer): the embeddings of a span are then a function of the span alone, which the engine's encoder cache
relies on. Positions run ``0, 1, 2, …`` through text and audio: transformers' M-RoPE index gives audio-and-text
prompts three equal streams, which makes its interleaved M-RoPE ordinary 1-D RoPE (rope.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .audio_encoder import EncoderLayer, sinusoid_positions
from .config import AudioEncoderConfig, ModelConfig
from .model import AudioLanguageModel
from .moe import MoeDecoder, MoeDecoderConfig, fused_expert_views
from .thinker import Qwen2_5OmniThinker


@dataclass(slots=True)
class Qwen3AudioConfig(AudioEncoderConfig):
    """``AudioEncoderConfig`` plus the conv front end's channels and the attention window (mel frames)."""

    n_window: int = 50
    downsample_hidden_size: int = 480
    n_window_infer: int = 800

    def __post_init__(self):
        AudioEncoderConfig.__post_init__(self)  # zero-argument super() does not work in slotted dataclasses
        if self.n_window <= 0 or self.downsample_hidden_size <= 0:
            raise ConfigError(f"audio.n_window and audio.downsample_hidden_size must be > 0, got {self.n_window}, "
                              f"{self.downsample_hidden_size}")
        if self.n_window_infer < 2 * self.n_window or self.n_window_infer % (2 * self.n_window):
            raise ConfigError(f"audio.n_window_infer={self.n_window_infer} must be a multiple of the chunk "
                              f"(2 * n_window = {2 * self.n_window} frames)")


def _halve(n):
    """Length after one stride-2, kernel-3, padding-1 convolution: ``ceil(n / 2)``."""
    return (n - 1) // 2 + 1


def chunk_tokens(num_frames: int) -> int:
    """Positions the conv front end leaves of a chunk of ``num_frames`` (> 0) mel frames."""
    return _halve(_halve(_halve(num_frames)))


def num_audio_tokens(num_frames: int, n_window: int = 50) -> int:
    """Audio tokens of ``num_frames`` mel frames (transformers' ``_get_feat_extract_output_lengths``)."""
    chunk = 2 * n_window
    tail = num_frames % chunk
    return chunk_tokens(chunk) * (num_frames // chunk) + (chunk_tokens(tail) if tail else 0)


class Qwen3EncoderLayer(EncoderLayer):
    """Whisper-layout block whose k_proj has a bias."""

    def __init__(self, cfg: AudioEncoderConfig, device=None, dtype=None):
        super().__init__(cfg, device, dtype)
        self.self_attn.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=True, device=device, dtype=dtype)


class Qwen3OmniAudioEncoder(nn.Module):
    """``forward(features, num_frames)``: packed valid frames ``(num_mel_bins, sum(num_frames))`` →
    ``(sum(num_audio_tokens(L)), output_dim)`` embeddings, audio by audio."""

    conv_batch = 500  # chunks per convolution call (bounds the front end's activation memory, as transformers)

    def __init__(self, cfg: Qwen3AudioConfig, device=None, dtype=None):
        super().__init__()
        self.cfg, kw = cfg, dict(device=device, dtype=dtype)
        ch = cfg.downsample_hidden_size
        self.conv2d1 = nn.Conv2d(1, ch, 3, 2, padding=1, **kw)
        self.conv2d2 = nn.Conv2d(ch, ch, 3, 2, padding=1, **kw)
        self.conv2d3 = nn.Conv2d(ch, ch, 3, 2, padding=1, **kw)
        self.conv_out = nn.Linear(ch * _halve(_halve(_halve(cfg.num_mel_bins))), cfg.d_model, bias=False, **kw)
        self.layers = nn.ModuleList(Qwen3EncoderLayer(cfg, device, dtype) for _ in range(cfg.num_layers))
        self.ln_post = nn.LayerNorm(cfg.d_model, **kw)
        self.proj1 = nn.Linear(cfg.d_model, cfg.d_model, **kw)
        self.proj2 = nn.Linear(cfg.d_model, cfg.output_dim, **kw)

    def forward(self, features: torch.Tensor, num_frames: list[int]) -> torch.Tensor:
        chunk = 2 * self.cfg.n_window
        chunk_lens = [min(chunk, n - s) for n in num_frames for s in range(0, n, chunk)]
        padded = features.new_zeros(len(chunk_lens), chunk, features.shape[0], dtype=self.conv2d1.weight.dtype)
        for i, piece in enumerate(features.T.split(chunk_lens, dim=0)):  # every chunk padded to the full chunk
            padded[i, : piece.shape[0]] = piece
        x = torch.cat([self._front(part) for part in padded.transpose(1, 2)[:, None].split(self.conv_batch)])
        x = x + sinusoid_positions(x.shape[1], self.cfg.d_model, x.device).to(x.dtype)
        valid = torch.arange(x.shape[1], device=x.device) < torch.tensor(
            [chunk_tokens(n) for n in chunk_lens], device=x.device)[:, None]
        x = x[valid]  # (sum of tokens, d_model), audio by audio in time order
        window = chunk_tokens(chunk) * (self.cfg.n_window_infer // chunk)
        lens = [min(window, n - s) for n in (num_audio_tokens(f, self.cfg.n_window) for f in num_frames)
                for s in range(0, n, window)]
        windows = nn.utils.rnn.pad_sequence(x.split(lens), batch_first=True)  # (W, <=window, d)
        key_mask = torch.arange(windows.shape[1], device=x.device) < torch.tensor(lens, device=x.device)[:, None]
        for layer in self.layers:
            windows = layer(windows, key_mask)
        x = self.ln_post(windows[key_mask])
        return self.proj2(F.gelu(self.proj1(x)))

    def _front(self, x: torch.Tensor) -> torch.Tensor:
        """(chunks, 1, mels, frames) → (chunks, positions, d_model)."""
        x = F.gelu(self.conv2d3(F.gelu(self.conv2d2(F.gelu(self.conv2d1(x))))))
        b, c, f, t = x.shape
        return self.conv_out(x.permute(0, 3, 1, 2).reshape(b, t, c * f))


class Qwen3OmniMoeThinker(AudioLanguageModel):
    decoder_class = MoeDecoder

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        if not isinstance(cfg.audio, Qwen3AudioConfig) or not isinstance(cfg.decoder, MoeDecoderConfig):
            raise ValueError("Qwen3OmniMoeThinker needs a Qwen3AudioConfig and a MoeDecoderConfig (family "
                             f"'qwen3_omni_moe'), got {type(cfg.audio).__name__} and {type(cfg.decoder).__name__}")
        super().__init__(cfg, device, dtype)
        self.audio_tower = Qwen3OmniAudioEncoder(cfg.audio, device, dtype)

    def num_audio_tokens(self, num_frames: int) -> int:
        return num_audio_tokens(num_frames, self.config.audio.n_window)

    _encode = Qwen2_5OmniThinker._encode  # padded features packed along time, then this model's tower

    @staticmethod
    def transformers_params(params: dict) -> dict:
        """A transformers model's parameters as echo maps them: fused experts as per-expert views."""
        return fused_expert_views(params)
