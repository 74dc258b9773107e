"""One layer's single-query CPU attention in bf16, three ways, one thread: torch's bf16 ``bmm`` on the cache's
strided K/V views (the engine's path before), the same on float32 copies of K and V (the engine's path now), and a
per-head ``mm`` loop; float32 ``bmm`` beside them. Shapes: 4 K/V heads x 4 queries each, head_dim 64, 800 keys
(a 30 s clip and its prompt).

    python benchmarks/decode_attention_bf16.py [--keys 800]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=800)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n_k, kvh, g, hd = args.keys, 4, 4, 64
    print(f"on {describe()}")
    for dt in (torch.float32, torch.bfloat16):
        k_cache, v_cache = torch.randn(n_k, kvh, hd, dtype=dt), torch.randn(n_k, kvh, hd, dtype=dt)
        q = torch.randn(kvh, g, hd, dtype=dt)

        def native():
            k, v = k_cache.transpose(0, 1), v_cache.transpose(0, 1)
            s = torch.bmm(q, k.transpose(1, 2)).float() * hd ** -0.5
            return torch.bmm(s.softmax(-1).to(dt), v)

        def float32_copies():
            k, v = k_cache.transpose(0, 1).float(), v_cache.transpose(0, 1).float()
            s = torch.bmm(q.float(), k.transpose(1, 2)) * hd ** -0.5
            return torch.bmm(s.softmax(-1), v).to(dt)

        def per_head():
            return torch.stack([((q[h] @ k_cache[:, h].T).float() * hd ** -0.5).softmax(-1).to(dt) @ v_cache[:, h]
                                for h in range(kvh)])

        ways = [("bmm", native)] + ([("bmm on float32 copies", float32_copies), ("per-head mm", per_head)]
                                   if dt == torch.bfloat16 else [])
        for name, fn in ways:
            times = []
            for _ in range(200):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            print(f"{str(dt).split('.')[-1]:9s} {name:24s} {statistics.median(times) * 1e6:6.0f} us")


if __name__ == "__main__":
    main()
