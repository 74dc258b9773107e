"""paged_attention over random block tables == dense causal SDPA over each sequence's whole K/V."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from echo.ops.paged_attention import BACKENDS, paged_attention  # noqa: F401 (BACKENDS: ops/conftest.py)
from echo.ops.store_kv import store_kv
from helpers import assert_close


def _dense(q, k, v, scale):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
                                       scale=scale)
    return o.transpose(0, 1)


# (context_len, query_len) per sequence: pure prefill, decode steps, a splice chunk into a long context, blocks
# exactly full / one short / one over.
CASES = {
    "prefill": [(0, 37)],
    "decode-batch": [(15, 1), (16, 1), (17, 1), (1, 1)],
    "splice-and-decode": [(40, 27), (9, 1), (0, 5)],
}


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 2)], ids=["mha", "gqa2", "gqa4"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dim", [16, 20, 24], ids=["d16", "d20", "d24"])  # 20, 24: the C++ 4- and 8-lane builds
@pytest.mark.parametrize("layout", ["scattered", "consecutive"])
def test_matches_dense_causal(backend, case, heads, kv_heads, dim, layout):
    name, device = backend
    torch.manual_seed(0)
    block, blocks = 8, 64
    k_cache = torch.zeros(blocks, block, kv_heads, dim)
    v_cache = torch.zeros_like(k_cache)
    # scattered, out-of-order pages (a gather), or each sequence's pages in a row (read in place)
    free = torch.randperm(blocks).tolist() if layout == "scattered" else list(range(blocks))[::-1]
    qs, tables, expected = [], [], []
    for ctx, n in CASES[case]:
        total = ctx + n
        table = [free.pop() for _ in range(-(-total // block))]
        k, v = torch.randn(total, kv_heads, dim), torch.randn(total, kv_heads, dim)
        slots = torch.tensor([table[p // block] * block + p % block for p in range(total)])
        store_kv(k, v, k_cache, v_cache, slots, backend="torch")
        q_all = torch.randn(total, heads, dim)
        expected.append(_dense(q_all, k, v, dim**-0.5)[ctx:])
        qs.append(q_all[ctx:])
        tables.append(table)
    out = paged_attention(torch.cat(qs).to(device), k_cache.to(device), v_cache.to(device), tables,
                          [n for _, n in CASES[case]], [c for c, _ in CASES[case]], dim**-0.5, backend=name)
    assert_close(f"paged {name} {case}", torch.cat(expected), out.cpu(), atol=1e-5)


def test_bad_inputs():
    kc = torch.zeros(4, 4, 2, 8)
    with pytest.raises(ValueError, match="has 9 tokens but 2 blocks"):
        paged_attention(torch.zeros(1, 2, 8), kc, kc, [[0, 1]], [1], [8], 1.0)
    with pytest.raises(ValueError, match="sum to 2"):
        paged_attention(torch.zeros(1, 2, 8), kc, kc, [[0]], [2], [0], 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        paged_attention(torch.zeros(1, 3, 8), kc, kc, [[0]], [1], [0], 1.0)


def test_half_precision_decode(backend):
    """fp16 caches (the interpreter has no bf16): the kernel accumulates in fp32 like the fp32 reference."""
    name, device = backend
    torch.manual_seed(1)
    kc = torch.randn(16, 16, 2, 32).half()
    vc = torch.randn(16, 16, 2, 32).half()
    tables = [[3, 7, 1], [0, 2], [9, 4, 5, 6]]
    ctx = [40, 20, 63]
    q = torch.randn(3, 8, 32).half()
    ref = paged_attention(q.float(), kc.float(), vc.float(), tables, [1, 1, 1], ctx, 32**-0.5, backend="torch")
    out = paged_attention(q.to(device), kc.to(device), vc.to(device), tables, [1, 1, 1], ctx, 32**-0.5, backend=name)
    assert out.dtype == torch.float16
    assert_close(f"{name} fp16 decode", ref, out.float().cpu(), atol=2e-3)


@pytest.mark.parametrize("heads,kv_heads,dim", [(28, 4, 128), (9, 3, 64), (6, 6, 40), (5, 1, 20), (16, 4, 256)],
                         ids=["g7-d128", "g3-d64", "mha-d40", "g5-d20", "g4-d256"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_decode_kernel_matches_the_torch_path(heads, kv_heads, dim, threads, dtype, monkeypatch):
    """The C++ single-query kernel (every SIMD build: head_dim 128/64/256 take 16 lanes, 40 takes 8, 20 takes 4), in
    float32 and bfloat16, over long scattered contexts, beside a splice chunk, on one thread and on the pool's two
    (as inside a decode step's few_row_forward)."""
    from echo.ops import _backend
    from echo.ops import paged_attention as pa

    if "cpu" not in _backend.available(BACKENDS, "cpu"):
        pytest.skip("echo._C is not built")
    monkeypatch.setattr(pa, "kernel_threads", lambda: threads)
    calls, kernel = [], _backend.native().decode_attention
    monkeypatch.setattr(_backend.native(), "decode_attention", lambda *a: calls.append(a[-1]) or kernel(*a))
    torch.manual_seed(heads * dim)
    block, blocks = 16, 160
    k_cache = torch.randn(blocks, block, kv_heads, dim).to(dtype)
    v_cache = torch.randn(blocks, block, kv_heads, dim).to(dtype)
    ctx = [700, 1, 333, 64, 150]
    q_lens = [1, 1, 1, 1, 30]  # the last one a splice chunk, taken by the torch path
    free = torch.randperm(blocks).tolist()
    tables = [[free.pop() for _ in range(-(-(c + n) // block))] for c, n in zip(ctx, q_lens)]
    q = torch.randn(sum(q_lens), heads, dim).to(dtype)
    ref = paged_attention(q, k_cache, v_cache, tables, q_lens, ctx, dim**-0.5, backend="torch")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # one: the kernel takes the call on one thread; two: on the pool's two
    try:
        out = paged_attention(q, k_cache, v_cache, tables, q_lens, ctx, dim**-0.5, backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert out.dtype == dtype
    if dtype == torch.float32:
        assert_close(f"cpu decode {heads}/{kv_heads}x{dim}", ref, out, atol=2e-6)
    else:  # both paths compute in float32 from the same bf16 inputs and round once: at most one bf16 ulp apart
        torch.testing.assert_close(out.float(), ref.float(), rtol=2**-7, atol=1e-6)
    assert calls == [threads]  # the four single-token queries went to the kernel, in one call
