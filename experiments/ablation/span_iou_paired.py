"""Span IoU of two evaluation runs on the same items, and a 95% paired bootstrap interval for its difference
(items resampled with replacement; each run's mean over the cited spans of the resampled items).

    python experiments/ablation/span_iou_paired.py runs/Diou-s0/eval/grpo runs/Diou-s0/eval/sft
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "echo_demo"))
from analyze import predictions, span_ious  # noqa: E402


def per_item(eval_dir: Path) -> dict[str, list[float]]:
    return {r["id"]: span_ious(r) for r in predictions(eval_dir)}


def mean_iou(runs: dict[str, list[float]], ids: list[str]) -> float:
    values = [x for i in ids for x in runs[i]]
    return sum(values) / len(values) if values else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="an `echo eval --benchmark synthetic` output directory or its "
                                           "predictions file (.json, .json.gz)")
    ap.add_argument("baseline", type=Path, help="the run it is compared with, on the same items")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    a, b = per_item(args.run), per_item(args.baseline)
    ids = sorted(a.keys() & b.keys())
    if not ids:
        raise SystemExit(f"{args.run} and {args.baseline} share no items")
    rng = random.Random(args.seed)
    diffs = sorted(mean_iou(a, s) - mean_iou(b, s)
                   for s in ([rng.choice(ids) for _ in ids] for _ in range(args.resamples)))
    lo, hi = diffs[int(0.025 * len(diffs))], diffs[int(0.975 * len(diffs)) - 1]
    ours, theirs = mean_iou(a, ids), mean_iou(b, ids)
    print(f"{len(ids)} items: span IoU {ours:.4f} vs {theirs:.4f}, difference {ours - theirs:+.4f}, 95% paired "
          f"bootstrap [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    main()
