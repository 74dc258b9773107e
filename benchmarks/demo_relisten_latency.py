"""Latency per answer of a trained checkpoint at batch 1, with re-listening and without it (``max_turns=0``: a
``</seg>`` is kept as text and decoding goes on without the splice), greedy, on the first items of a synthetic split.

    python benchmarks/demo_relisten_latency.py --model runs/echo-demo/sft-heads --data runs/echo-demo/data/test [--items 14]

A one-shot measurement (not collected by pytest); prints the machine line beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, type=Path, help="an `echo data synth` directory")
    ap.add_argument("--items", type=int, default=14)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()

    import echo
    from echo.config import EngineConfig, RelistenPolicy
    from echo.engine.llm import Engine
    from echo.protocol import build_prompt

    rows = [json.loads(line) for line in (args.data / "synthetic.jsonl").read_text().splitlines()][: args.items]
    model = echo.load(args.model)
    params = echo.SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens)
    print(f"machine: {describe()}")
    for turns in (8, 0):
        engine = Engine(model, EngineConfig(relisten=RelistenPolicy(max_turns=turns), kv_cache_bytes=1 << 30))
        seconds, tokens, relistens = [], [], []
        for r in rows:
            t = time.perf_counter()
            out = engine.generate([{"audio": str(args.data / r["audio"]), "prompt": build_prompt(r["question"], r["choices"]),
                                    "params": params}])[0]
            seconds.append(time.perf_counter() - t)
            s = out.samples[0]
            tokens.append(sum(s.mask))
            relistens.append(sum(x.decision.action == "relisten" for x in s.relistens))
        print(f"max_turns={turns}: {statistics.median(seconds):.2f} s/answer median ({statistics.mean(seconds):.2f} "
              f"mean) over {len(rows)} answers; {statistics.mean(tokens):.1f} sampled tokens, "
              f"{statistics.mean(relistens):.2f} re-listens per answer")


if __name__ == "__main__":
    main()
