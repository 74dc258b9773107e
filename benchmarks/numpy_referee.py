"""WhisperFeatureExtractor's numpy path as a referee, timed beside echo's log-mel in a process of its own.

numpy reads OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE once, when it loads; where a machine sets them the numpy STFT
slows down and every "x faster than the extractor" ratio inflates. ``run_referee`` therefore starts this file in a
subprocess with both variables removed (or, for comparison, as set), where it times the numpy extractor, its
torch path, ``torch.stft`` alone and echo's kernels on the same clip, and reports which BLAS kernel numpy ran.
Run: python benchmarks/numpy_referee.py   (prints JSON; bench_log_mel.py calls it both ways)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
SR = 16_000


def numpy_kernel() -> str:
    """Which BLAS numpy runs, and with which core type (threadpoolctl when installed, else numpy's build config)."""
    try:
        from threadpoolctl import threadpool_info

        return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '?')} "
                         f"({i.get('num_threads')} threads)" for i in threadpool_info() if i.get("user_api") == "blas")
    except ImportError:
        import io
        from contextlib import redirect_stdout

        import numpy as np

        buf = io.StringIO()
        with redirect_stdout(buf):
            np.show_config()
        lines = [ln.strip() for ln in buf.getvalue().splitlines() if "name" in ln or "openblas configuration" in ln]
        return "numpy.show_config: " + " | ".join(lines[:4])


def _median(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(spans_rounds: int = 2) -> dict:
    import numpy as np
    import torch
    from transformers import WhisperFeatureExtractor

    from echo.audio import FeatureConfig, log_mel
    from echo.ops import _backend
    from echo.ops.log_mel import BACKENDS

    rng = np.random.default_rng(0)
    t = np.arange(30 * SR) / SR
    clip = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    fe = WhisperFeatureExtractor(feature_size=128, chunk_length=30)
    wave = torch.from_numpy(clip)
    window = torch.hann_window(400)
    out = {
        "whisper numpy": _median(lambda: fe._np_extract_fbank_features(clip[None], "cpu"), 10),
        "whisper __call__ (torch path)": _median(lambda: fe(clip, sampling_rate=SR, return_tensors="np"), 10),
        "torch.stft alone": _median(lambda: torch.stft(wave, 400, 160, window=window, return_complex=True), 20),
    }
    cfg = FeatureConfig(chunk_length=30)
    for b in ("cpu", "torch"):
        if b in _backend.available(BACKENDS, "cpu"):
            out[f"echo {b}"] = _median(lambda: log_mel(wave, config=cfg, backend=b), 20)
    if spans_rounds:
        fe300 = WhisperFeatureExtractor(feature_size=128, chunk_length=300)
        clip60 = np.tile(clip, 2)
        spans = [(int(s * SR), int((s + d) * SR)) for s, d in zip(rng.uniform(0, 55, 8), rng.uniform(2, 5, 8))]

        def reference_relisten():
            for s, e in spans:
                padded = np.zeros(fe300.n_samples, dtype=np.float32)
                padded[: e - s] = clip60[s:e]
                fe300._np_extract_fbank_features(padded[None], "cpu")

        out["8 spans: whisper numpy, each padded to 300 s"] = _median(reference_relisten, spans_rounds)
        w60 = torch.from_numpy(clip60)
        if "cpu" in _backend.available(BACKENDS, "cpu"):
            out["8 spans: echo cpu"] = _median(
                lambda: log_mel(w60, [(0, s, e) for s, e in spans], config=FeatureConfig(chunk_length=300),
                                backend="cpu"), 20)
    return {"times_s": out, "numpy_kernel": numpy_kernel(),
            "env": {k: os.environ.get(k) for k in OPENBLAS_VARS}}


def run_referee(clean: bool = True, spans_rounds: int = 2) -> dict:
    """``measure()`` in a fresh interpreter, with the OpenBLAS variables removed when ``clean``."""
    env = dict(os.environ)
    if clean:
        for k in OPENBLAS_VARS:
            env.pop(k, None)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(spans_rounds)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(result: dict, label: str) -> str:
    times = result["times_s"]
    base = times["whisper numpy"]
    lines = [f"{label}: OpenBLAS env {result['env']}; numpy kernel: {result['numpy_kernel']}"]
    for name, s in times.items():
        ref = times["8 spans: whisper numpy, each padded to 300 s"] if name.startswith("8 spans") else base
        lines.append(f"  {name:48s} {s * 1e3:9.2f} ms  {ref / s:7.1f}x vs the numpy extractor")
    if "echo cpu" in times:
        lines.append(f"  echo cpu / torch.stft alone: {times['echo cpu'] / times['torch.stft alone']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2)))
