"""Paged K/V tensors for every decoder layer, preallocated, and the attention backend that uses them.

One tensor pair per layer, shape (num_blocks, block_size, num_kv_heads, head_dim) (the layout store_kv and
paged_attention take). ``PagedKVCache.for_batch(step_batch)`` (or ``step(...)`` from plain lists) returns the
``AttentionBackend`` for one flattened forward
(echo.models.attention): each layer stores its new tokens' K/V by slot mapping (ops.store_kv, Triton on GPU) and
attends each sequence's new queries over its pages (ops.paged_attention). Prefill chunks, decode tokens and
spliced re-listen spans are all the same call. Which blocks a sequence owns is the BlockManager's business.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError
from ..ops.paged_attention import paged_attention, plan_paged_attention
from ..ops.store_kv import store_kv


class PagedKVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size

    @classmethod
    def bytes_per_block(cls, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()

    @classmethod
    def from_budget(cls, budget_bytes: int, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> "PagedKVCache":
        """As many blocks as ``budget_bytes`` holds (K and V of every layer)."""
        per_block = cls.bytes_per_block(num_layers, block_size, num_kv_heads, head_dim, dtype)
        num_blocks = budget_bytes // per_block
        if num_blocks < 1:
            raise ConfigError(f"a KV budget of {budget_bytes} bytes holds no block ({per_block} bytes each)")
        return cls(num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype, device)

    @classmethod
    def for_engine(cls, decoder, config, dtype: torch.dtype, device: torch.device | str) -> "PagedKVCache":
        """The cache an engine of ``config`` (EngineConfig) needs for a decoder (DecoderConfig): ``num_blocks``
        blocks, or as many as ``kv_cache_bytes`` holds when that is None."""
        shape = (decoder.num_layers, config.block_size, decoder.num_kv_heads, decoder.head_dim)
        if config.num_blocks is not None:
            return cls(shape[0], config.num_blocks, *shape[1:], dtype, device)
        return cls.from_budget(config.kv_cache_bytes, *shape, dtype, device)

    @property
    def num_blocks(self) -> int:
        return self.k.shape[1]

    def copy_blocks(self, copies: Sequence[tuple[int, int]]) -> None:
        """Apply the BlockManager's copy-on-write pairs (src_block -> dst_block) in every layer."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.k.device)
        dst = torch.tensor([d for _, d in copies], device=self.k.device)
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]

    def step(self, block_tables: Sequence[Sequence[int]], query_lens: Sequence[int], context_lens: Sequence[int],
             slot_mapping: torch.Tensor) -> "PagedStep":
        """The attention backend of one forward: sequence i's ``query_lens[i]`` new tokens (consecutive in the
        flattened batch) go to ``slot_mapping`` and sit after its ``context_lens[i]`` cached tokens."""
        plan = plan_paged_attention(block_tables, query_lens, context_lens, self.block_size, self.k.device)
        return PagedStep(self, block_tables, query_lens, context_lens, slot_mapping.to(self.k.device), plan)

    def for_batch(self, batch) -> "PagedStep":
        """The attention backend of an engine step (engine/step_batch.StepBatch: its slot mapping and plan). The
        batch checked its slots once on the host, so the layers' ``store_kv`` calls do not (on a GPU each check
        is a host sync)."""
        return PagedStep(self, batch.block_tables, batch.query_lens, batch.context_lens, batch.slot_mapping,
                         batch.plan, check_slots=False)


class PagedStep:
    def __init__(self, cache: PagedKVCache, block_tables, query_lens, context_lens, slot_mapping, plan,
                 check_slots: bool = True):
        self.cache, self.block_tables, self.check_slots = cache, block_tables, check_slots
        self.query_lens, self.context_lens, self.slot_mapping = query_lens, context_lens, slot_mapping
        self.plan = plan  # the gather indices / block-table tensor depend on the step only: used by every layer

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
        k_cache, v_cache = self.cache.k[layer_idx], self.cache.v[layer_idx]
        store_kv(k.to(k_cache.dtype), v.to(v_cache.dtype), k_cache, v_cache, self.slot_mapping,
                 check_slots=self.check_slots)
        return paged_attention(q, k_cache, v_cache, self.block_tables, self.query_lens, self.context_lens, scale,
                               plan=self.plan)
