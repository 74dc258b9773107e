"""The ablation table and bar chart from the arms' evaluation runs on the synthetic test split.

    python experiments/ablation/table.py --tokenizer runs/s0/aligned \
        --arm "A base (aligned)=runs/s0/eval/aligned" --arm "B SFT grounded=runs/B-s0/eval/sft" \
        --arm "C SFT interleaved=runs/s0/eval/sft,runs/s1/eval/sft" ... \
        --out experiments/ablation/table.md --png experiments/ablation/ablation.png

Each ``--arm "NAME=DIR[,DIR...]"`` names an arm and its ``echo eval`` output directories (or their predictions
files, .json or .json.gz, as kept in experiments/ablation/predictions/), one per training seed.
Per arm: accuracy per seed, the mean over seeds with a 95% Wilson interval over all its seeds' answers pooled, and
the means of extractable answers, spans cited and re-listened per answer, span IoU, the share of cited spans that
overlap a ground-truth span, output tokens and seconds per request (experiments/echo_demo/analyze.py); with
``--paired NAME``, each arm's first seed against that arm's on the same items (exact McNemar test: items only this
arm gets right, only the other does, two-sided p). Needs matplotlib for ``--png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from echo.stats import mcnemar, wilson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "echo_demo"))
from analyze import metrics, predictions  # noqa: E402

PAPER_MMAR = {"A": 51.80, "B": 56.77, "C": 52.26, "D": 69.99, "E": 63.15}


def arm_row(name: str, dirs: list[Path], tok) -> dict:
    runs = [metrics(d, tok) for d in dirs]
    correct = sum(round(m["accuracy"] * m["items"]) for m in runs)
    items = sum(m["items"] for m in runs)
    mean = lambda key: (sum(m[key] for m in runs) / len(runs)  # noqa: E731
                        if all(m[key] is not None for m in runs) else None)
    return {"arm": name, "seeds": len(runs), "per_seed": [m["accuracy"] for m in runs], "accuracy": correct / items,
            "ci95": wilson(correct, items), "items_per_seed": runs[0]["items"],
            **{k: mean(k) for k in ("extractable", "spans_cited_per_answer", "relistens_per_answer", "span_iou",
                                    "span_hit_rate", "output_length", "seconds_per_request")},
            "by_task": {t: sum(m["by_task"][t] for m in runs) / len(runs) for t in runs[0]["by_task"]}}


def correct_by_item(eval_dir: Path) -> dict[str, bool]:
    from echo.answers import string_match

    return {r["id"]: string_match(r["answer"], r["model_output"] or "", r["choices"]) for r in predictions(eval_dir)}


def fmt(x, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def markdown(rows: list[dict]) -> str:
    head = ("| arm | seeds | accuracy % (95% CI) | per seed % | extractable % | spans cited / answer | "
            "re-listens / answer | span IoU | spans on an event % | output tokens | s / request (batch 16) | "
            "paper (MMAR) |"
            + (" vs {} (only this / only that, p) |".format(rows[0]["paired_with"]) if "paired" in rows[0] else ""))
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        lo, hi = r["ci95"]
        letter = r["arm"].split()[0]
        lines.append(f"| {r['arm']} | {r['seeds']} | {100 * r['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | "
                     f"{', '.join(f'{100 * a:.1f}' for a in r['per_seed'])} | {fmt(100 * r['extractable'], '.1f')} | "
                     f"{fmt(r['spans_cited_per_answer'])} | {fmt(r['relistens_per_answer'])} | {fmt(r['span_iou'], '.3f')} | "
                     f"{fmt(None if r['span_hit_rate'] is None else 100 * r['span_hit_rate'], '.1f')} | "
                     f"{fmt(r['output_length'], '.1f')} | {fmt(r['seconds_per_request'])} | "
                     f"{PAPER_MMAR.get(letter, '–')} |"
                     + (f" {r['paired'][0]} / {r['paired'][1]}, p={r['paired'][2]:.3f} |" if "paired" in r else ""))
    tasks = list(rows[0]["by_task"])
    lines += ["", "| arm | " + " | ".join(t.removeprefix("scene_") for t in tasks) + " |",
              "|" + "|".join(["---"] * (len(tasks) + 1)) + "|"]
    lines += [f"| {r['arm']} | " + " | ".join(f"{100 * r['by_task'][t]:.1f}" for t in tasks) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def no_audio_best(report: Path | None) -> float | None:
    """The best no-audio baseline (each family by its best guesser) of an ``echo data audit --json`` report."""
    return None if report is None else json.loads(Path(report).read_text())["best_no_audio"]


def chart(rows: list[dict], chance: float, out: Path, no_audio: float | None = None) -> None:
    """The arms' bars, with uniform chance and (``no_audio``) the best guesser that never hears the audio."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.8))
    x = range(len(rows))
    acc = [100 * r["accuracy"] for r in rows]
    err = [[100 * (r["accuracy"] - r["ci95"][0]) for r in rows], [100 * (r["ci95"][1] - r["accuracy"]) for r in rows]]
    ax.bar(x, acc, yerr=err, capsize=4, color="tab:blue", alpha=0.8, label="echo-demo, synthetic test split")
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["per_seed"]), [100 * a for a in r["per_seed"]], color="k", s=12, zorder=3)
    ax.axhline(100 * chance, color="grey", ls="--", lw=1, label=f"uniform chance ({100 * chance:.0f}%)")
    if no_audio is not None:
        ax.axhline(100 * no_audio, color="tab:red", ls=":", lw=1.5,
                   label=f"best no-audio guesser ({100 * no_audio:.1f}%, `echo data audit`)")
    ax.set_xticks(list(x), [r["arm"] for r in rows], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Ablation at small scale (bars: pooled accuracy, 95% CI; dots: training runs)", fontsize=9)
    top = max([100 * r["ci95"][1] for r in rows] + [100 * (no_audio or chance)])
    ax.set_ylim(0, top + 18)  # room above the bars for the legend
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arm", action="append", required=True, help='"NAME=DIR[,DIR...]" (one DIR per seed)')
    ap.add_argument("--tokenizer", type=Path, help="a model directory whose tokenizer.json counts output tokens")
    ap.add_argument("--chance", type=float, default=0.25)
    ap.add_argument("--no-audio", type=Path, help="an `echo data audit --json` report of the test split: its best "
                    "no-audio baseline is drawn beside chance")
    ap.add_argument("--paired", help="the arm (its NAME) every arm is compared with item by item")
    ap.add_argument("--out", type=Path, help="write the markdown table here (default: print it)")
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    ap.add_argument("--png", type=Path, help="write the bar chart here")
    args = ap.parse_args()
    tok = None
    if args.tokenizer:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
    rows = []
    for spec in args.arm:
        name, sep, dirs = spec.partition("=")
        if not sep or not dirs:
            raise SystemExit(f"--arm {spec!r}: expected NAME=DIR[,DIR...]")
        paths = [Path(d) for d in dirs.split(",")]
        missing = [str(p) for p in paths if not (p / "predictions.json").is_file() and not p.is_file()]
        if missing:
            raise SystemExit(f"arm {name!r}: no predictions at {', '.join(missing)} (give an `echo eval` output "
                             "directory or its predictions file, .json or .json.gz)")
        rows.append(arm_row(name.strip(), paths, tok))
    if args.paired:
        names = [r["arm"] for r in rows]
        if args.paired not in names:
            raise SystemExit(f"--paired {args.paired!r}: no such arm ({names})")
        ref = correct_by_item(Path(dict(a.partition("=")[::2] for a in args.arm)[args.paired].split(",")[0]))
        for spec, r in zip(args.arm, rows):
            r["paired_with"] = args.paired
            r["paired"] = mcnemar(correct_by_item(Path(spec.partition("=")[2].split(",")[0])), ref)
    text = markdown(rows)
    if args.out:
        args.out.write_text(text)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.png:
        chart(rows, args.chance, args.png, no_audio_best(args.no_audio))
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
