"""The physical limits a decode step is measured against, counted and measured in the same run.

A decode step must at least read every weight its matmuls use (decoder linears with their biases, norms, the LM
head; the token embedding only for the rows it looks up, unless it *is* the LM head) plus the K/V it attends over.
Dividing those bytes by a measured streaming-read bandwidth (all threads, one buffer far larger than the caches,
best of several reads) gives the time no implementation can beat; ``matmul_rate`` gives the compute side for
batches where the GEMMs stop being bound by the weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_of(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: page faults, kernel selection
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def default_buffer_bytes(device: torch.device) -> int:
    # 512 MiB is far past any CPU's last-level cache; on a GPU 4 GiB dwarfs L2 (tens of MiB)
    return (4 << 30) if device.type == "cuda" else (512 << 20)


def read_bandwidth(device: torch.device | str = "cpu", nbytes: int | None = None, repeats: int = 10) -> float:
    """Bytes/s of one streaming read of a large float32 buffer by every thread (``sum``: a few flops per 64 bytes,
    so the memory, not the ALUs, sets its pace), best of ``repeats``."""
    device = torch.device(device)
    buf = torch.ones((nbytes or default_buffer_bytes(device)) // 4, dtype=torch.float32, device=device)
    return buf.numel() * 4 / _best_of(lambda: buf.sum(), device, repeats)


def copy_bandwidth(device: torch.device | str = "cpu", nbytes: int | None = None, repeats: int = 7) -> float:
    """Bytes/s moved (read + written) by ``dst.copy_(src)`` of a large buffer, best of ``repeats``."""
    device = torch.device(device)
    n = (nbytes or default_buffer_bytes(device)) // 8
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * n * 4 / _best_of(lambda: dst.copy_(src), device, repeats)


def matmul_rate(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048,
                repeats: int = 5) -> float:
    """FLOP/s of a square ``n x n`` matmul in ``dtype``, best of ``repeats`` (the compute roof)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / _best_of(lambda: a @ b, device, repeats)


@dataclass(frozen=True)
class StepBytes:
    weights: int  # decoder linears, norms and LM head, each tensor once (a tied head is the embedding table)
    embedding_rows: int  # the looked-up rows of an untied embedding table
    kv: int  # K and V of every layer over every sequence's context (the new token included)

    @property
    def total(self) -> int:
        return self.weights + self.embedding_rows + self.kv


def decode_step_bytes(model, context_lens: Sequence[int], kv_dtype: torch.dtype | None = None) -> StepBytes:
    """Bytes one decode step of ``len(context_lens)`` sequences must read, sequence i attending over
    ``context_lens[i]`` cached tokens plus its new one. The audio tower takes no part in a decode step."""
    d = model.config.decoder
    embed = model.decoder.embed_tokens.weight
    seen, weights = set(), 0
    for name, p in model.named_parameters():
        if name.startswith("audio_tower") or p.data_ptr() in seen:
            continue
        if p is embed and p.data_ptr() != model.lm_head.weight.data_ptr():
            continue  # untied: only the looked-up rows are read (counted below)
        seen.add(p.data_ptr())
        weights += p.numel() * p.element_size()
    tied = embed.data_ptr() == model.lm_head.weight.data_ptr()
    rows = 0 if tied else len(context_lens) * d.hidden_size * embed.element_size()
    elt = torch.empty(0, dtype=kv_dtype or model.dtype).element_size()
    per_token = 2 * d.num_layers * d.num_kv_heads * d.head_dim * elt
    return StepBytes(weights, rows, sum(c + 1 for c in context_lens) * per_token)


def gemm_flops(model, rows: int) -> int:
    """FLOPs of the decoder's linears and the LM head over ``rows`` tokens (2 per multiply-add)."""
    total = sum(m.weight.numel() for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and not n.startswith("audio_tower"))
    return 2 * total * rows


def describe_limit(step_s: float, nbytes: StepBytes, bandwidth: float) -> str:
    limit = nbytes.total / bandwidth
    return (f"{step_s * 1e3:.1f} ms vs {nbytes.total / 1e6:.0f} MB (weights {nbytes.weights / 1e6:.0f}, KV "
            f"{nbytes.kv / 1e6:.1f}, embedding rows {nbytes.embedding_rows / 1e6:.2f}) at a measured "
            f"{bandwidth / 1e9:.1f} GB/s = {limit * 1e3:.1f} ms: {step_s / limit:.2f}x the limit")
