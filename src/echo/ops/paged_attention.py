"""paged_attention: attention of each sequence's new query tokens over its paged K/V (cached + just stored).

Layout (engine/block_manager.py's vocabulary): q (num_tokens, num_heads, head_dim) holds the step's tokens of all sequences back
to back, sequence i owning ``query_lens[i]`` consecutive rows at positions ``context_lens[i] ...``; its keys and
values are the first ``context_lens[i] + query_lens[i]`` slots of its ``block_tables[i]`` in k_cache/v_cache
(num_blocks, block_size, num_kv_heads, head_dim), the new tokens' K/V already stored by ``store_kv``. Query j of
sequence i sees keys 0 .. context_lens[i] + j (causal). Grouped-query heads are handled by repetition.

Backends: ``torch`` (reference: gather the pages, then SDPA; runs anywhere, any block layout), ``triton``
(echo.triton_kernels.paged_attention: single-token queries read their pages in place with an online softmax;
multi-token chunks still go through SDPA on gathered pages, which uses the fused kernels on a GPU) and ``cpu``
(echo._C: float32/bfloat16 single-token queries of all sequences in one call per layer, read in place on the
thread pool; multi-token chunks and other dtypes as ``torch``). Kernels of our own rather than a library: the
cache layout and the re-listen splice (any chunk length at any context) are ours, and flashinfer/vLLM wheels are
not installable here.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import _backend
from .linear import kernel_threads, torch_threads_back

BACKENDS = ("triton", "cpu", "torch")
MAX_GROUP = 16  # csrc/attention_cpu_impl.h: query heads per K/V head
MAX_HEAD_DIM = 256


def _slots(table: Sequence[int], n_k: int, block_size: int, device) -> torch.Tensor | slice:
    """Cache slots of a sequence's first n_k positions: a slice when its blocks are consecutive (the block
    manager places a sequence's blocks in a row when it can), so the keys are read in place without a gather."""
    used = list(table[: -(-n_k // block_size)])
    if used[-1] - used[0] == len(used) - 1 and used == list(range(used[0], used[0] + len(used))):
        return slice(used[0] * block_size, used[0] * block_size + n_k)
    return torch.from_numpy(_slot_index(used, n_k, block_size)).to(device)


def _slot_index(table: Sequence[int], n_k: int, block_size: int) -> np.ndarray:
    """Cache slots of a sequence's first n_k positions as an int64 array."""
    blocks = np.asarray(table[: -(-n_k // block_size)], dtype=np.int64)
    return (blocks[:, None] * block_size + np.arange(block_size)).ravel()[:n_k]


@dataclasses.dataclass(slots=True)
class DecodePlan:
    """The Triton path's single-token queries: their rows in q, their block tables as one padded int32 tensor on
    the device, and their key counts; built once per step (not once per layer)."""

    rows: torch.Tensor
    tables: torch.Tensor
    n_keys: torch.Tensor


@dataclasses.dataclass(slots=True)
class CpuDecodePlan:
    """The C++ path's single-token queries: their rows in q, and every key's cache slot, sequence after sequence
    (``key_offset`` delimits them); int64, built once per step. ``seqs``: the same queries as entries of
    ``AttentionPlan.seqs``, for the calls the kernel does not take."""

    q_row: torch.Tensor
    key_offset: torch.Tensor
    slots: torch.Tensor
    seqs: list


@dataclasses.dataclass(slots=True)
class AttentionPlan:
    """Index work that depends only on the step, not the layer: built once per step, reused by every layer.
    ``backend`` is the one chosen for the step; ``seqs`` has one entry per sequence the torch path attends
    (first query row, query count, key slots (index or slice), mask or None, causal) and ``decode`` the
    single-token queries the Triton kernel takes and ``cpu_decode`` those the C++ kernel takes (those are then
    absent from ``seqs``). (Batching the torch path's single-token queries into one padded SDPA call measured
    slower on the CPU than its loop: the padded gather costs more than the calls it saves.)"""

    seqs: list[tuple[int, int, torch.Tensor | slice, torch.Tensor | None, bool]]
    backend: str = "torch"
    decode: DecodePlan | None = None
    cpu_decode: CpuDecodePlan | None = None


def plan_paged_attention(block_tables: Sequence[Sequence[int]], query_lens: Sequence[int],
                         context_lens: Sequence[int], block_size: int, device, backend: str | None = None
                         ) -> AttentionPlan:
    """The step's plan for ``backend`` (None/"auto": as ``paged_attention`` would choose on ``device``). Raises
    ValueError on lengths that differ or a block table too short for its sequence."""
    if not len(block_tables) == len(query_lens) == len(context_lens):
        raise ValueError("paged_attention: block_tables, query_lens and context_lens differ in length")
    for i, (table, n_q, n_ctx) in enumerate(zip(block_tables, query_lens, context_lens)):
        if len(table) * block_size < n_ctx + n_q:
            raise ValueError(f"paged_attention: sequence {i} has {n_ctx + n_q} tokens but {len(table)} blocks")
    device = torch.device(device)
    chosen = _backend.resolve("paged_attention", BACKENDS, device, backend)
    seqs, decode, start = [], [], 0
    for table, n_q, n_ctx in zip(block_tables, query_lens, context_lens):
        n_k = n_ctx + n_q
        if chosen in ("triton", "cpu") and n_q == 1:
            decode.append((start, table, n_k))
            start += n_q
            continue
        mask, causal = None, False
        if n_q > 1 and n_ctx == 0:  # a whole prompt: plain causal
            causal = True
        elif n_q > 1:  # query j (position n_ctx + j) sees keys 0 .. n_ctx + j; a decode token sees every key
            pos = torch.arange(n_k, device=device)
            mask = pos[None, :] <= (n_ctx + torch.arange(n_q, device=device))[:, None]
        seqs.append((start, n_q, _slots(table, n_k, block_size, device), mask, causal))
        start += n_q
    plan = AttentionPlan(seqs, chosen)
    if decode and chosen == "cpu":
        plan.cpu_decode = CpuDecodePlan(torch.tensor([r for r, _, _ in decode], dtype=torch.int64),
                                        torch.from_numpy(np.cumsum([0] + [n for _, _, n in decode])),
                                        torch.from_numpy(np.concatenate([_slot_index(t, n, block_size)
                                                                         for _, t, n in decode])),
                                        [(r, 1, _slots(t, n, block_size, device), None, False) for r, t, n in decode])
    elif decode:
        width = max(len(t) for _, t, _ in decode)
        tables = torch.zeros(len(decode), width, dtype=torch.int32)
        for row, (_, table, _) in enumerate(decode):
            tables[row, : len(table)] = torch.as_tensor(list(table), dtype=torch.int32)
        plan.decode = DecodePlan(torch.tensor([r for r, _, _ in decode], device=device), tables.to(device),
                                 torch.tensor([n for _, _, n in decode], dtype=torch.int32, device=device))
    return plan


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_tables: Sequence[Sequence[int]], query_lens: Sequence[int],
                        context_lens: Sequence[int], scale: float, plan: AttentionPlan | None = None
                        ) -> torch.Tensor:
    """Plain-PyTorch reference of :func:`paged_attention`: gather each sequence's pages, then SDPA (4-D operands
    and ``enable_gqa`` keep SDPA on its fused kernels and read each K/V head once for its query-head group)."""
    if plan is None or plan.backend != "torch":
        plan = plan_paged_attention(block_tables, query_lens, context_lens, k_cache.shape[1], q.device, "torch")
    return _attend_torch(q, k_cache, v_cache, plan.seqs, scale, torch.empty_like(q))


def _attend_torch(q, k_cache, v_cache, seqs, scale, out):
    """The plan's per-sequence attention (gather the pages, then SDPA) into ``out``."""
    kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    gqa = q.shape[1] != kv_heads
    flat_k, flat_v = k_cache.view(-1, kv_heads, head_dim), v_cache.view(-1, kv_heads, head_dim)
    for start, n_q, slots, mask, causal in seqs:
        if isinstance(slots, slice):
            k, v = flat_k[slots], flat_v[slots]
        else:
            k, v = flat_k.index_select(0, slots), flat_v.index_select(0, slots)
        k = k.transpose(0, 1).to(q.dtype)  # (kv_heads, n_k, head_dim)
        v = v.transpose(0, 1).to(q.dtype)
        if n_q == 1 and q.device.type == "cpu":
            # One query on the CPU: two small batched matmuls over each K/V head's query group beat SDPA's kernels,
            # built for many queries (1.4x in float32; 15x in bf16, whose flash kernel at one query costs more
            # than the GEMMs of the whole layer). The softmax runs in float32, as transformers' eager attention.
            # bf16/fp16 K and V are multiplied as float32 copies: torch's bf16 bmm copies its strided operands
            # anyway and ran 1.7x slower (411 vs 246 us a layer at 800 keys on an Intel Xeon with AMX).
            qh = q[start].view(kv_heads, -1, head_dim).float()
            scores = torch.bmm(qh, k.float().transpose(1, 2)) * scale
            out[start] = torch.bmm(scores.softmax(-1), v.float()).view(-1, head_dim)
            continue
        qi = q[start : start + n_q].transpose(0, 1)[None]
        with torch_threads_back(n_q * k.shape[1]):  # a long splice inside a decode-sized step: all cores
            o = F.scaled_dot_product_attention(qi, k[None], v[None], attn_mask=mask, is_causal=causal, scale=scale,
                                               enable_gqa=gqa)
        out[start : start + n_q] = o[0].transpose(0, 1)
    return out


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: Sequence[Sequence[int]], query_lens: Sequence[int], context_lens: Sequence[int],
                    scale: float, *, backend: str | None = None, plan: AttentionPlan | None = None
                    ) -> torch.Tensor:
    """Causal attention of a step's query tokens over their sequences' paged K/V; returns (num_tokens, heads, dim).

    Raises ValueError on inconsistent lengths, a block table too short for its sequence, or head counts that
    do not divide.
    """
    if not len(block_tables) == len(query_lens) == len(context_lens):
        raise ValueError("paged_attention: block_tables, query_lens and context_lens differ in length")
    if sum(query_lens) != q.shape[0]:
        raise ValueError(f"paged_attention: query_lens sum to {sum(query_lens)}, q has {q.shape[0]} tokens")
    if q.shape[1] % k_cache.shape[2] or q.shape[2] != k_cache.shape[3]:
        raise ValueError(f"paged_attention: q heads/dim {tuple(q.shape[1:])} do not fit cache heads/dim "
                         f"{tuple(k_cache.shape[2:])}")
    if plan is None or (backend not in (None, "auto") and backend != plan.backend):
        plan = plan_paged_attention(block_tables, query_lens, context_lens, k_cache.shape[1], q.device, backend)
    if plan.backend == "triton":
        return _paged_attention_triton(q, k_cache, v_cache, plan, scale)
    if plan.backend == "cpu":
        return _paged_attention_cpu(q, k_cache, v_cache, plan, scale)
    return paged_attention_ref(q, k_cache, v_cache, block_tables, query_lens, context_lens, scale, plan)


def _paged_attention_triton(q, k_cache, v_cache, plan: AttentionPlan, scale):
    """Single-token queries through the Triton kernel (their pages read in place); longer chunks (prompts,
    splices) through SDPA on gathered pages, which uses the fused kernels on a GPU."""
    from ..triton_kernels.paged_attention import paged_decode

    out = torch.empty_like(q)
    if plan.decode is not None:
        d = plan.decode
        o = torch.empty_like(q[d.rows])
        paged_decode(q[d.rows], k_cache, v_cache, d.tables, d.n_keys, o, scale)
        out[d.rows] = o
    if plan.seqs:
        _attend_torch(q, k_cache, v_cache, plan.seqs, scale, out)
    return out


def _paged_attention_cpu(q, k_cache, v_cache, plan: AttentionPlan, scale):
    """Single-token float32 or bfloat16 queries through echo._C in one call (pages read in place, on the thread
    pool); longer chunks, and K/V of other dtypes or shapes, through the torch path."""
    out = torch.empty_like(q)
    d = plan.cpu_decode
    if d is not None:
        heads, kv_heads, head_dim = q.shape[1], k_cache.shape[2], k_cache.shape[3]
        # Inside few_row_forward the kernel gets the pool's threads (torch is on one thread there). Outside it, a
        # float32 step keeps torch's threaded bmm: taking torch's threads away around each layer's call and giving
        # them back cost more than the kernel saved (batch-1 steps on a 2-core Intel Xeon: 12.1 -> 14.6 s for 300
        # tokens). bf16 takes the kernel on one thread there: torch's path copies K/V to float32 first and was
        # slower on two threads than the kernel on one (benchmarks/RESULTS.md).
        threads = kernel_threads()
        bf16 = q.dtype == torch.bfloat16
        if (q.dtype == k_cache.dtype == v_cache.dtype and q.dtype in (torch.float32, torch.bfloat16)
                and head_dim % 4 == 0 and (threads > 1 or bf16 or torch.get_num_threads() == 1)
                and head_dim <= MAX_HEAD_DIM and heads // kv_heads <= MAX_GROUP and k_cache.is_contiguous()
                and v_cache.is_contiguous() and q.stride()[1:] == (head_dim, 1) and out.stride()[1:] == (head_dim, 1)):
            _backend.native().decode_attention(
                q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(), d.q_row.data_ptr(),
                d.key_offset.data_ptr(), d.slots.data_ptr(), d.q_row.numel(), heads, kv_heads, head_dim,
                q.stride(0), out.stride(0), kv_heads * head_dim, float(scale), bf16, threads)
        else:
            _attend_torch(q, k_cache, v_cache, d.seqs, scale, out)
    if plan.seqs:
        _attend_torch(q, k_cache, v_cache, plan.seqs, scale, out)
    return out
