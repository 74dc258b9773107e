"""Does writing time into the audio run make grounding learnable? A paired pilot on echo-demo.

Two arms start from the same checkpoint (echo-demo) and train the same LoRA on the same records; they differ only in
``time_marks_s`` (config.json's ``echo_time_marks_s``: 0 = the audio run as today, k = a time mark every k seconds,
``echo.protocol.TimeMarks``). Each record asks where one sound of a scene clip is, "When is <sound> heard?", and
the reference answer is its span, ``<seg>a, b</seg>``. Scored on the test split's clips (recordings never in
training), one sound per clip, by the IoU of the first span written with the sound's true span, beside the best
constant span fitted on the training records (what a model that does not listen can reach).

    python experiments/echo_demo/grounding_pilot.py --data runs/echo-demo/data --work runs/ground --marks 0 1

Every step is skipped when its output exists, and training resumes from its last checkpoint: rerun after a kill.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from recipe import event_caption  # the recipe's name for a mixed sound (this folder)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTION = "When is {sound} heard? Answer with its span in seconds, as <seg>start, end</seg>."


def records(split_jsonl: Path, seed: int) -> list[dict]:
    """One record per clip: a sound whose caption is unique in the clip, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for line in split_jsonl.read_text().splitlines():
        item = json.loads(line)
        events = item["meta"]["events"]
        names = [event_caption(ev) for ev in events]
        unique = [ev for ev, name in zip(events, names) if names.count(name) == 1]
        if not unique:
            continue
        ev = unique[int(rng.integers(len(unique)))]
        out.append({"id": item["id"], "audio": str(split_jsonl.parent / item["audio"]), "sound": event_caption(ev),
                    "span": [ev["start"], ev["end"]], "duration_s": item["duration_s"]})
    return out


def write_sft(rows: list[dict], path: Path) -> Path:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"id": r["id"], "audios": [r["audio"]],
                             "messages": [{"role": "user", "content": "<audio>" + QUESTION.format(sound=r["sound"])},
                                          {"role": "assistant",
                                           "content": f"<seg>{r['span'][0]:.2f}, {r['span'][1]:.2f}</seg>"}]})
                 for r in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


def base_checkpoint(src: Path, dest: Path, marks_s: float) -> Path:
    """``src`` with ``echo_time_marks_s`` set: links to its files, a config.json of its own."""
    from echo.models.config import TIME_MARKS_KEY

    if (dest / "config.json").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "config.json":
            (dest / f.name).symlink_to(f.resolve())
    config = json.loads((src / "config.json").read_text())
    config.pop(TIME_MARKS_KEY, None)
    if marks_s:
        config[TIME_MARKS_KEY] = marks_s
    (dest / "config.json").write_text(json.dumps(config, indent=1))
    return dest


def best_constant_span(train: list[dict]) -> tuple[float, float]:
    """The one span that scores the highest mean IoU on the training records (a grid of 0.5 s)."""
    from echo.protocol import span_iou

    grid = np.arange(0.0, 20.01, 0.5)
    best, best_iou = (0.0, 1.0), -1.0
    for a in grid:
        for b in grid[grid > a]:
            iou = float(np.mean([span_iou((a, b), tuple(r["span"])) for r in train]))
            if iou > best_iou:
                best, best_iou = (float(a), float(b)), iou
    return best


def evaluate(model_dir: Path, rows: list[dict], out: Path) -> list[dict]:
    import echo
    from echo.config import RelistenPolicy
    from echo.protocol import parse_span, seg_bodies, span_iou

    if out.is_file():
        return [json.loads(line) for line in out.read_text().splitlines()]
    model = echo.load(model_dir)
    params = echo.SamplingParams(temperature=0, max_new_tokens=24,
                                 relisten=RelistenPolicy(max_turns=0, after_max_turns="stop"))
    reqs = [{"audio": r["audio"], "prompt": QUESTION.format(sound=r["sound"])} for r in rows]
    results = model.generate(reqs, params)
    scored = []
    for r, res in zip(rows, results):
        text = res.samples[0].text
        spans = [s for s in map(parse_span, seg_bodies(text + ("</seg>" if text.count("<seg>") >
                                                                text.count("</seg>") else ""))) if s]
        iou = span_iou(spans[0], tuple(r["span"])) if spans else 0.0
        scored.append({"id": r["id"], "text": text, "span": spans[0] if spans else None, "truth": r["span"],
                       "iou": iou})
    out.write_text("".join(json.dumps(s) + "\n" for s in scored))
    return scored


def summary(scored: list[dict]) -> dict:
    """Mean IoU, the share that overlaps the truth at all (hit) and by IoU >= 0.5, and whether the span is placed
    at all: the correlation of its start with the true start, and the share whose middle lies within 0.5 s of
    the true span (a uniformly placed middle gets about the true span's length + 1 s over the clip's length)."""
    iou = np.array([s["iou"] for s in scored])
    placed = [s for s in scored if s["span"] is not None]
    starts = np.array([[s["span"][0], s["truth"][0]] for s in placed])
    near = [s["truth"][0] - 0.5 <= (s["span"][0] + s["span"][1]) / 2 <= s["truth"][1] + 0.5 for s in placed]
    return {"items": len(scored), "mean_iou": round(float(iou.mean()), 4), "hit": round(float((iou > 0).mean()), 4),
            "iou_0.5": round(float((iou >= 0.5).mean()), 4),
            "answered": round(len(placed) / len(scored), 4),
            "start_corr": round(float(np.corrcoef(starts.T)[0, 1]), 3) if len(set(starts[:, 0])) > 1 else None,
            "middle_near": round(float(np.mean(near)), 4) if near else 0.0}


def main() -> int:
    from echo.protocol import span_iou
    from echo.stats import mcnemar
    from echo.train.lora import merge_lora
    from echo.train.sft import SFTConfig, train_sft

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="echo data synth output with train/ and test/")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=Path.home() / ".cache" / "echo" / "echo-demo")
    ap.add_argument("--marks", type=float, nargs="+", default=[0.0, 1.0], help="time_marks_s of each arm")
    ap.add_argument("--n-train", type=int, default=700)
    ap.add_argument("--n-test", type=int, default=504)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    train = records(args.data / "train" / "synthetic.jsonl", args.seed)[: args.n_train]
    test = records(args.data / "test" / "synthetic.jsonl", args.seed + 1)[: args.n_test]
    data = write_sft(train, args.work / "train.jsonl")
    const = best_constant_span(train)
    report = {"train": len(train), "test": len(test), "constant_span": const,
              "constant": summary([{"iou": span_iou(const, tuple(r["span"])), "span": const, "truth": r["span"]}
                                   for r in test])}
    arms = {}
    for marks in args.marks:
        arm = args.work / f"marks{marks:g}"
        base = base_checkpoint(args.model, arm / "base", marks)
        merged = arm / "merged"
        if not (merged / "config.json").is_file():
            cfg = SFTConfig(format="grounded", lr=args.lr, epochs=args.epochs, grad_accum=4, lora_rank=16,
                            dtype=args.dtype, max_len=1024, save_every=25, seed=args.seed)
            t = time.time()
            result = train_sft(str(base), str(data), str(arm / "sft"), cfg)
            (arm / "train.json").write_text(json.dumps({"seconds": round(time.time() - t), **result}, indent=1))
            merge_lora(base, arm / "sft" / "final", merged)
        arms[marks] = evaluate(merged, test, arm / "predictions.jsonl")
        report[f"marks{marks:g}"] = summary(arms[marks])
    if len(arms) == 2:  # paired: which items each arm grounds (IoU >= 0.5) that the other does not
        a, b = (arms[m] for m in args.marks)
        gain, loss, p = mcnemar({s["id"]: s["iou"] >= 0.5 for s in b}, {s["id"]: s["iou"] >= 0.5 for s in a})
        report["paired_iou_0.5"] = {"only_second_arm": gain, "only_first_arm": loss, "p": p}
        report["paired_mean_iou_diff"] = round(float(np.mean([y["iou"] - x["iou"] for x, y in zip(a, b)])), 4)
    (args.work / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
