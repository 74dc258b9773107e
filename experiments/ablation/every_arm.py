"""Every arm over all its training runs: the pooled table and the ablation bar chart, from the rows that table.py
wrote (``--json``) for each comparison. The run directories behind those rows did not outlive their machines, so
the committed JSON rows are the record that is pooled here.

    python experiments/ablation/every_arm.py --out experiments/ablation/every_arm.md \
        --png experiments/ablation/ablation.png

Each arm's runs are listed in ``RUNS`` as (table JSON beside this file, row name, index in that row's
``per_seed``). A run that two tables share (C's seed 0 is the reference of several) is listed once. ``--png``
needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from table import PAPER_MMAR, chart, no_audio_best, wilson

HERE = Path(__file__).resolve().parent
A_RUNS = [("table.json", "A base (aligned)", 0), ("table_e_seed1.json", "A base (aligned, seed 1)", 0)]
RUNS: dict[str, list[tuple[str, str, int]]] = {
    "A base (aligned)": A_RUNS,
    "B SFT grounded": [("table.json", "B SFT grounded", 0), ("table_b_seed1.json", "B SFT grounded (seed 1)", 0)],
    "C SFT interleaved": [("table.json", "C SFT interleaved", 0), ("table.json", "C SFT interleaved", 1),
                          ("table_sft_seed1.json", "C SFT interleaved (SFT seed 1)", 0)],
    "D SFT interleaved + GRPO": [
        ("table.json", "D SFT interleaved + GRPO", 0),
        ("table_grpo_seed1.json", "D SFT interleaved + GRPO (GRPO seed 1)", 0),
        ("table_sft_seed1.json", "D SFT interleaved + GRPO (SFT seed 1, GRPO seed 1)", 0)],
    # E from stage-0 seed 0 had zero gradients (no rollout earned a reward): its checkpoint is A's weights tensor
    # for tensor, so its greedy evaluation is A's (RESULTS.md, "E cannot start from A"). From seed 1, 6 of its 240
    # rollouts earned a reward.
    "E GRPO from A": [A_RUNS[0], ("table_e_seed1.json", "E GRPO from A (seed 1)", 0)],
}


def pooled(arm: str, runs: list[tuple[str, str, int]]) -> dict:
    per_seed, correct, items = [], 0, 0
    for file, name, index in runs:
        if not (HERE / file).is_file():
            raise SystemExit(f"{arm}: no {HERE / file} (write it with table.py --json)")
        rows = {r["arm"]: r for r in json.loads((HERE / file).read_text())}
        if name not in rows:
            raise SystemExit(f"{file}: no row {name!r} (rows: {sorted(rows)})")
        acc, n = rows[name]["per_seed"][index], rows[name]["items_per_seed"]
        per_seed.append(acc)
        correct += round(acc * n)
        items += n
    return {"arm": arm, "seeds": len(runs), "per_seed": per_seed, "accuracy": correct / items,
            "ci95": wilson(correct, items), "correct": correct, "items": items}


def markdown(rows: list[dict]) -> str:
    lines = ["| arm | runs | per run % | pooled % (95% CI) | correct / items | paper (MMAR) |",
             "|---|---:|---|---|---:|---:|"]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| {r['arm']} | {r['seeds']} | {', '.join(f'{100 * a:.1f}' for a in r['per_seed'])} | "
                     f"{100 * r['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | {r['correct']} / {r['items']} | "
                     f"{PAPER_MMAR[r['arm'][0]]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write the markdown table here (default: print it)")
    ap.add_argument("--png", type=Path, help="write the bar chart here")
    ap.add_argument("--chance", type=float, default=0.25)
    ap.add_argument("--no-audio", type=Path, default=HERE / "no_audio_baselines.json",
                    help="the test split's `echo data audit --json` report (default: the one beside this file, of the "
                    "split every arm was evaluated on)")
    args = ap.parse_args()
    rows = [pooled(arm, runs) for arm, runs in RUNS.items()]
    text = markdown(rows)
    if args.out:
        args.out.write_text(text)
    print(text)
    if args.png:
        chart(rows, args.chance, args.png, no_audio_best(args.no_audio))
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
