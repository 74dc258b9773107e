"""A Qwen3-MoE decoder: attention with per-head RMSNorm on q and k, and sparse mixture-of-experts MLPs.

The layer stack, embeddings, final norm and rotary tables are ``decoder.Decoder``'s; only the layer differs.
Expert weights are held per expert (``mlp.experts.{e}.gate_proj`` …, the names transformers saves), so checkpoints
load and save by renaming alone; for inference they are packed once into two stacked tensors, ``(experts,
2 * inter, hidden)`` and ``(experts, hidden, inter)``, that the per-expert parameters then view (no second copy),
and ``ops.moe`` runs the routed tokens grouped by expert on those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..ops.moe import moe_experts, route
from .attention import AttentionBackend
from .config import DecoderConfig
from .decoder import Decoder
from .layers import Linear, RMSNorm, SwiGLU
from .rope import apply_rotary


@dataclass(slots=True)
class MoeDecoderConfig(DecoderConfig):
    """``DecoderConfig`` plus the experts: ``num_experts`` SwiGLU experts of width ``moe_intermediate_size``, each
    token routed to ``num_experts_per_tok`` of them; layer i is sparse unless listed in ``mlp_only_layers`` or
    ``(i + 1) % decoder_sparse_step != 0`` (then a dense SwiGLU of ``intermediate_size``)."""

    num_experts: int = 128
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 768
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    attention_bias: bool = False

    def __post_init__(self):
        DecoderConfig.__post_init__(self)  # zero-argument super() does not work in slotted dataclasses
        for name in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.num_experts_per_tok > self.num_experts:
            raise ConfigError(f"num_experts_per_tok={self.num_experts_per_tok} > num_experts={self.num_experts}")
        self.mlp_only_layers = tuple(int(i) for i in self.mlp_only_layers)

    def is_sparse(self, layer_idx: int) -> bool:
        return layer_idx not in self.mlp_only_layers and (layer_idx + 1) % self.decoder_sparse_step == 0


class Expert(nn.Module):
    """One expert's weights (its SwiGLU runs inside ``ops.moe``)."""

    def __init__(self, hidden: int, inter: int, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=False, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(hidden, inter, **kw)
        self.up_proj = nn.Linear(hidden, inter, **kw)
        self.down_proj = nn.Linear(inter, hidden, **kw)


class SparseMoeBlock(nn.Module):
    """Router (``gate``, no bias) → top-k experts per token → their SwiGLU outputs, weighted and summed."""

    def __init__(self, cfg: MoeDecoderConfig, device=None, dtype=None):
        super().__init__()
        self.top_k, self.normalize = cfg.num_experts_per_tok, cfg.norm_topk_prob
        # a plain nn.Linear: routing must see transformers' exact logits (a near tie picks a different expert)
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False, device=device, dtype=dtype)
        self.experts = nn.ModuleList(Expert(cfg.hidden_size, cfg.moe_intermediate_size, device, dtype)
                                     for _ in range(cfg.num_experts))
        self._stacked: tuple | None = None  # (key, gate_up, down); see stacked_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, ids = route(self.gate(flat), self.top_k, self.normalize)
        gate_up, down = self.stacked_weights()
        return moe_experts(flat, ids, weights, gate_up, down, check_ids=False).view(x.shape)

    def stacked_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gate_up, down)`` stacked over experts. Under autograd: ``torch.stack`` of the parameters (gradients
        reach them). Otherwise views of the parameters' own storage, packing them into one once (each parameter
        then views its slice) unless they already lie that way (a transformers model's fused tensors)."""
        params = [(e.gate_proj.weight, e.up_proj.weight, e.down_proj.weight) for e in self.experts]
        if torch.is_grad_enabled() and any(p.requires_grad for trio in params for p in trio):
            return (torch.stack([torch.cat(trio[:2]) for trio in params]), torch.stack([t[2] for t in params]))
        key = (params[0][0].data_ptr(), params[-1][2].data_ptr(), params[0][0].device, params[0][0].dtype)
        if self._stacked is None or self._stacked[0] != key:
            stacked = _views_of_stack(params) or _pack(params)
            key = (params[0][0].data_ptr(), params[-1][2].data_ptr(), params[0][0].device, params[0][0].dtype)
            self._stacked = (key, *stacked)
        return self._stacked[1], self._stacked[2]


def _views_of_stack(params):
    """The stacked tensors the parameters already view (gate_e, up_e consecutive in one (E, 2I, H) block, down_e
    in one (E, H, I) block), or None."""
    g0, _, d0 = params[0]
    inter, hidden = g0.shape
    n = len(params)
    gate_storage, down_storage = g0.untyped_storage().data_ptr(), d0.untyped_storage().data_ptr()
    gate_base, down_base = g0.storage_offset(), d0.storage_offset()
    for e, (g, u, d) in enumerate(params):
        if not (g.is_contiguous() and u.is_contiguous() and d.is_contiguous()) \
                or g.untyped_storage().data_ptr() != gate_storage or u.untyped_storage().data_ptr() != gate_storage \
                or d.untyped_storage().data_ptr() != down_storage \
                or g.storage_offset() != gate_base + e * 2 * inter * hidden \
                or u.storage_offset() != gate_base + (2 * e + 1) * inter * hidden \
                or d.storage_offset() != down_base + e * hidden * inter:
            return None
    gate_up = g0.new_empty(0).set_(g0.untyped_storage(), gate_base, (n, 2 * inter, hidden),
                                   (2 * inter * hidden, hidden, 1))
    down = d0.new_empty(0).set_(d0.untyped_storage(), down_base, (n, hidden, inter), (hidden * inter, inter, 1))
    return gate_up, down


def _pack(params):
    """Copy every expert into two stacked tensors and point each parameter at its slice (``.data``, so optimizers
    and anything else holding the parameters keep them)."""
    g0, _, d0 = params[0]
    inter, hidden = g0.shape
    with torch.inference_mode(False), torch.no_grad():  # parameters must stay usable by a later backward
        gate_up = torch.empty(len(params), 2 * inter, hidden, device=g0.device, dtype=g0.dtype)
        down = torch.empty(len(params), hidden, inter, device=d0.device, dtype=d0.dtype)
        for e, (g, u, d) in enumerate(params):
            gate_up[e, :inter].copy_(g)
            gate_up[e, inter:].copy_(u)
            down[e].copy_(d)
            g.data, u.data, d.data = gate_up[e, :inter], gate_up[e, inter:], down[e]
    return gate_up, down


def fused_expert_views(params: dict) -> dict:
    """A transformers model's named parameters with each fused ``….experts.gate_up_proj`` (E, 2I, H) and
    ``….experts.down_proj`` (E, H, I) replaced by per-expert views named as transformers saves them
    (``….experts.{e}.gate_proj.weight`` …), so echo's parameters share the transformers model's storage."""
    out = {}
    for name, p in params.items():
        if name.endswith(".experts.gate_up_proj") and p.dim() == 3:
            base, inter = name[: -len("gate_up_proj")], p.shape[1] // 2
            for e in range(p.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = nn.Parameter(p.data[e, :inter], requires_grad=p.requires_grad)
                out[f"{base}{e}.up_proj.weight"] = nn.Parameter(p.data[e, inter:], requires_grad=p.requires_grad)
        elif name.endswith(".experts.down_proj") and p.dim() == 3:
            base = name[: -len("down_proj")]
            for e in range(p.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = nn.Parameter(p.data[e], requires_grad=p.requires_grad)
        else:
            out[name] = p
    return out


class QKNormAttention(nn.Module):
    """Grouped-query attention with RMSNorm over each head's q and k before the rotary positions; q/k/v/o biases
    only with ``attention_bias``."""

    def __init__(self, cfg: MoeDecoderConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.layer_idx, self.num_heads, self.num_kv_heads = layer_idx, cfg.num_heads, cfg.num_kv_heads
        self.head_dim, self.scale = cfg.head_dim, cfg.head_dim ** -0.5
        kw = dict(bias=cfg.attention_bias, device=device, dtype=dtype)
        self.q_proj = Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, **kw)
        self.k_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, **kw)
        self.v_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, **kw)
        self.o_proj = Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, **kw)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, device, dtype)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, device, dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention: AttentionBackend) -> torch.Tensor:
        lead = x.shape[:-1]
        q = apply_rotary(self.q_norm(self.q_proj(x).view(*lead, self.num_heads, self.head_dim)), cos, sin)
        k = apply_rotary(self.k_norm(self.k_proj(x).view(*lead, self.num_kv_heads, self.head_dim)), cos, sin)
        v = self.v_proj(x).view(*lead, self.num_kv_heads, self.head_dim)
        out = attention(self.layer_idx, q, k, v, self.scale)
        return self.o_proj(out.reshape(*lead, self.num_heads * self.head_dim))


class MoeDecoderLayer(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, the MLP sparse or dense."""

    def __init__(self, cfg: MoeDecoderConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.self_attn = QKNormAttention(cfg, layer_idx, device, dtype)
        self.mlp = (SparseMoeBlock(cfg, device, dtype) if cfg.is_sparse(layer_idx)
                    else SwiGLU(cfg.hidden_size, cfg.intermediate_size, device, dtype))
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device, dtype)

    def forward(self, x, cos, sin, attention: AttentionBackend):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attention)
        return x + self.mlp(self.post_attention_layernorm(x))


class MoeDecoder(Decoder):
    layer_class = MoeDecoderLayer
