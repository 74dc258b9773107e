"""Metrics of one evaluation run on the synthetic test split, beyond the scorer's accuracy: a 95% Wilson interval,
the rate of extractable answers, spans cited and spans re-listened to (audio inserted by the engine) per answer, span
IoU of the cited spans against the ground-truth spans (and the share of cited spans that overlap one at all),
output length, seconds per request.

    python experiments/echo_demo/analyze.py EVAL_DIR [EVAL_DIR ...] [--tokenizer MODEL_DIR]

``EVAL_DIR`` is an ``echo eval --benchmark synthetic`` output directory (its ``predictions.json``), or such a file
kept on its own, gzipped or not (experiments/ablation/predictions/: run directories do not outlive their machine).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from echo.answers import string_match
from echo.protocol import cited_span_ious
from echo.stats import wilson


def span_ious(record: dict) -> list[float]:
    """Each span a prediction cites (``<seg>a, b</seg>`` in its response), scored by its best IoU with the item's
    ground-truth spans (0 when it overlaps none)."""
    return cited_span_ious(record["response"], record.get("spans"))


def predictions(path: Path) -> list[dict]:
    """The records of an evaluation: ``path`` is its output directory or its predictions file (.json, .json.gz)."""
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.json"
    if not path.is_file():
        raise SystemExit(f"no predictions at {path} (give an `echo eval` output directory or its predictions.json)")
    return json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())


def metrics(eval_dir: Path, tokenizer=None) -> dict:
    records = predictions(eval_dir)
    for r in records:  # the official rule, as the scorer applies it
        r["correct"] = string_match(r["answer"], r["model_output"] or "", r["choices"])
    correct = sum(r["correct"] for r in records)
    cited, ious, lengths = [], [], []
    for r in records:
        item_ious = span_ious(r)
        cited.append(len(item_ious))
        ious += item_ious
        lengths.append(len(tokenizer.encode(r["response"]).ids) if tokenizer else len(r["response"].split()))
    n = len(records)
    lo, hi = wilson(correct, n)
    engine = [r for r in records if "relistens" in r]  # predictions written with the engine's records
    by_task: dict[str, list[int]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(int(r["correct"]))
    return {"items": n, "accuracy": correct / n, "ci95": [lo, hi],
            "extractable": sum(not r["no_answer"] for r in records) / n,
            "spans_cited_per_answer": sum(cited) / n, "answers_citing_spans": sum(c > 0 for c in cited) / n,
            "relistens_per_answer": sum(r["relistens"] for r in engine) / len(engine) if engine else None,
            "seconds_per_request": sum(r["seconds"] for r in engine) / len(engine) if engine else None,
            "engine_records": len(engine),
            "span_iou": sum(ious) / len(ious) if ious else None,
            "span_hit_rate": sum(x > 0 for x in ious) / len(ious) if ious else None,
            "output_length": sum(lengths) / n, "length_unit": "tokens" if tokenizer else "words",
            "by_task": {k: sum(v) / len(v) for k, v in sorted(by_task.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("eval_dirs", nargs="+", type=Path)
    ap.add_argument("--tokenizer", type=Path, help="a model directory whose tokenizer.json counts output tokens")
    args = ap.parse_args()
    tok = None
    if args.tokenizer:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
    for d in args.eval_dirs:
        print(json.dumps({"run": str(d), **metrics(d, tok)}))


if __name__ == "__main__":
    main()
