"""Sparse mixture of experts: top-k routing and the experts' SwiGLU MLPs over the tokens routed to them.

Layout (transformers' in-memory one, e.g. ``Qwen3OmniMoeThinkerTextExperts``): ``gate_up`` (num_experts,
2 * inter, hidden) holds each expert's gate rows then its up rows; ``down`` (num_experts, hidden, inter). A token's
output is ``sum_j w_j * down_e(silu(gate_e(x)) * up_e(x))`` over its ``top_k`` experts ``e = ids[t, j]``.

``moe_experts_ref`` loops over the experts as transformers does (the specification); the dispatcher's ``torch``
backend sorts the (token, expert) pairs by expert and runs two GEMMs per active expert over its contiguous rows,
then puts the rows back in token order and sums each token's slots;
``triton`` runs each GEMM as one grouped launch over every active expert (echo.triton_kernels.moe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend

BACKENDS = ("triton", "torch")
FEW_ROWS = 64  # (token, expert) pairs up to which the CPU path runs on one thread


def route(router_logits: torch.Tensor, top_k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing as transformers computes it: softmax over all experts in float32, the ``top_k`` largest,
    renormalised to sum 1 when ``normalize`` (``norm_topk_prob``), cast back to the logits' dtype.

    router_logits ``(num_tokens, num_experts)`` → (weights ``(num_tokens, top_k)``, expert ids ``(num_tokens,
    top_k)`` int64)."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(router_logits.dtype), ids


def moe_experts_ref(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, gate_up: torch.Tensor,
                    down: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch reference: for each expert in turn, its tokens' SwiGLU output scaled by their routing weight
    and added into the output. x ``(T, hidden)``; ids/weights ``(T, top_k)``; returns ``(T, hidden)``."""
    out = torch.zeros_like(x)
    inter = down.shape[-1]
    for e in range(gate_up.shape[0]):
        token, slot = torch.where(ids == e)
        if token.numel() == 0:
            continue
        h = F.linear(x[token], gate_up[e])
        y = F.linear(F.silu(h[:, :inter]) * h[:, inter:], down[e]) * weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


def group_by_expert(ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (token, slot) pairs sorted by expert: ``order`` ``(T * top_k,)`` indexes ``ids.flatten()`` (stable, so
    a token's pairs keep their order within an expert), ``counts`` ``(num_experts,)`` rows per expert."""
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    return order, torch.bincount(flat, minlength=num_experts)


def moe_experts_grouped(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, gate_up: torch.Tensor,
                        down: torch.Tensor) -> torch.Tensor:
    """Tokens grouped by expert: one gather, two GEMMs per active expert over its contiguous rows, then ``combine``.
    Same contract as ``moe_experts_ref``."""
    top_k, inter = ids.shape[1], down.shape[-1]
    order, counts = group_by_expert(ids, gate_up.shape[0])
    token = order // top_k
    rows = x[token]
    out_rows = torch.empty_like(rows)
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            h = F.linear(rows[start:start + n], gate_up[e])
            out_rows[start:start + n] = F.linear(F.silu(h[:, :inter]) * h[:, inter:], down[e])
            start += n
    return combine(out_rows, order, weights)


def combine(rows: torch.Tensor, order: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Expert-sorted output rows back in (token, slot) order, weighted and summed over each token's slots: a
    permutation and a sum, not a scatter-add (no atomics, the same sum order on every backend)."""
    num_tokens, top_k = weights.shape
    unsorted = torch.empty_like(rows)
    unsorted[order] = rows
    return (unsorted.view(num_tokens, top_k, rows.shape[-1]) * weights[..., None].to(rows.dtype)).sum(1)


def moe_experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, gate_up: torch.Tensor,
                down: torch.Tensor, *, backend: str | None = None, check_ids: bool = True) -> torch.Tensor:
    """The routed experts' SwiGLU outputs, weighted and summed per token.

    Args:
        x: ``(num_tokens, hidden)`` activations.
        ids: ``(num_tokens, top_k)`` int64 expert of each routing slot (``route``), in [0, num_experts).
        weights: ``(num_tokens, top_k)`` routing weight of each slot.
        gate_up: ``(num_experts, 2 * inter, hidden)``, gate rows then up rows of each expert.
        down: ``(num_experts, hidden, inter)``.
        backend: "auto"/None, "triton" or "torch" (grouped PyTorch). Triton has no backward: where autograd
            needs one, the torch path runs.
        check_ids: check the ids' range (a host sync on a GPU); a model passing ``route``'s ids turns it off.

    Returns ``(num_tokens, hidden)`` in x's dtype.

    Raises:
        ValueError: shapes, dtypes or devices that do not fit together, or an expert id out of range.
    """
    _check(x, ids, weights, gate_up, down, check_ids)
    chosen = _backend.resolve("moe_experts", BACKENDS, x.device, backend)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weights, gate_up, down))
    if chosen == "triton" and not needs_grad:
        from ..triton_kernels.moe import moe_experts as triton_moe

        return triton_moe(x, ids, weights, gate_up, down)
    # a decode step's few rows: each op is too small to share between threads, and torch's OpenMP workers
    # waiting at every op's barrier cost more than the op (benchmarks/bench_moe.py)
    with _backend.torch_on_one_thread(x.device.type == "cpu" and ids.numel() <= FEW_ROWS):
        return moe_experts_grouped(x, ids, weights, gate_up, down)


def _check(x, ids, weights, gate_up, down, check_ids: bool) -> None:
    if x.dim() != 2:
        raise ValueError(f"moe_experts: x must be (num_tokens, hidden), got {tuple(x.shape)}")
    if ids.dim() != 2 or ids.shape[0] != x.shape[0] or weights.shape != ids.shape:
        raise ValueError(f"moe_experts: ids and weights must both be ({x.shape[0]}, top_k), got {tuple(ids.shape)} "
                         f"and {tuple(weights.shape)}")
    if ids.dtype != torch.int64:
        raise ValueError(f"moe_experts: ids must be int64, got {ids.dtype}")
    experts, two_inter, hidden = gate_up.shape if gate_up.dim() == 3 else (None, None, None)
    if experts is None or hidden != x.shape[1] or two_inter % 2 or down.shape != (experts, hidden, two_inter // 2):
        raise ValueError(f"moe_experts: gate_up (num_experts, 2*inter, {x.shape[1]}) and down (num_experts, "
                         f"{x.shape[1]}, inter) expected, got {tuple(gate_up.shape)} and {tuple(down.shape)}")
    if len({t.dtype for t in (x, gate_up, down)}) != 1:
        raise ValueError(f"moe_experts: x, gate_up and down must share a dtype, got {x.dtype}, {gate_up.dtype}, "
                         f"{down.dtype}")
    devices = {t.device for t in (x, ids, weights, gate_up, down)}
    if len(devices) != 1:
        raise ValueError(f"moe_experts: all tensors must be on one device, got {sorted(map(str, devices))}")
    if check_ids and ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < experts):
        raise ValueError(f"moe_experts: expert ids must lie in [0, {experts}), got [{int(ids.min())}, "
                         f"{int(ids.max())}]")
