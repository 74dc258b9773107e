"""store_kv and gather_rows: echo's kernels vs their references and the obvious PyTorch alternatives.

store_kv (Triton; on the CPU only under TRITON_INTERPRET=1, where timings say nothing, so the Triton rows need a
GPU): ragged token patterns written into a paged cache. gather_rows: the encoder-cache rows of 8 re-listens
(2-5 s spans, 50-125 rows each of hidden 3584) packed into one splice buffer.
Run: python -m pytest benchmarks/bench_kernels.py
"""

from __future__ import annotations

import pytest
import torch

from echo.ops import _backend
from echo.ops import gather_rows as gr
from echo.ops import store_kv as skv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


# --- gather_rows ---------------------------------------------------------------------------------------------

HIDDEN = 3584
ROWS = [50, 75, 100, 125, 60, 90, 110, 80]
SOURCES = [torch.randn(n, HIDDEN, device=DEVICE, dtype=DTYPE) for n in ROWS]
DST = [sum(ROWS[:i]) for i in range(len(ROWS))]
OUT = torch.empty(sum(ROWS), HIDDEN, device=DEVICE, dtype=DTYPE)
BYTES = 2 * sum(ROWS) * HIDDEN * OUT.element_size()


def _gather_run(fn):
    def run():
        fn()
        _sync()
    return run


@pytest.mark.benchmark(group="gather_rows-8-spans")
def test_baseline_torch_cat(benchmark):
    """The obvious alternative: torch.cat of the cached tensors (allocates a new buffer)."""
    benchmark.extra_info["bytes"] = BYTES
    benchmark(_gather_run(lambda: torch.cat(SOURCES)))


@pytest.mark.benchmark(group="gather_rows-8-spans")
@pytest.mark.parametrize("backend", [b for b in ("cuda", "cpu", "torch") if b in _backend.available(gr.BACKENDS, DEVICE)])
def test_echo_gather_rows(benchmark, backend):
    benchmark.extra_info["bytes"] = BYTES
    benchmark(_gather_run(lambda: gr.gather_rows(SOURCES, OUT, DST, backend=backend)))


# --- store_kv --------------------------------------------------------------------------------------------------

BLOCK, BLOCKS, HEADS, DIM = 16, 2048, 4, 128
K_CACHE = torch.zeros(BLOCKS, BLOCK, HEADS, DIM, device=DEVICE, dtype=DTYPE)
V_CACHE = torch.zeros_like(K_CACHE)
PATTERNS = {"decode-b64": 64, "one-long-plus-short": 2048 + 7 * 1, "splice-8x100": 800}


@pytest.mark.benchmark(group="store_kv")
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("backend", [b for b in ("triton", "torch") if b in _backend.available(skv.BACKENDS, DEVICE)])
def test_echo_store_kv(benchmark, backend, pattern):
    if backend == "triton" and DEVICE == "cpu":
        pytest.skip("Triton on the CPU runs interpreted: correct, but its timing means nothing")
    tokens = PATTERNS[pattern]
    k = torch.randn(tokens, HEADS, DIM, device=DEVICE, dtype=DTYPE)
    v = torch.randn(tokens, HEADS, DIM, device=DEVICE, dtype=DTYPE)
    slots = torch.randperm(BLOCK * BLOCKS, device=DEVICE)[:tokens]
    benchmark.extra_info["bytes"] = 2 * 2 * k.numel() * k.element_size()

    def run():
        skv.store_kv(k, v, K_CACHE, V_CACHE, slots, backend=backend)
        _sync()

    benchmark(run)


# --- linear (the few-row decode GEMM) ---------------------------------------------------------------------------
# Every linear of the omni-bench decoder (12 layers of q/k/v/o, gate/up/down; the LM head) on a decode step's rows:
# 672 MB of float32 weights, far past any cache, so each pass reads them from memory as a decode step does.

def _decoder_linears():
    from echo.models.presets import preset

    d = preset("omni-bench").decoder
    qkv = (d.num_heads + 2 * d.num_kv_heads) * d.head_dim
    shapes = [(qkv, d.hidden_size), (d.hidden_size, d.num_heads * d.head_dim), (d.intermediate_size, d.hidden_size),
              (d.intermediate_size, d.hidden_size), (d.hidden_size, d.intermediate_size)] * d.num_layers
    return [torch.randn(shape) for shape in shapes + [(d.vocab_size, d.hidden_size)]]


_LINEARS: list[torch.Tensor] = []


def _linear_pass(rows: int, fn):
    if not _LINEARS:
        _LINEARS.extend(_decoder_linears())
    xs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in _LINEARS}

    def run():
        with torch.inference_mode():
            for w in _LINEARS:
                fn(xs[w.shape[1]], w)
    return run


LINEAR_ROWS = [1, 8, 16, 64, 256]  # decode batches; 64-256: the engine's decode and splice steps (STEP_MAX_ROWS)


@pytest.mark.parametrize("rows", LINEAR_ROWS)
def test_baseline_torch_linear(benchmark, rows):
    run = _linear_pass(rows, lambda x, w: torch.nn.functional.linear(x, w))
    benchmark.group = f"linear-omni-bench-decoder-{rows}-rows"
    benchmark.extra_info["bytes"] = sum(w.numel() * 4 for w in _LINEARS)
    benchmark(run)


@pytest.mark.parametrize("threads", ["1-thread", "all-threads"])
@pytest.mark.parametrize("rows", LINEAR_ROWS)
def test_echo_linear(benchmark, rows, threads):
    """One thread: the kernel beside torch's ops; all threads: as in the engine's decode steps (few_row_forward)."""
    from echo.ops.linear import linear

    if _backend.native() is None:
        pytest.skip("echo._C is not built")
    n = 1 if threads == "1-thread" else torch.get_num_threads()
    run = _linear_pass(rows, lambda x, w: linear(x, w, backend="cpu", num_threads=n))
    benchmark.group = f"linear-omni-bench-decoder-{rows}-rows"
    benchmark.extra_info["bytes"] = sum(w.numel() * 4 for w in _LINEARS)
    benchmark(run)
