"""Training curves of an echo-demo run as one PNG: the loss of stage 0 (projector alignment) and stage 1 (SFT) over
optimizer steps (a running mean over ``--window`` steps), and, when a GRPO stage ran (``grpo/``, ``grpo-aligned/``),
its reward, accuracy on its own rollouts and re-listens per rollout over steps.

    python experiments/echo_demo/plot.py --work runs/echo-demo --out experiments/echo_demo/training.png

Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def running_mean(x: np.ndarray, window: int) -> np.ndarray:
    if len(x) < window:
        return x
    return np.convolve(x, np.ones(window) / window, mode="valid")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--window", type=int, default=20)
    args = ap.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, read_log(args.work / sub / "log.jsonl")) for name, sub in
              (("stage 0: align (projector)", "align/sft"), ("stage 1: SFT interleaved (LoRA)", "sft"),
               ("stage 1b: head rows of the tags", "heads"),
               ("stage 2: GRPO from SFT (arm D)", "grpo"), ("GRPO from aligned (arm E)", "grpo-aligned"))]
    panels = [(n, rows) for n, rows in panels if rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels):
        if "reward" in rows[0]:  # GRPO: its "loss" is the policy-gradient surrogate, not worth a curve
            steps = np.array([r["step"] for r in rows])
            w = min(max(1, args.window // 4), len(rows))
            for key, color in (("reward", "tab:green"), ("reward/accuracy", "tab:red"),
                               ("relistens_per_trajectory", "tab:purple")):
                y = np.array([r[key] for r in rows])
                ax.plot(steps, y, alpha=0.25, color=color)
                ax.plot(steps[w - 1:], running_mean(y, w), color=color, label=f"{key} (mean of {w})")
        elif "loss" in rows[0]:
            steps, loss = np.array([r["step"] for r in rows]), np.array([r["loss"] for r in rows])
            ax.plot(steps, loss, alpha=0.25, color="tab:blue")
            w = min(args.window, len(loss))
            ax.plot(steps[w - 1:], running_mean(loss, w), color="tab:blue", label=f"loss (mean of {w})")
            ax.set_ylabel("cross-entropy per label token")
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
