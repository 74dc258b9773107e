"""``StepBatch``: one step's flattened batch, built once from the scheduled chunks and read by everything after it.

The embedding reads ``ids`` and the audio row blocks (copied into place by the native ``gather_rows`` op straight
from the encoder cache's entries), the KV writer ``slot_mapping``, every layer's attention ``plan`` (per-sequence
key slots for the torch path; one padded int32 block-table tensor on the device for the Triton path), and the
sampler ``sample_rows``. Nothing here is rebuilt per layer, and no work grows with a sequence's length: a chunk
costs its own tokens plus one look at each of its sequence's audio runs.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from ..ops.paged_attention import AttentionPlan, plan_paged_attention
from .block_manager import BlockManager


@dataclasses.dataclass(slots=True)
class StepBatch:
    ids: torch.Tensor            # (num_tokens,) every chunk's tokens back to back
    positions: torch.Tensor      # (num_tokens,) each token's position in its sequence
    slot_mapping: torch.Tensor   # (num_tokens,) the KV-cache slot each token's K/V goes to
    block_tables: list[list[int]]
    query_lens: list[int]        # tokens each chunk runs
    context_lens: list[int]      # tokens already cached before each chunk
    sample_rows: list[int]       # the flattened row of the last token of each chunk that ends its sequence
    audio_sources: list[torch.Tensor]  # blocks of audio rows (views of encoder-cache entries) ...
    audio_dst: list[int]               # ... and the flattened row each block starts at
    plan: AttentionPlan

    @classmethod
    def build(cls, chunks: Sequence, bm: BlockManager, device) -> "StepBatch":
        """The batch of ``chunks`` (scheduler.Chunk: tokens [start, end) of a sequence whose audio rows are
        filled in)."""
        ids, positions, slots, tables, q_lens, ctx, rows, sources, dst = [], [], [], [], [], [], [], [], []
        total = 0
        for c in chunks:
            seq = c.seq
            ids.extend(seq.token_ids[c.start: c.end])
            positions.extend(range(c.start, c.end))
            slots.extend(bm.slots(seq.block_table, c.start, c.end))
            for run, lo, hi, at in seq.audio_in(c.start, c.end):
                sources.append(run.rows[lo:hi])
                dst.append(total + at - c.start)
            tables.append(seq.block_table)
            q_lens.append(c.end - c.start)
            ctx.append(c.start)
            total += c.end - c.start
            if c.samples:
                rows.append(total - 1)
        if slots and max(slots) >= bm.num_blocks * bm.block_size:  # checked once here, not in every layer
            raise RuntimeError(f"KV slot {max(slots)} is past the cache's {bm.num_blocks * bm.block_size} slots")
        plan = plan_paged_attention(tables, q_lens, ctx, bm.block_size, device)
        return cls(torch.tensor(ids, device=device), torch.tensor(positions, device=device),
                   torch.tensor(slots, device=device), tables, q_lens, ctx, rows, sources, dst, plan)
