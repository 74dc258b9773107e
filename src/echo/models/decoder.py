"""The Qwen2-style decoder stack (token embedding, layers, final norm) shared by both architectures."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import AttentionBackend
from .config import DecoderConfig
from .layers import DecoderLayer, RMSNorm
from .rope import rotary_cos_sin


class Decoder(nn.Module):
    """Embeddings in, final-normed hidden states out; the LM head lives on the model that owns this stack."""

    layer_class = DecoderLayer  # built as layer_class(cfg, layer_idx, device, dtype); models/moe.py swaps it

    def __init__(self, cfg: DecoderConfig, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)
        self.layers = nn.ModuleList(self.layer_class(cfg, i, device, dtype) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device, dtype)
        self.gradient_checkpointing = False  # training only: recompute each layer's activations in backward

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor,
                attention: AttentionBackend) -> torch.Tensor:
        """inputs_embeds ``(*lead, hidden)``; positions ``(*lead)`` int64 (one stream, see rope.py)."""
        cos, sin = rotary_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, inputs_embeds.dtype)
        x = inputs_embeds
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, cos, sin, attention, use_reentrant=False)
            else:
                x = layer(x, cos, sin, attention)
        return self.norm(x)
