"""A decode step's single-query attention on the CPU: echo._C's kernel (``paged_attention`` backend ``cpu``) against
the torch path (two batched matmuls per sequence and layer, the reference's arithmetic) on one and two threads.
Shapes of omni-bench: 12 layers, 16 query / 4 K/V heads of 64, float32, ``--batch`` sequences of about ``--keys``
keys; every layer its own K/V cache, so K/V come from memory as in a real step (~150 MB at batch 8).

    python benchmarks/decode_attention_cpu.py [--batch 8] [--keys 800]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from machine import describe  # noqa: E402

from echo.ops import paged_attention as pa  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--keys", type=int, default=800)
    args = ap.parse_args()
    layers, heads, kv_heads, dim, block = 12, 16, 4, 64, 16
    per = args.keys // block + 1
    caches = [(torch.randn(args.batch * per, block, kv_heads, dim), torch.randn(args.batch * per, block, kv_heads, dim))
              for _ in range(layers)]
    q = torch.randn(args.batch, heads, dim)
    tables = [list(range(b * per, (b + 1) * per)) for b in range(args.batch)]
    ctx = [args.keys - 1 - b % 7 for b in range(args.batch)]
    threads_before = torch.get_num_threads()
    print(f"on {describe()}")
    results = {}
    for backend, threads in [("torch", 1), ("torch", 2), ("cpu", 1), ("cpu", 2)]:
        torch.set_num_threads(threads)
        pa_threads = pa.kernel_threads
        pa.kernel_threads = lambda t=threads: t  # the pool's threads, as inside a decode step's few_row_forward
        plan = pa.plan_paged_attention(tables, [1] * args.batch, ctx, block, "cpu", backend)

        def step():
            for kc, vc in caches:
                pa.paged_attention(q, kc, vc, tables, [1] * args.batch, ctx, dim**-0.5, plan=plan)

        for _ in range(3):
            step()
        times = []
        for _ in range(20):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        pa.kernel_threads = pa_threads
        results[(backend, threads)] = statistics.median(times)
    torch.set_num_threads(threads_before)
    base = results[("torch", 1)]
    kv_mb = sum(c[0].numel() + c[1].numel() for c in caches) * 4 / 2**20
    for (backend, threads), s in results.items():
        name = "echo._C kernel" if backend == "cpu" else "torch path (bmm per sequence)"
        print(f"{name:30s} {threads} thread(s): {s * 1e3:6.2f} ms for {layers} layers at batch {args.batch} x "
              f"{args.keys} keys ({kv_mb:.0f} MB of K/V); torch path on 1 thread / this: {base / s:.2f}x")


if __name__ == "__main__":
    main()
