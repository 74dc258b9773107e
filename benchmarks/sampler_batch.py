"""One sampling call for a batch of rows (the engine's per-step sampler), one thread, medians of 100 calls:
greedy with and without a logits processor, temperature 1, and temperature 1 with top-k 50 and top-p 0.9.

    python benchmarks/sampler_batch.py [--rows 8] [--vocab 32000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from machine import describe  # noqa: E402

from echo.config import SamplingParams  # noqa: E402
from echo.engine.sampler import sample  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, vocab = args.rows, args.vocab
    logits = torch.randn(rows, vocab)
    histories = [list(range(800)) for _ in range(rows)]

    def force(history, x):  # a processor that forces one token, as the benchmarks' scripted trajectories do
        out = torch.full_like(x, float("-inf"))
        out[5] = 0.0
        return out

    cases = {
        "greedy, one logits processor": (SamplingParams(temperature=0), [force]),
        "greedy": (SamplingParams(temperature=0), []),
        "temperature 1": (SamplingParams(temperature=1.0), []),
        "temperature 1, top-k 50, top-p 0.9": (SamplingParams(temperature=1.0, top_k=50, top_p=0.9), []),
    }
    print(f"on {describe()}")
    for name, (params, procs) in cases.items():
        gens = [torch.Generator().manual_seed(i) for i in range(rows)]
        times = []
        for _ in range(100):
            t = time.perf_counter()
            sample(logits, [params] * rows, gens, histories, procs, never=[vocab - 1])
            times.append(time.perf_counter() - t)
        print(f"{name:38s} {rows} rows x {vocab}: {statistics.median(times) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
