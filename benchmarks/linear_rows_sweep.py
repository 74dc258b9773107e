"""Where the few-row linear kernel beats torch: every omni-bench decoder linear (61 weights) at a range of rows,
torch's ``F.linear`` on all threads against echo's kernel on all threads (as inside a decode step) and on one, in
float32 and, where the CPU has AVX-512-BF16, in bfloat16. Sets ``STEP_MAX_ROWS`` / ``BF16_STEP_MAX_ROWS``.

    python benchmarks/linear_rows_sweep.py [--rows 1 8 16 32 48 64 128] [--dtype float32 bfloat16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from bench_kernels import _decoder_linears  # noqa: E402
from echo.ops import linear as linear_mod  # noqa: E402
from machine import describe  # noqa: E402


def _time(weights, fn, rows: int, repeats: int = 7) -> float:
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=weights[0].dtype) for w in weights}
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            for w in weights:
                fn(xs[w.shape[1]], w)
            times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 48, 64, 128])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args()
    threads = torch.get_num_threads()
    print(f"on {describe()}")
    for name in args.dtype:
        dtype = getattr(torch, name)
        if dtype == torch.bfloat16 and linear_mod._bf16_kernel() is None:
            print("bfloat16: no kernel on this CPU (needs AVX-512-BF16); skipped")
            continue
        weights = [w.to(dtype) for w in _decoder_linears()]
        for rows in args.rows:
            base = _time(weights, torch.nn.functional.linear, rows)
            mine = [_time(weights, lambda x, w: linear_mod.linear(x, w, backend="cpu", num_threads=n), rows)
                    for n in (threads, 1)]
            print(f"{name} rows {rows:4d}: torch {base * 1e3:7.1f} ms, echo {threads} threads {mine[0] * 1e3:7.1f} ms "
                  f"({base / mine[0]:.2f}x), 1 thread {mine[1] * 1e3:7.1f} ms ({base / mine[1]:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
