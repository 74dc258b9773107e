"""Backend names, cached availability probes, the ECHO_BACKEND override and "auto" resolution.

Four backends: ``cuda`` (echo._C built with CUDA, tensors on a CUDA device), ``cpu`` (echo._C's C++ kernels,
tensors on the CPU), ``triton`` (kernels in echo.triton_kernels), ``torch`` (the plain-PyTorch reference, always
there). ``auto`` picks the fastest one that can run on the tensors' device and never fails; naming a backend
explicitly (argument or ``ECHO_BACKEND``) that the machine lacks raises :class:`BackendUnavailable`.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from ..errors import BackendUnavailable, ConfigError

BACKENDS = ("cuda", "cpu", "triton", "torch")


@functools.cache
def native():
    """The echo._C module, or None when the package was installed without its native build."""
    try:
        from .. import _C
    except ImportError:
        return None
    return _C


@functools.cache
def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _usable(backend: str, device: torch.device) -> str | None:
    """None when ``backend`` can run on ``device``, else the reason it cannot."""
    if backend == "torch":
        return None
    if backend == "cpu":
        if native() is None:
            return "echo._C is not built"
        return None if device.type == "cpu" else f"the C++ CPU kernels need CPU tensors, got {device}"
    if backend == "cuda":
        if native() is None:
            return "echo._C is not built"
        if not native().has_cuda():
            return "echo._C was built without CUDA kernels (no CUDA compiler at build time)"
        return None if device.type == "cuda" else f"the CUDA kernels need CUDA tensors, got {device}"
    if backend == "triton":
        if not _triton_ok():
            return "triton is not installed (pip install 'echo-lalm[triton]')"
        if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return f"Triton needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU), got {device}"
    raise ConfigError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


def available(op_backends: tuple[str, ...], device: torch.device | str = "cpu") -> list[str]:
    """The backends of ``op_backends`` that can run on ``device`` on this machine."""
    device = torch.device(device)
    return [b for b in op_backends if _usable(b, device) is None]


def resolve(op: str, op_backends: tuple[str, ...], device: torch.device, requested: str | None = None) -> str:
    """Pick the backend for one call of ``op``: explicit argument, else ECHO_BACKEND, else the first usable.

    ``op_backends`` lists the op's backends in its order of preference for ``auto``. An explicit choice that
    cannot run raises BackendUnavailable naming what is missing; ``auto`` falls back to ``torch``. ECHO_BACKEND may name a backend this op lacks (it is a global override): then ``auto`` applies.
    """
    explicit = requested not in (None, "auto")
    choice = requested if explicit else os.environ.get("ECHO_BACKEND", "auto") or "auto"
    if choice != "auto":
        if choice not in BACKENDS:
            raise ConfigError(f"backend {choice!r} is unknown; choose one of auto, {', '.join(BACKENDS)}")
        if choice in op_backends:
            reason = _usable(choice, device)
            if reason is None:
                return choice
            raise BackendUnavailable(f"{op}: backend {choice!r} requested but unavailable: {reason}")
        if explicit:
            raise BackendUnavailable(f"{op}: has no {choice!r} backend; it has {', '.join(op_backends)}")
    for backend in op_backends:
        if backend == "triton" and device.type != "cuda":
            continue  # interpreted Triton on the CPU is for tests that ask for it, never a default
        if _usable(backend, device) is None:
            return backend
    return "torch"


@contextlib.contextmanager
def torch_on_one_thread(active: bool = True):
    """torch on one thread while an echo._C kernel runs on the pool: torch's OpenMP workers spin after each torch
    op and take the cores the pool's threads need (a 30 s clip's log-mel on two threads: 1.7-3.9 ms beside torch's
    two threads, 0.93 ms with torch on one, on a 2-core Intel Xeon; benchmarks/RESULTS.md)."""
    threads = torch.get_num_threads()
    if not active or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

