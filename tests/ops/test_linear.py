"""linear (the few-row decode GEMM): every backend vs F.linear (and the bfloat16 kernel, where the CPU has
AVX-512-BF16, vs the exact result) over awkward shapes (rows 0-17, 100 and 256 across the kernel's
4-row blocks, in/out features not multiples of the vector width or of the 3- and 6-row weight tiles), with and without
bias, strided inputs; the decoder's Linear module takes the kernel only where it should."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from echo.models.layers import Linear
from echo.ops.linear import BACKENDS, linear, linear_ref  # noqa: F401 (BACKENDS: ops/conftest.py)
from echo.ops import linear as linear_mod



@pytest.fixture(autouse=True)
def rows_limits(monkeypatch):
    """The tests of the mechanism use one vendor's row limits (the machine's own are tested below)."""
    for name, value in zip(("MAX_ROWS", "STEP_MIN_ROWS", "STEP_MAX_ROWS"), linear_mod.rows_limits("AuthenticAMD")):
        monkeypatch.setattr(linear_mod, name, value)


def test_row_limits_follow_the_vendor():
    assert linear_mod.rows_limits("GenuineIntel") == (0, 4, 40)  # MKL's sgemm is strong there (RESULTS.md)
    assert linear_mod.rows_limits("AuthenticAMD") == linear_mod.rows_limits("") == (16, 1, 256)
    intel = dict(zip(("MAX_ROWS", "STEP_MIN_ROWS", "STEP_MAX_ROWS"), linear_mod.rows_limits("GenuineIntel")))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in intel.items():
                mp.setattr(linear_mod, name, value)
            layer = Linear(32, 24)
            with torch.inference_mode():
                assert not linear_mod.native_ok(torch.randn(1, 32), layer.weight)  # one thread never wins there
                for rows, engaged in [(3, False), (4, True), (40, True), (41, False)]:
                    with linear_mod.few_row_forward(rows, torch.device("cpu"), torch.float32):
                        assert (linear_mod.kernel_threads() == 2) == engaged, rows
    finally:
        torch.set_num_threads(before)


# (rows, in_features, out_features)
SHAPES = [(0, 16, 8), (1, 1, 1), (1, 7, 5), (2, 17, 3), (3, 64, 65), (5, 100, 37), (8, 576, 64), (9, 33, 130),
          (13, 1024, 97), (16, 48, 200), (17, 40, 11), (100, 70, 50), (256, 2816, 13)]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("rows,k,n", SHAPES, ids=[f"m{m}-k{k}-n{n}" for m, k, n in SHAPES])
def test_matches_reference(backend, rows, k, n, bias):
    name, device = backend
    g = torch.Generator().manual_seed(rows * 1000 + k + n)
    x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    out = linear(x, w, b, backend=name)
    ref = linear_ref(x.double(), w.double(), None if b is None else b.double())
    assert out.shape == (rows, n) and out.dtype == torch.float32
    # fp32 sums of k products in another order: within a few ulps of the float64 result per term
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * k ** 0.5)


def test_strided_input_and_lead_dims(backend):
    name, _ = backend
    base = torch.randn(3, 2, 70)
    x = base[:, :, 3:67]  # (3, 2, 64), row stride 70
    w, b = torch.randn(19, 64), torch.randn(19)
    torch.testing.assert_close(linear(x, w, b, backend=name), F.linear(x, w, b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_split_the_same_answer(threads):
    if linear_mod._kernel() is None:
        pytest.skip("echo._C is not built")
    x, w = torch.randn(4, 300), torch.randn(1000, 300)
    one = linear(x, w, backend="cpu", num_threads=1)
    assert torch.equal(linear(x, w, backend="cpu", num_threads=threads), one)  # each output is one thread's sum


def test_bad_input_is_named():
    x, w = torch.randn(2, 8), torch.randn(4, 9)
    with pytest.raises(ValueError, match="do not fit"):
        linear(x, w)
    with pytest.raises(ValueError, match="do not fit"):
        linear(torch.randn(2, 9), w, torch.randn(5))
    if linear_mod._kernel() is not None:
        with pytest.raises(ValueError, match="all float32 or all bfloat16"):
            linear(torch.randn(2, 9, dtype=torch.float64), w.double(), backend="cpu")
        with pytest.raises(ValueError, match="no backward"):
            linear(torch.randn(2, 9, requires_grad=True), w, backend="cpu")


def test_module_uses_the_kernel_only_for_few_rows_without_autograd(monkeypatch):
    calls = []
    real = linear_mod.native_linear
    monkeypatch.setattr(linear_mod, "native_linear", lambda *a: calls.append((a[0].shape, a[3])) or real(*a))
    layer = Linear(32, 24)
    few, many = torch.randn(3, 32), torch.randn(linear_mod.MAX_ROWS + 1, 32)
    with torch.inference_mode():
        torch.testing.assert_close(layer(few), F.linear(few, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        layer(many)
    out = layer(few)  # grad enabled and the weight requires it: autograd's path
    out.sum().backward()
    assert layer.weight.grad is not None
    expected = [((3, 32), 1)] if linear_mod._kernel() is not None else []
    assert calls == expected  # one kernel thread outside few_row_forward


def test_few_row_forward_moves_the_threads_from_torch_to_the_kernel(monkeypatch):
    """Inside: torch on one thread, Linear's kernel calls on torch's count; restored on exit, also after an error;
    left alone for more than STEP_MAX_ROWS rows, another dtype or device, or ECHO_BACKEND=torch."""
    if linear_mod._kernel() is None:
        pytest.skip("echo._C is not built")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        layer, x = Linear(32, 24), torch.randn(linear_mod.STEP_MAX_ROWS, 32)
        with torch.inference_mode():
            assert not linear_mod.native_ok(x, layer.weight)  # one kernel thread: MAX_ROWS at most
            with linear_mod.few_row_forward(len(x), torch.device("cpu"), torch.float32):
                assert (torch.get_num_threads(), linear_mod.kernel_threads()) == (1, 2)
                assert linear_mod.native_ok(x, layer.weight)
                torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        assert (torch.get_num_threads(), linear_mod.kernel_threads()) == (2, 1)
        with pytest.raises(RuntimeError, match="inside"):
            with linear_mod.few_row_forward(1, torch.device("cpu"), torch.float32):
                raise RuntimeError("inside")
        assert (torch.get_num_threads(), linear_mod.kernel_threads()) == (2, 1)
        for rows, device, dtype in [(linear_mod.STEP_MAX_ROWS + 1, "cpu", torch.float32), (1, "cpu", torch.float16),
                                    (linear_mod.BF16_STEP_MAX_ROWS + 1, "cpu", torch.bfloat16),
                                    (1, "meta", torch.float32)]:
            with linear_mod.few_row_forward(rows, torch.device(device), dtype):
                assert (torch.get_num_threads(), linear_mod.kernel_threads()) == (2, 1)
        with linear_mod.few_row_forward(1, torch.device("cpu"), torch.bfloat16):  # where the CPU runs the bf16 kernel
            assert linear_mod.kernel_threads() == (2 if linear_mod._bf16_kernel() is not None else 1)
        monkeypatch.setenv("ECHO_BACKEND", "torch")
        with linear_mod.few_row_forward(1, torch.device("cpu"), torch.float32):
            assert (torch.get_num_threads(), linear_mod.kernel_threads()) == (2, 1)
    finally:
        torch.set_num_threads(before)


def test_pool_serves_concurrent_callers_and_forked_children():
    """echo._C's thread pool takes one caller at a time (another runs on its own thread) and a forked child, which
    has none of the parent's threads, gets a pool of its own: same answers, no hang."""
    if linear_mod._kernel() is None:
        pytest.skip("echo._C is not built")
    import concurrent.futures
    import multiprocessing

    x, w = torch.randn(8, 300), torch.randn(700, 300)
    one = linear(x, w, backend="cpu", num_threads=1)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda _: linear(x, w, backend="cpu", num_threads=3), range(64)))
    assert all(torch.equal(o, one) for o in outs)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert torch.equal(pool.apply_async(_linear_in_child, (x, w)).get(timeout=60), one)


def _linear_in_child(x, w):
    return linear(x, w, backend="cpu", num_threads=2)


def test_echo_backend_reads_as_for_every_op(monkeypatch):
    """ECHO_BACKEND=torch turns the kernel off; a backend this op lacks (triton) leaves auto's choice, as
    _backend.resolve does for every op."""
    if linear_mod._kernel() is None:
        pytest.skip("echo._C is not built")
    x, w = torch.randn(2, 8), torch.randn(4, 8)
    with torch.inference_mode():
        monkeypatch.setenv("ECHO_BACKEND", "torch")
        assert not linear_mod.native_ok(x, w)
        monkeypatch.setenv("ECHO_BACKEND", "triton")
        assert linear_mod.native_ok(x, w)
        monkeypatch.delenv("ECHO_BACKEND")
        assert linear_mod.native_ok(x, w)


def test_torch_threads_back_only_for_large_attention_inside_a_step():
    if linear_mod._kernel() is None:
        pytest.skip("echo._C is not built")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        big, small = linear_mod.THREADS_BACK_PAIRS, linear_mod.THREADS_BACK_PAIRS - 1
        with linear_mod.torch_threads_back(big):  # outside a step: nothing to give back
            assert torch.get_num_threads() == 2
        with linear_mod.few_row_forward(8, torch.device("cpu"), torch.float32):
            with linear_mod.torch_threads_back(small):
                assert torch.get_num_threads() == 1
            with linear_mod.torch_threads_back(big):
                assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


needs_bf16 = pytest.mark.skipif(linear_mod._bf16_kernel() is None,
                                reason="no bfloat16 kernel here (needs AVX-512-BF16 and echo._C built with it)")
BF16_SHAPES = [(0, 16, 8), (1, 1, 1), (1, 31, 5), (1, 32, 7), (2, 33, 3), (3, 64, 65), (4, 100, 37), (5, 1024, 13),
               (9, 2816, 19), (17, 40, 11)]


@needs_bf16
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("rows,k,n", BF16_SHAPES, ids=[f"m{m}-k{k}-n{n}" for m, k, n in BF16_SHAPES])
def test_bf16_kernel_rounds_the_float32_sum_once(rows, k, n, bias):
    g = torch.Generator().manual_seed(rows * 1000 + k + n)
    x, w = torch.randn(rows, k, generator=g).bfloat16(), torch.randn(n, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    out = linear(x, w, b, backend="cpu", num_threads=2)
    exact = linear_ref(x.double(), w.double(), None if b is None else b.double())  # bf16 products are exact
    assert out.shape == (rows, n) and out.dtype == torch.bfloat16
    # float32 sums, rounded once to bf16: half a bf16 ulp (2^-8 relative), one ulp where the float32 sum's own error
    # crosses a rounding boundary
    torch.testing.assert_close(out.double(), exact, rtol=2 ** -7, atol=1e-6 * k ** 0.5)
    torch.testing.assert_close(out, F.linear(x, w, b))  # torch's bf16 linear, at bf16's tolerances


@needs_bf16
def test_bf16_threads_strides_and_the_module():
    base = torch.randn(3, 2, 70).bfloat16()
    x, w, b = base[:, :, 3:67], torch.randn(1000, 64).bfloat16(), torch.randn(1000).bfloat16()  # row stride 70
    one = linear(x, w, b, backend="cpu", num_threads=1)
    assert torch.equal(linear(x, w, b, backend="cpu", num_threads=3), one)
    exact = x.double() @ w.double().T + b.double()
    # torch's bf16 linear on this strided 3-D x rounds the product before adding the bias (off by 0.25 here)
    torch.testing.assert_close(one.double(), exact, rtol=2 ** -7, atol=1e-5)
    layer = Linear(64, 24).to(torch.bfloat16)
    few = torch.randn(1, 64).bfloat16()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            assert not linear_mod.native_ok(few, layer.weight)  # outside a step torch's bf16 linear is faster
            with linear_mod.few_row_forward(1, torch.device("cpu"), torch.bfloat16):
                assert linear_mod.native_ok(few, layer.weight)
                torch.testing.assert_close(layer(few), F.linear(few, layer.weight, layer.bias))
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="all float32 or all bfloat16"):
        linear(torch.randn(2, 64), w, backend="cpu")
