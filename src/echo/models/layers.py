"""Decoder building blocks shared by the Qwen2.5-Omni thinker and Qwen2-Audio: RMSNorm, SwiGLU, attention.

Parameter names follow the Hugging Face checkpoints (``q_proj``, ``gate_proj``, ``input_layernorm`` …) so the
loader maps tensors by renaming prefixes only. Attention itself goes through an ``AttentionBackend``
(see attention.py); a layer works on any token layout ``(*lead, hidden)`` the backend understands.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import linear as _linear
from .attention import AttentionBackend
from .config import DecoderConfig
from .rope import apply_rotary


class Linear(nn.Linear):
    """``nn.Linear`` whose few-row inference calls (a decode step's tokens, float32 on the CPU) run echo's small-M
    kernel (ops/linear.py), which streams the weights once; everything else, training included, is ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _linear.native_ok(x, self.weight):
            return _linear.native_linear(x, self.weight, self.bias, _linear.kernel_threads())
        return F.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension, normalised in float32 as the reference does."""

    def __init__(self, hidden_size: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=False, device=device, dtype=dtype)
        self.gate_proj = Linear(hidden_size, intermediate_size, **kw)
        self.up_proj = Linear(hidden_size, intermediate_size, **kw)
        self.down_proj = Linear(intermediate_size, hidden_size, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderAttention(nn.Module):
    """Grouped-query self-attention: biased q/k/v projections, rotary positions, unbiased output projection."""

    def __init__(self, cfg: DecoderConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.layer_idx, self.num_heads, self.num_kv_heads = layer_idx, cfg.num_heads, cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim ** -0.5
        kw = dict(device=device, dtype=dtype)
        self.q_proj = Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=True, **kw)
        self.k_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=True, **kw)
        self.v_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=True, **kw)
        self.o_proj = Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False, **kw)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention: AttentionBackend) -> torch.Tensor:
        """x ``(*lead, hidden)``; cos/sin ``(*lead, head_dim)``; returns ``(*lead, hidden)``."""
        lead = x.shape[:-1]
        q = apply_rotary(self.q_proj(x).view(*lead, self.num_heads, self.head_dim), cos, sin)
        k = apply_rotary(self.k_proj(x).view(*lead, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(*lead, self.num_kv_heads, self.head_dim)
        out = attention(self.layer_idx, q, k, v, self.scale)
        return self.o_proj(out.reshape(*lead, self.num_heads * self.head_dim))


class DecoderLayer(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: DecoderConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.self_attn = DecoderAttention(cfg, layer_idx, device, dtype)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, device, dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device, dtype)

    def forward(self, x, cos, sin, attention: AttentionBackend):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attention)
        return x + self.mlp(self.post_attention_layernorm(x))
