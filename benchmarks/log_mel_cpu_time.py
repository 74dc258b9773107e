"""log-mel of a 30 s clip, echo's C++ kernel vs ``torch.stft`` alone, on one thread, by CPU time.

On a machine shared with other work the wall time of a 2-thread call mostly measures when the second thread gets
a core; the CPU time of a single-threaded call (``time.thread_time``, best of many interleaved rounds) does not.
Run: python benchmarks/log_mel_cpu_time.py
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import describe  # noqa: E402

from echo.audio import FeatureConfig  # noqa: E402
from echo.ops.log_mel import log_mel_spans  # noqa: E402


def main(rounds: int = 150) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(30 * 16_000) * 0.1
    window, cfg = torch.hann_window(400), FeatureConfig(chunk_length=30)
    start, length = torch.tensor([0]), torch.tensor([x.numel()])
    fns = {"torch.stft alone": lambda: torch.stft(x, 400, 160, window=window, return_complex=True),
           "echo C++ log-mel (whole pipeline)": lambda: log_mel_spans(x, start, length, **cfg.mel_args, backend="cpu",
                                                                      num_threads=1)}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.thread_time()
            fn()
            best[name] = min(best[name], time.thread_time() - t)
    for name, s in best.items():
        print(f"{name:36s} {s * 1e3:.3f} ms CPU (1 thread, best of {rounds})")
    a, b = best["echo C++ log-mel (whole pipeline)"], best["torch.stft alone"]
    print(f"echo / torch.stft: {a / b:.2f}\non {describe()}")


if __name__ == "__main__":
    main()
