"""Grouped GEMM for a mixture of experts: every active expert's GEMM in one launch.

The (token, slot) rows are sorted by expert on the host (``echo.ops.moe.group_by_expert``) and each expert's
contiguous run of rows is cut into blocks of ``BLOCK_M``; program (b, n) multiplies block b's rows by columns
n*BLOCK_N… of its expert's weight ``w[e]`` (out_features, in_features), so an expert with no tokens costs nothing
and one with many tokens fills many programs. The wrapper in echo.ops.moe checks the shapes assumed here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BLOCK_M = 16


@triton.jit
def _grouped_gemm_kernel(
    a_ptr, w_ptr, c_ptr, block_expert_ptr, block_start_ptr, block_end_ptr,
    N, K,
    a_stride_m, a_stride_k, w_stride_e, w_stride_n, w_stride_k, c_stride_m, c_stride_n,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    row_start = tl.load(block_start_ptr + block)
    row_end = tl.load(block_end_ptr + block)
    offs_m = row_start + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < row_end, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_base = w_ptr + expert * w_stride_e
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.load(a_ptr + offs_m[:, None] * a_stride_m + offs_k[None, :] * a_stride_k,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_base + offs_n[None, :] * w_stride_n + offs_k[:, None] * w_stride_k,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if IEEE:  # float32 weights: full-precision products, not TF32
            acc += tl.dot(a, w, input_precision="ieee")
        else:
            acc += tl.dot(a, w)
    tl.store(c_ptr + offs_m[:, None] * c_stride_m + offs_n[None, :] * c_stride_n, acc.to(c_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def _blocks(counts: torch.Tensor):
    """Per block of at most BLOCK_M rows of one expert: (expert, first row, end row), rows in expert order."""
    ends = counts.cumsum(0)
    starts = ends - counts
    per_expert = (counts + BLOCK_M - 1) // BLOCK_M
    expert = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), per_expert)
    first_block = per_expert.cumsum(0) - per_expert
    within = torch.arange(expert.numel(), device=counts.device) - first_block[expert]
    block_start = starts[expert] + within * BLOCK_M
    return expert, block_start, torch.minimum(block_start + BLOCK_M, ends[expert])


def grouped_gemm(a: torch.Tensor, w: torch.Tensor, blocks) -> torch.Tensor:
    """``c[r] = a[r] @ w[e(r)].T`` for rows ``a`` (rows, K) sorted by expert; w (num_experts, N, K)."""
    expert, start, end = blocks
    n, k = w.shape[1], w.shape[2]
    c = torch.empty(a.shape[0], n, device=a.device, dtype=a.dtype)
    if expert.numel() == 0:
        return c
    block_n = min(64, max(16, triton.next_power_of_2(n)))
    block_k = min(64, max(16, triton.next_power_of_2(k)))
    grid = (expert.numel(), triton.cdiv(n, block_n))
    _grouped_gemm_kernel[grid](
        a, w, c, expert, start, end, n, k,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2), c.stride(0), c.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k, IEEE=a.dtype == torch.float32,
    )
    return c


def moe_experts(x, ids, weights, gate_up, down) -> torch.Tensor:
    """echo.ops.moe.moe_experts on Triton: gather rows by expert, grouped gate_up GEMM, SwiGLU, grouped down
    GEMM, weighted sum per token (``combine``)."""
    from echo.ops.moe import combine, group_by_expert

    top_k, inter = ids.shape[1], down.shape[-1]
    order, counts = group_by_expert(ids, gate_up.shape[0])
    token = order // top_k
    blocks = _blocks(counts)
    h = grouped_gemm(x[token], gate_up, blocks)
    return combine(grouped_gemm(F.silu(h[:, :inter]) * h[:, inter:], down, blocks), order, weights)
