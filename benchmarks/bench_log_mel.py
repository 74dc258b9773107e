"""log-mel: echo's C++ kernel (and CUDA when present) vs torch.stft alone, its torch reference and (in a clean
subprocess, see numpy_referee.py) WhisperFeatureExtractor.

Groups: a 30 s clip (Qwen2-Audio config, 30 s max; baseline: ``torch.stft`` alone, the transform WFE's torch path
runs, without the mel and log steps); 8 spans of 2-5 s from a 60 s clip (Qwen2.5-Omni config, 300 s max, which is
what a re-listen featurises; baseline: echo's torch reference); one 1 s span from clips of growing length (the
span's cost must not grow with the clip). Every comparison against numpy runs in a subprocess with
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed (they slow numpy where set), and prints which kernel numpy ran.
Run: python -m pytest benchmarks/bench_log_mel.py -s
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from echo.audio import FeatureConfig, log_mel
from echo.ops import _backend
from echo.ops.log_mel import BACKENDS, log_mel_spans

import numpy_referee
from machine import describe

SR = 16_000
ECHO_BACKENDS = [b for b in ("cpu", "torch") if b in _backend.available(BACKENDS, "cpu")]
GPU = torch.cuda.is_available() and "cuda" in _backend.available(BACKENDS, "cuda")


def _clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _spans(seed: int = 1) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(8):
        length = rng.uniform(2.0, 5.0)
        start = rng.uniform(0.0, 60.0 - length)
        out.append((0, int(start * SR), int((start + length) * SR)))
    return out


# --- against WhisperFeatureExtractor (numpy), in a subprocess with a clean OpenBLAS environment ----------------


def test_numpy_referee():
    """The extractor's numpy path beside echo and torch.stft, all in one fresh process; once with the OpenBLAS
    variables removed (the figure to quote) and once as this machine sets them, when it sets any."""
    print("\n" + numpy_referee.report(numpy_referee.run_referee(clean=True), "OpenBLAS variables removed"))
    if any(os.environ.get(k) for k in numpy_referee.OPENBLAS_VARS):
        print(numpy_referee.report(numpy_referee.run_referee(clean=False, spans_rounds=0), "as this machine sets them"))
    print(f"  on {describe()}")


# --- 30 s clip ---------------------------------------------------------------------------------------------------

CLIP30 = _clip(30.0)
CFG30 = FeatureConfig(chunk_length=30)


@pytest.mark.benchmark(group="clip-30s")
def test_baseline_torch_stft_clip(benchmark):
    """The short-time transform alone (same framing, window and padding as the extractor), no mel or log."""
    benchmark.extra_info["audio_s"] = 30.0
    wave, window = torch.from_numpy(CLIP30), torch.hann_window(400)
    benchmark(lambda: torch.stft(wave, 400, 160, window=window, center=True, pad_mode="reflect",
                                 return_complex=True))


@pytest.mark.benchmark(group="clip-30s")
@pytest.mark.parametrize("backend", ECHO_BACKENDS)
def test_echo_clip(benchmark, backend):
    benchmark.extra_info["audio_s"] = 30.0
    wave = torch.from_numpy(CLIP30)
    benchmark(lambda: log_mel(wave, config=CFG30, backend=backend))


@pytest.mark.benchmark(group="clip-30s")
@pytest.mark.parametrize("backend", ECHO_BACKENDS)
def test_echo_op_clip(benchmark, backend):
    """The op the engine calls (``log_mel_spans``: framing to normalisation), without ``log_mel``'s input checks
    (the non-finite-sample scan of the clip)."""
    benchmark.extra_info["audio_s"] = 30.0
    wave = torch.from_numpy(CLIP30)
    start, length = torch.tensor([0]), torch.tensor([wave.numel()])
    benchmark(lambda: log_mel_spans(wave, start, length, **CFG30.mel_args, backend=backend))


@pytest.mark.benchmark(group="clip-30s")
@pytest.mark.skipif(not GPU, reason="needs CUDA and echo._C built with CUDA")
def test_echo_cuda_clip(benchmark):
    benchmark.extra_info["audio_s"] = 30.0
    wave = torch.from_numpy(CLIP30).cuda()

    def run():
        log_mel(wave, config=CFG30, backend="cuda")
        torch.cuda.synchronize()

    benchmark(run)


# --- 8 spans of 2-5 s from a 60 s clip, Qwen2.5-Omni config (300 s max) ------------------------------------------

CLIP60 = _clip(60.0, seed=2)
SPANS = _spans()
SPAN_SECONDS = sum(e - s for _, s, e in SPANS) / SR
CFG300 = FeatureConfig(chunk_length=300)


@pytest.mark.benchmark(group="8-spans-of-60s")
def test_baseline_torch_reference_spans(benchmark):
    benchmark.extra_info["audio_s"] = SPAN_SECONDS
    wave = torch.from_numpy(CLIP60)
    benchmark(lambda: log_mel(wave, SPANS, config=CFG300, backend="torch"))


@pytest.mark.benchmark(group="8-spans-of-60s")
@pytest.mark.parametrize("backend", [b for b in ECHO_BACKENDS if b != "torch"])
def test_echo_spans(benchmark, backend):
    benchmark.extra_info["audio_s"] = SPAN_SECONDS
    wave = torch.from_numpy(CLIP60)
    benchmark(lambda: log_mel(wave, SPANS, config=CFG300, backend=backend))


@pytest.mark.benchmark(group="8-spans-of-60s")
@pytest.mark.skipif(not GPU, reason="needs CUDA and echo._C built with CUDA")
def test_echo_cuda_spans(benchmark):
    benchmark.extra_info["audio_s"] = SPAN_SECONDS
    wave = torch.from_numpy(CLIP60).cuda()

    def run():
        log_mel(wave, SPANS, config=CFG300, backend="cuda")
        torch.cuda.synchronize()

    benchmark(run)


# --- one 1 s span from clips of growing length: cost follows the span, not the clip --------------------------------


@pytest.mark.benchmark(group="1s-span-vs-clip-length")
@pytest.mark.parametrize("clip_s", [10, 60, 300])
def test_echo_cpu_span_of_clip(benchmark, clip_s):
    """The op the engine calls (the public wrapper also checks the whole clip for NaNs, which grows with it)."""
    if "cpu" not in ECHO_BACKENDS:
        pytest.skip("echo._C is not built")
    benchmark.extra_info["audio_s"] = 1.0
    wave = torch.from_numpy(_clip(clip_s, seed=clip_s))
    start = torch.tensor([(clip_s // 2) * SR])
    length = torch.tensor([SR])
    benchmark(lambda: log_mel_spans(wave, start, length, **CFG300.mel_args, backend="cpu"))


@pytest.mark.benchmark(group="span-length-sweep")
@pytest.mark.parametrize("span_s", [0.2, 1.0, 5.0, 20.0])
def test_echo_cpu_span_length(benchmark, span_s):
    if "cpu" not in ECHO_BACKENDS:
        pytest.skip("echo._C is not built")
    benchmark.extra_info["audio_s"] = span_s
    wave = torch.from_numpy(CLIP60)
    benchmark(lambda: log_mel(wave, [(0, 0, int(span_s * SR))], config=CFG300, backend="cpu"))
