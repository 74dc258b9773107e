"""Rotary position embeddings (the decoder's only position signal).

Qwen2.5-Omni's thinker uses M-RoPE: the rotary frequencies are split into three sections driven by temporal,
height and width position streams. For audio-and-text prompts the three streams are identical (one position stream through text and audio), so
M-RoPE reduces exactly to ordinary 1-D RoPE over one position stream ``0, 1, 2, …`` that runs through text,
audio and spliced spans alike. Qwen2-Audio uses ordinary RoPE. Both therefore share this module.
"""

from __future__ import annotations

import torch


def inverse_frequencies(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """``(head_dim // 2,)`` float32 inverse frequencies, computed as transformers does (so fp32 logits match)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos and sin tables for integer ``positions`` of any shape ``(*P)`` → each ``(*P, head_dim)`` in ``dtype``.

    Computed in float32 and cast, like the reference, so bf16 runs round the same way.
    """
    inv_freq = inverse_frequencies(head_dim, theta, positions.device)
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(*P, heads, head_dim)`` by tables of shape ``(*P, head_dim)`` (half-split layout)."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
