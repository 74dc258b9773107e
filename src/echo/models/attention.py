"""The decoder's attention interface and its plain implementations.

Every decoder layer projects q/k/v, applies rotary positions, and hands the rest to an ``AttentionBackend``:

    out = backend(layer_idx, q, k, v, scale)
    q: (*lead, num_heads, head_dim)   k, v: (*lead, num_kv_heads, head_dim)   out: like q

``*lead`` is whatever token layout the backend was built for: ``(batch, seq)`` for ``DenseCausalAttention``
(padded batch, training and parity tests) or ``(num_tokens,)`` for flattened tokens of many sequences (the
engine's steps; ``SharedPrefixAttention``, the trainers' sequences that share a prefix). A backend owns whatever
cache it keeps: it stores the new tokens' K/V and attends each query to its own sequence's cached and new keys.
``ContiguousKVCache`` here is the simple reference (one contiguous row per sequence); the engine puts its paged
cache and GPU kernels behind the same call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError


class AttentionBackend(Protocol):
    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 scale: float) -> torch.Tensor: ...


def _sdpa(q, k, v, mask, scale, causal=False):
    """q ``(B, Hq, Tq, D)``, k/v ``(B, Hkv, Tk, D)``; bool ``mask`` broadcastable to ``(B, 1, Tq, Tk)`` (True =
    attend), or None with ``causal`` for plain causal attention over Tq == Tk (lets SDPA pick its fused kernel)."""
    if k.shape[1] != q.shape[1]:
        if _HAS_GQA:  # each kv head serves num_heads // num_kv_heads query heads, without copying K/V
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                                  enable_gqa=True)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)


_HAS_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


class DenseCausalAttention:
    """Causal attention over a padded batch, no cache: ``*lead = (batch, seq)``.

    ``attention_mask`` ``(batch, seq)`` marks real tokens with 1 (left or right padding both work); padded queries
    attend to themselves only, so their (unused) outputs stay finite.
    """

    def __init__(self, attention_mask: torch.Tensor | None = None):
        self.attention_mask = attention_mask
        self._mask: torch.Tensor | None = None

    def mask(self, seq_len: int, device) -> torch.Tensor | None:
        """The bool mask for SDPA, or None when the batch has no padding (plain causal, SDPA's fused path)."""
        if self._mask is None and self.attention_mask is not None and not bool(self.attention_mask.all()):
            causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
            keys = self.attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
            eye = torch.eye(seq_len, dtype=torch.bool, device=device)
            self._mask = (causal & keys) | eye
        return self._mask

    def __call__(self, layer_idx, q, k, v, scale):
        mask = self.mask(q.shape[1], q.device)
        out = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, scale, causal=mask is None)
        return out.transpose(1, 2)


def _padded(starts: torch.Tensor, lengths: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``(segments, width)`` of each segment's tokens (0 past its length) and where they are valid."""
    valid = torch.arange(width, device=starts.device) < lengths[:, None]
    return torch.where(valid, starts[:, None] + torch.arange(width, device=starts.device), 0), valid


class SharedPrefixAttention:
    """Flattened tokens of sequences that continue shared prefixes, no cache: ``*lead = (num_tokens,)``. The
    trainers' layout: GRPO's samples of one prompt all continue that prompt.

    The tokens are segments laid out back to back, segment i the next ``lengths[i]`` tokens. A root
    (``parents[i]`` None) attends causally within itself; a continuation attends to the whole of its root (an
    earlier segment) and causally within itself, its positions running on from the root's end. So each
    continuation sees what it would see appended to its root alone, while the root's tokens go through the layers
    once. Two SDPA calls a layer: the roots padded to the longest, and the continuations padded to the longest with
    their root's keys in front (the cost of attending each one separately, never a square over the whole pack).
    """

    def __init__(self, lengths: Sequence[int], parents: Sequence[int | None], device=None):
        if len(lengths) != len(parents) or any(n < 0 for n in lengths):
            raise ValueError(f"lengths {list(lengths)} and parents {list(parents)}: one length >= 0 per segment")
        roots = [i for i, p in enumerate(parents) if p is None]
        slot = {r: j for j, r in enumerate(roots)}
        conts = [i for i, p in enumerate(parents) if p is not None]
        if any(parents[i] not in slot or parents[i] >= i for i in conts):
            raise ValueError(f"parents {list(parents)}: a continuation's parent must be an earlier root")
        n = torch.tensor(list(lengths), dtype=torch.long, device=device)
        starts = torch.cumsum(n, 0) - n
        self.num_tokens = int(n.sum())
        root_len, cont_len = n[roots], n[conts]
        self.root_width = int(root_len.max()) if roots else 0
        self.cont_width = int(cont_len.max()) if conts else 0
        self.root_index, root_valid = _padded(starts[roots], root_len, self.root_width)
        self.cont_index, cont_valid = _padded(starts[conts], cont_len, self.cont_width)
        self.parent = torch.tensor([slot[parents[i]] for i in conts], dtype=torch.long, device=device)
        ar_root = torch.arange(self.root_width, device=device).expand_as(root_valid)
        ar_cont = torch.arange(self.cont_width, device=device).expand_as(cont_valid)
        self.positions = torch.zeros(self.num_tokens, dtype=torch.long, device=device)
        self.positions[self.root_index[root_valid]] = ar_root[root_valid]
        self.positions[self.cont_index[cont_valid]] = (root_len[self.parent][:, None] + ar_cont)[cont_valid]
        # each flat token's place in the two passes' outputs, concatenated
        self.slot = torch.zeros(self.num_tokens, dtype=torch.long, device=device)
        self.slot[self.root_index[root_valid]] = root_valid.flatten().nonzero()[:, 0]
        self.slot[self.cont_index[cont_valid]] = root_valid.numel() + cont_valid.flatten().nonzero()[:, 0]
        causal = torch.ones(self.root_width, self.root_width, dtype=torch.bool, device=device).tril()
        # padded queries see themselves, so their (unused) outputs stay finite; equal roots: SDPA's causal path
        self.root_mask = None if bool(root_valid.all()) else \
            ((causal & root_valid[:, None, :]) | torch.eye(self.root_width, dtype=torch.bool, device=device))[:, None]
        own = torch.ones(self.cont_width, self.cont_width, dtype=torch.bool, device=device).tril()
        prefix = root_valid[self.parent][:, None, :].expand(-1, self.cont_width, -1)
        self.cont_mask = torch.cat([prefix, own.expand(len(conts), -1, -1)], dim=-1)[:, None]

    def __call__(self, layer_idx, q, k, v, scale):
        outs = []
        kr, vr = k[self.root_index], v[self.root_index]  # (roots, root_width, kv_heads, head_dim)
        if self.root_width:
            o = _sdpa(q[self.root_index].transpose(1, 2), kr.transpose(1, 2), vr.transpose(1, 2), self.root_mask,
                      scale, causal=self.root_mask is None)
            outs.append(o.transpose(1, 2).flatten(0, 1))
        if self.cont_width:
            kc = torch.cat([kr[self.parent], k[self.cont_index]], dim=1)
            vc = torch.cat([vr[self.parent], v[self.cont_index]], dim=1)
            o = _sdpa(q[self.cont_index].transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), self.cont_mask,
                      scale)
            outs.append(o.transpose(1, 2).flatten(0, 1))
        return torch.cat(outs)[self.slot] if outs else q.new_zeros(q.shape)


@dataclass(slots=True)
class FlatStep:
    """Where the flattened tokens of one step belong: sequence ``i`` contributes ``query_lens[i]`` consecutive
    tokens (in order), stored after the ``context_lens[i]`` tokens already cached in row ``rows[i]``."""

    rows: Sequence[int]
    query_lens: Sequence[int]
    context_lens: Sequence[int]

    def __post_init__(self):
        if not len(self.rows) == len(self.query_lens) == len(self.context_lens):
            raise ValueError(f"rows, query_lens, context_lens differ in length: {len(self.rows)}, "
                             f"{len(self.query_lens)}, {len(self.context_lens)}")
        if len(set(self.rows)) != len(self.rows):
            raise ValueError(f"a row appears twice in one step: {list(self.rows)}")
        if any(n <= 0 for n in self.query_lens) or any(c < 0 for c in self.context_lens):
            raise ValueError(f"query_lens must be > 0 and context_lens >= 0, got {list(self.query_lens)}, "
                             f"{list(self.context_lens)}")

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    def positions(self, device=None) -> torch.Tensor:
        """``(num_tokens,)`` int64 positions ``context_len + 0 … query_len-1`` of each sequence's new tokens."""
        return torch.cat([torch.arange(c, c + n, device=device) for c, n in zip(self.context_lens, self.query_lens)])

    def last_token_indices(self) -> list[int]:
        """Index into the flattened tokens of each sequence's last new token (whose logits sample the next one)."""
        ends, total = [], 0
        for n in self.query_lens:
            total += n
            ends.append(total - 1)
        return ends


class ContiguousKVCache:
    """Reference KV cache: K and V of each layer in one ``(rows, max_len, num_kv_heads, head_dim)`` tensor.

    ``cache.step(FlatStep(...))`` returns the backend for one forward over flattened tokens (``*lead =
    (num_tokens,)``): it writes the new K/V at ``context_len …`` of each row and attends causally within the row.
    Prefill, decode and a spliced chunk of audio tokens are all the same call.
    """

    def __init__(self, num_layers: int, rows: int, max_len: int, num_kv_heads: int, head_dim: int,
                 dtype=torch.float32, device=None):
        shape = (num_layers, rows, max_len, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def step(self, step: FlatStep) -> "_ContiguousStep":
        for row, n, c in zip(step.rows, step.query_lens, step.context_lens):
            if not 0 <= row < self.k.shape[1]:
                raise ValueError(f"row {row} outside the cache's {self.k.shape[1]} rows")
            if c + n > self.max_len:
                raise ConfigError(f"row {row} needs {c + n} positions; the cache holds {self.max_len}")
        return _ContiguousStep(self, step)


class _ContiguousStep:
    def __init__(self, cache: ContiguousKVCache, step: FlatStep):
        self.cache, self.step = cache, step

    def __call__(self, layer_idx, q, k, v, scale):
        out = torch.empty_like(q)
        start = 0
        for row, n, c in zip(self.step.rows, self.step.query_lens, self.step.context_lens):
            ks, vs = self.cache.k[layer_idx, row], self.cache.v[layer_idx, row]
            ks[c:c + n] = k[start:start + n]
            vs[c:c + n] = v[start:start + n]
            # query i (absolute position c+i) sees keys 0 … c+i; a first chunk (c == 0) is plain causal
            mask = None if c == 0 else torch.ones(n, c + n, dtype=torch.bool, device=q.device).tril(diagonal=c)
            o = _sdpa(q[start:start + n].transpose(0, 1)[None], ks[:c + n].transpose(0, 1)[None],
                      vs[:c + n].transpose(0, 1)[None], mask, scale, causal=c == 0)
            out[start:start + n] = o[0].transpose(0, 1)
            start += n
        return out
