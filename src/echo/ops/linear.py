"""linear: ``y = x W^T + b`` for the few rows of a decode step, float32 on the CPU.

torch's CPU GEMM is built for many rows; at 1-16 rows (one token per sequence of a decode batch) it neither
streams the weights at the memory's speed nor keeps the FMA units busy (benchmarks/RESULTS.md). echo._C's kernel
(csrc/linear_cpu_impl.h) reads every weight row once per call and multiplies it against all the rows at once.
Backends: ``cpu`` (echo._C) and ``torch`` (the reference, ``F.linear``). ``auto`` takes ``cpu`` for float32 CPU
tensors of at most ``MAX_ROWS`` rows (``STEP_MAX_ROWS`` inside ``few_row_forward``) outside autograd, else ``torch``
(``ECHO_BACKEND=torch`` forces it). bfloat16 has a kernel of its own where the CPU has AVX-512-BF16 (half the weight
bytes; float32 sums rounded once), taken inside ``few_row_forward`` for ``BF16_STEP_MAX_ROWS`` rows.

Threads: torch's OpenMP workers spin between torch's own ops, and a decode step interleaves those with these
calls, so kernel threads beyond the caller's fight them for the cores. So the kernel runs one thread, except inside
``few_row_forward``: the engine's decode steps run torch on one thread there and this kernel on all of torch's
threads (a persistent pool in echo._C). On 2 cores that took a batch-1 decode step from 29.1 to 23.8 ms and a
batch-8 one from 62.3 to 55.7 ms; the kernel on two threads beside torch's two took 31.7 / 96.6 ms
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.nn.functional as F

from . import _backend

BACKENDS = ("cpu", "torch")


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def rows_limits(vendor: str) -> tuple[int, int, int]:
    """``(MAX_ROWS, STEP_MIN_ROWS, STEP_MAX_ROWS)`` for a CPU vendor, from benchmarks/linear_rows_sweep.py.

    torch's CPU sgemm is MKL's, which takes its fastest paths on Intel processors only. On this project's 2-core AMD
    EPYC one kernel thread beat torch's two-thread GEMM by 1.2x or more up to 16 rows, and the kernel on two threads
    (inside few_row_forward) took 0.39-0.44x of torch's time at 16-128 rows and 0.6x at 192-512: 256 rows covers
    decode batches and splice steps (a re-listen's 50-125 audio tokens beside a batch's decode rows). On a 2-core
    Intel Xeon (AVX-512, AMX) MKL has a fast path for 1-3 rows (the kernel 0.87-0.93x there), the kernel on two
    threads wins from 4 rows (1.50x) to 40 (1.08x) and loses from 48, and one kernel thread never wins (0.5-0.8x).
    Prompt prefill chunks stay on torch's blocked GEMM everywhere."""
    return (0, 4, 40) if vendor == "GenuineIntel" else (16, 1, 256)


# MAX_ROWS: the most rows for which the kernel (one thread) takes a linear outside few_row_forward;
# STEP_MIN_ROWS..STEP_MAX_ROWS: the forwards that few_row_forward gives to the kernel on all threads.
MAX_ROWS, STEP_MIN_ROWS, STEP_MAX_ROWS = rows_limits(_cpu_vendor())
# bfloat16 (AVX-512-BF16): torch's bf16 linear (oneDNN, AMX) streams the weights at about half the memory's speed
# at 1-8 rows. Measured on the 2-core Intel Xeon, the kernel on two threads took 0.68x of torch's time at 1 row,
# 0.75x at 2, 0.73x at 4 and 1.11x at 8; on one thread 1.2-1.3x at 1-4 rows (RESULTS.md).
BF16_MAX_ROWS = 0
BF16_STEP_MAX_ROWS = 4
_threads = 1  # the kernel's threads for models.layers.Linear; few_row_forward raises it while torch runs one


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch reference."""
    return F.linear(x, weight, bias)


@functools.cache
def _kernel():
    """echo._C's linear, or None (no native build, or one built before the op existed)."""
    return getattr(_backend.native(), "linear", None)


@functools.cache
def _bf16_kernel():
    """echo._C's bfloat16 linear where this processor runs it (AVX-512-BF16), else None."""
    native = _backend.native()
    return native.linear_bf16 if getattr(native, "has_linear_bf16", lambda: False)() else None


def _kernel_for(dtype: torch.dtype):
    return _kernel() if dtype == torch.float32 else _bf16_kernel() if dtype == torch.bfloat16 else None


def _step_rows(dtype: torch.dtype) -> range:
    """The row counts of a forward that few_row_forward gives to the kernel on all threads."""
    return range(1, BF16_STEP_MAX_ROWS + 1) if dtype == torch.bfloat16 else range(STEP_MIN_ROWS, STEP_MAX_ROWS + 1)


def _max_rows(dtype: torch.dtype) -> int:
    if _threads != 1:
        return _step_rows(dtype).stop - 1
    return BF16_MAX_ROWS if dtype == torch.bfloat16 else MAX_ROWS


def native_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``auto`` takes the C++ kernel for this call (cheap: runs once per linear of a decode step)."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype and x.numel() <= _max_rows(x.dtype) * x.shape[-1]
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            # ECHO_BACKEND as _backend.resolve reads it: only "torch" (this op's other backend) turns the kernel off;
            # a backend the op lacks means auto
            and _kernel_for(x.dtype) is not None and os.environ.get("ECHO_BACKEND") != "torch")


def kernel_threads() -> int:
    """The threads models.layers.Linear gives the kernel now (see few_row_forward)."""
    return _threads


@contextlib.contextmanager
def few_row_forward(num_rows: int, device: torch.device, dtype: torch.dtype):
    """Around a model forward of ``num_rows`` tokens: when its linears take the kernel (float32 on the CPU,
    ``STEP_MIN_ROWS`` to ``STEP_MAX_ROWS`` rows; bfloat16 where the CPU has AVX-512-BF16, at most
    ``BF16_STEP_MAX_ROWS``), torch runs one thread and the kernel torch's thread count, restored on exit.
    Process-wide, as ``torch.set_num_threads`` is: torch ops of other Python threads run on one thread meanwhile."""
    global _threads
    threads = torch.get_num_threads()
    if (threads == 1 or _threads != 1 or torch.device(device).type != "cpu" or _kernel_for(dtype) is None
            or num_rows not in _step_rows(dtype) or os.environ.get("ECHO_BACKEND") == "torch"):
        yield
        return
    with _backend.torch_on_one_thread():
        _threads = threads
        try:
            yield
        finally:
            _threads = 1


# Query x key pairs from which an attention inside few_row_forward gets torch's threads back: a 3 s re-listen
# (77 queries) took 166 -> 206 ms at 512 keys with them (their OpenMP workers then spin against the kernel's pool),
# 244 -> 246 ms at 2048 and 532 -> 425 ms at 8192 (benchmarks/RESULTS.md).
THREADS_BACK_PAIRS = 1 << 18


@contextlib.contextmanager
def torch_threads_back(pairs: int):
    """Inside few_row_forward, torch's threads back for an attention of ``pairs`` query x key pairs when that is
    large enough to pay for waking them (a splice over a long context, whose SDPA is most of its step)."""
    if _threads == 1 or pairs < THREADS_BACK_PAIRS:
        yield
        return
    torch.set_num_threads(_threads)
    try:
        yield
    finally:
        torch.set_num_threads(1)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           backend: str | None = None, num_threads: int | None = None) -> torch.Tensor:
    """``x (*, in_features) @ weight (out_features, in_features)^T + bias``; returns ``(*, out_features)``.

    Raises:
        ValueError: shapes that do not fit, or (C++ backend) dtypes other than all float32 or all bfloat16 (bf16
            only on a CPU with AVX-512-BF16), a non-CPU tensor, or tensors that need a gradient (no backward).
    """
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 2 or (bias is not None and bias.shape != weight.shape[:1]):
        raise ValueError(f"linear: x {tuple(x.shape)}, weight {tuple(weight.shape)} and bias "
                         f"{None if bias is None else tuple(bias.shape)} do not fit")
    if backend in (None, "auto"):
        chosen = "cpu" if native_ok(x, weight) else "torch"
    else:
        chosen = _backend.resolve("linear", BACKENDS, x.device, backend)
    if chosen == "torch":
        return linear_ref(x, weight, bias)
    if _kernel() is None:
        raise ValueError("linear: this build of echo._C has no linear op (built before it existed); reinstall echo")
    tensors = [t for t in (x, weight, bias) if t is not None]
    if any(t.dtype not in (torch.float32, torch.bfloat16) or t.dtype != x.dtype or t.device.type != "cpu"
           for t in tensors):
        raise ValueError("linear: the C++ kernel takes CPU tensors all float32 or all bfloat16, got "
                         + ", ".join(f"{t.dtype} on {t.device}" for t in tensors))
    if x.dtype == torch.bfloat16 and _bf16_kernel() is None:
        raise ValueError("linear: the bfloat16 kernel needs a CPU with AVX-512-BF16 (and an echo._C built with it); "
                         "this one has none: use backend='torch'")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise ValueError("linear: the C++ kernel has no backward; use backend='torch' under autograd")
    return native_linear(x, weight, bias, num_threads or 1)


def native_linear(x, weight, bias, num_threads: int) -> torch.Tensor:
    """The C++ kernel without checks (callers checked ``native_ok``): the decode path's per-layer call."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    y = torch.empty(x2.shape[0], weight.shape[0], dtype=x.dtype)
    _kernel_for(x.dtype)(x2.data_ptr(), weight.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(),
                         x2.shape[0], x2.shape[1], weight.shape[0], x2.stride(0), weight.stride(0), y.stride(0),
                         num_threads)
    return y.view(*lead, weight.shape[0])
