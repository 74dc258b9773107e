"""Can echo-demo learn where a sound is? A grounding stage in pieces, with a learning curve.

The pilot (``grounding_pilot.py``) trained 400 records once and found no placement at all. This run asks the same
question with what the pilot named as missing: far more records, easy items first among them, shorter clips (so a
record costs less), and denser supervision. Every clip of ``echo data synth --families scene_when`` (5-9 s,
``--clip-s``) gives records in messages-JSONL:

- *when*: "When is <sound> heard? Answer with its span in seconds, as <seg>start, end</seg>." answered by the
  sound's true span (to 0.1 s). Easy clips: the sound alone (in silence or over a music bed); medium: among
  distractor sounds and speech.
- *timeline* (medium clips): "List the sounds you hear in order, each as <seg>start, end</seg> and its name." answered
  by every event of the clip in order, so one forward teaches where each of its sounds is.
- *naming* (medium clips, ``--naming``): "What is heard at <seg>a, b</seg>?" about a sound the *when* question does
  not name, answered by its caption: the other direction between a sound's rows and its name.

Training runs in stages of ``--stage-records`` records. Each stage trains a LoRA on the previous stage's merged model
(a fresh adapter each stage, its own warmup and cosine), merges it, and is scored greedily on the test split's clips
(recordings never in training) by the IoU of the first span written with the truth, beside the best constant span
fitted on the training records (what a model that does not listen reaches). The report is the curve over stages.

    python experiments/echo_demo/grounding.py --work runs/grounding --marks 1 --stages 8

Every stage is skipped when its output exists and resumes from its checkpoint: rerun after a kill.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from grounding_pilot import QUESTION, base_checkpoint, best_constant_span, evaluate, summary  # this folder
from recipe import event_caption

from echo.protocol import on_marks

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TIMELINE = "List the sounds you hear in order, each as <seg>start, end</seg> and its name."
NAMING = "What is heard at {span}? Answer with what you hear."


def synth(out: Path, split: str, n: int, seed: int, clip_s: tuple[float, float], levels: list[str],
          distractors: int | None = None, sounds: list[str] | None = None, held_out_classes: bool = False) -> Path:
    """``echo data synth`` of scene_when, its ``levels`` in turn (it resumes an unfinished run)."""
    cmd = [sys.executable, "-m", "echo", "data", "synth", "--families", "scene_when", "--difficulty", *levels,
           "--split", split, "--n", str(n), "--seed", str(seed), "--out", str(out), "--clip-s",
           *map(str, clip_s), "--no-progress", *([] if distractors is None else ["--distractors", str(distractors)]),
           *(["--sounds", *sounds] if sounds else []), *(["--held-out-classes"] if held_out_classes else [])]
    if not (out / "synthetic.jsonl").is_file() or len((out / "synthetic.jsonl").read_text().splitlines()) < n:
        subprocess.run(cmd, check=True)
    return out / "synthetic.jsonl"


def span_text(a: float, b: float) -> str:
    return f"<seg>{a:.1f}, {b:.1f}</seg>"


def clip_items(jsonl: Path) -> list[dict]:
    """Each clip: its audio, level, the asked sound and its span, and every event in order."""
    out = []
    for line in jsonl.read_text().splitlines():
        item = json.loads(line)
        events = sorted(item["meta"]["events"], key=lambda e: e["start"])
        target = next(e for e in events if [round(e["start"], 2), round(e["end"], 2)] ==
                      [round(x, 2) for x in item["spans"][0]])
        out.append({"id": item["id"], "audio": str(jsonl.parent / item["audio"]), "level": item["difficulty"],
                    "sound": event_caption(target), "span": [target["start"], target["end"]],
                    "events": [(e["start"], e["end"], event_caption(e)) for e in events],
                    "duration_s": item["duration_s"]})
    return out


def train_records(clips: list[dict], timeline: bool = True, snap_s: float = 0.0, naming: bool = False) -> list[dict]:
    """messages-JSONL rows: a *when* record for every clip, a *timeline* record for every clip with several
    sounds (with ``timeline``), a *naming* record for every clip with several sounds (with ``naming``: "What is
    heard at <seg>a, b</seg>?" about a sound the *when* question does not name, answered by its caption);
    interleaved clip by clip, so that every stage sees every kind. With ``snap_s`` every span is the sound's span
    widened to multiples of it."""
    rows = []
    for c in clips:
        user = lambda q: [{"role": "user", "content": "<audio>" + q}]  # noqa: E731
        grid = lambda a, b: on_marks(a, b, snap_s, c["duration_s"]) if snap_s else (a, b)  # noqa: E731
        rows.append({"id": c["id"] + "-when", "audios": [c["audio"]], "messages": user(
            QUESTION.format(sound=c["sound"])) + [{"role": "assistant", "content": span_text(*grid(*c["span"]))}]})
        other = [(a, b, name) for a, b, name in c["events"] if [a, b] != c["span"]]
        if naming and other:
            a, b, name = other[0]
            rows.append({"id": c["id"] + "-naming", "audios": [c["audio"]], "messages": user(
                NAMING.format(span=span_text(*grid(a, b)))) + [{"role": "assistant", "content": name}]})
        if timeline and len(c["events"]) > 1:
            listing = "; ".join(f"{span_text(a, b)} {name}" for a, b, name in c["events"]) + "."
            rows.append({"id": c["id"] + "-timeline", "audios": [c["audio"]], "messages": user(TIMELINE) + [
                {"role": "assistant", "content": listing}]})
    return rows


def placement(scored: list[dict]) -> dict:
    """Which parts of the span follow the truth: correlations over the answered items of the span's start, its
    middle and its length with the true ones (a model that hears how long a sound is but not where it is gets the
    length and not the start)."""
    q = [s for s in scored if s["span"] is not None]
    got, true = np.array([s["span"] for s in q], dtype=float), np.array([s["truth"] for s in q], dtype=float)
    corr = lambda a, b: round(float(np.corrcoef(a, b)[0, 1]), 3) if len(q) > 2 and a.std() > 0 else None  # noqa: E731
    return {"start_corr": corr(got[:, 0], true[:, 0]), "middle_corr": corr(got.mean(1), true.mean(1)),
            "length_corr": corr(got[:, 1] - got[:, 0], true[:, 1] - true[:, 0]),
            "distinct_starts": len({s["span"][0] for s in q})}


def which_sound(scored: list[dict], clips: list[dict], grid_s: float = 0.0, trained: set[str] | None = None) -> dict:
    """Which sound of the clip each answer matches best (highest IoU): the named one, another one (a model that finds
    sounds but not which is named), or none (it overlaps no sound); with ``grid_s``, how many answers are exactly
    the named sound's span widened to multiples of it (``--snap``'s reference answer, its end not cut at the clip's);
    with ``trained`` (the sound captions heard in the training clips), the named share apart for clips whose named
    sound's class was heard in training and for those whose class was not.
    """
    from echo.protocol import span_iou

    by_id = {c["id"]: c for c in clips}
    named = other = exact = 0
    by_class = {True: [], False: []}
    for s in scored:
        c = by_id[s["id"]]
        hit = False
        if s["span"] is not None:
            ious = [(span_iou(tuple(s["span"]), (a, b)), (a, b) == tuple(c["span"])) for a, b, _ in c["events"]]
            best = max(ious)
            hit = bool(best[0] > 0 and best[1])
            named += hit
            other += best[0] > 0 and not best[1]
            if grid_s:  # a clip end one step further: the widening is never cut at the clip's end here
                exact += tuple(s["span"]) == on_marks(*c["span"], grid_s, c["duration_s"] + grid_s)
        if trained is not None:
            by_class[c["sound"] in trained].append(hit)
    out = {"best_match_named": round(named / len(scored), 4), "best_match_other": round(other / len(scored), 4)}
    if grid_s:
        out["exact_on_grid"] = exact
    for seen, hits in by_class.items():
        if hits:
            out[f"named_class_{'trained' if seen else 'untrained'}"] = {
                "clips": len(hits), "best_match_named": round(float(np.mean(hits)), 4)}
    return out


def main() -> int:
    from echo.protocol import span_iou
    from echo.stats import mcnemar
    from echo.train.lora import merge_lora
    from echo.train.sft import SFTConfig, train_sft

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=Path.home() / ".cache" / "echo" / "echo-demo")
    ap.add_argument("--marks", type=float, default=1.0, help="time_marks_s (0: the audio run without marks)")
    ap.add_argument("--clips", type=int, default=2400, help="training clips (the levels in turn)")
    ap.add_argument("--levels", nargs="+", default=["easy", "medium"], choices=["easy", "medium", "hard"])
    ap.add_argument("--no-timeline", dest="timeline", action="store_false", help="no *timeline* records")
    ap.add_argument("--naming", action="store_true", help="add a *naming* record for every clip with several sounds")
    ap.add_argument("--snap", type=float, default=0.0, metavar="S",
                    help="answers widened to multiples of S seconds (with --marks S: the marks' own text)")
    ap.add_argument("--test-clips", type=int, default=200)
    ap.add_argument("--distractors", type=int, default=None,
                    help="distractor sounds beside the named one from medium on (default: the level's)")
    ap.add_argument("--clip-s", type=float, nargs=2, default=(5.0, 9.0))
    ap.add_argument("--sounds", nargs="+", help="the recorded-sound sources (echo data synth --sounds)")
    ap.add_argument("--held-out-classes", action="store_true", help="no sound class of the test clips in training")
    ap.add_argument("--stages", type=int, default=8)
    ap.add_argument("--stage-records", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-merged", action="store_true", help="keep every stage's merged model (default: the last)")
    args = ap.parse_args()

    work = args.work
    data = lambda split, n: clip_items(synth(work / "data" / split, split, n, args.seed, args.clip_s,  # noqa: E731
                                             args.levels, args.distractors, args.sounds,
                                             args.held_out_classes))
    train, test = data("train", args.clips), data("test", args.test_clips)
    rows = train_records(train, args.timeline, args.snap, args.naming)
    const = best_constant_span([{"span": c["span"]} for c in train])
    trained = {name for c in train for _, _, name in c["events"]}  # the sound classes heard in training
    levels = sorted({c["level"] for c in test})
    report = {"marks_s": args.marks, "levels": args.levels, "distractors": args.distractors,
              **({"sounds": args.sounds} if args.sounds else {}),
              **({"held_out_classes": True} if args.held_out_classes else {}),
              "timeline": args.timeline, "snap_s": args.snap, **({"naming": True} if args.naming else {}),
              "train_clips": len(train), "train_records": len(rows), "test_clips": len(test),
              "constant_span": const, "stages": []}
    for level in [None, *levels]:
        part = [c for c in test if level in (None, c["level"])]
        const_scored = [{"id": c["id"], "iou": span_iou(const, tuple(c["span"])), "span": list(const),
                         "truth": c["span"]} for c in part]
        report[f"constant{'' if level is None else '_' + level}"] = {**summary(const_scored),
                                                                      **which_sound(const_scored, part, 0.0, trained)}

    prev = base_checkpoint(args.model, work / "base", args.marks)
    scored_prev = None
    for stage in range(1, args.stages + 1):
        chunk = rows[(stage - 1) * args.stage_records: stage * args.stage_records]
        if len(chunk) < args.stage_records:
            print(f"stage {stage}: only {len(chunk)} records left; stopping", flush=True)
            break
        sdir = work / f"stage{stage}"
        merged = sdir / "merged"
        if not (sdir / "train.json").is_file():  # trained and merged (a later stage may have removed the merge)
            data = sdir / "train.jsonl"
            if not data.is_file():
                sdir.mkdir(parents=True, exist_ok=True)
                data.write_text("".join(json.dumps(r) + "\n" for r in chunk))
            cfg = SFTConfig(format="grounded", lr=args.lr, epochs=1, grad_accum=args.grad_accum,
                            lora_rank=args.rank, dtype=args.dtype, max_len=1024, save_every=10, seed=args.seed + stage,
                            warmup_steps=5)
            t = time.time()
            result = train_sft(str(prev), str(data), str(sdir / "sft"), cfg)
            seconds = round(time.time() - t)
            merge_lora(prev, sdir / "sft" / "final", merged)
            (sdir / "train.json").write_text(json.dumps({"seconds": seconds, "steps": result["steps"]}, indent=1))
        scored = evaluate(merged, [{"id": c["id"], "audio": c["audio"], "sound": c["sound"], "span": c["span"]}
                                   for c in test], sdir / "predictions.jsonl")
        level_of = {c["id"]: c["level"] for c in test}
        entry = {"stage": stage, "records_seen": stage * args.stage_records,
                 **json.loads((sdir / "train.json").read_text()), "all": summary(scored),
                 "placement": placement(scored), "where": which_sound(scored, test, args.snap, trained)}
        for level in levels:
            entry[level] = summary([s for s in scored if level_of[s["id"]] == level])
        losses = [json.loads(x)["loss"] for x in (sdir / "sft" / "log.jsonl").read_text().splitlines()]
        entry["loss_first_last"] = [round(losses[0], 3), round(float(np.mean(losses[-5:])), 3)]
        if scored_prev is not None:  # paired against the stage before: items grounded (IoU >= 0.5) by one only
            gain, loss, p = mcnemar({s["id"]: s["iou"] >= 0.5 for s in scored},
                                    {s["id"]: s["iou"] >= 0.5 for s in scored_prev})
            entry["vs_previous_iou_0.5"] = {"only_this": gain, "only_previous": loss, "p": p}
        report["stages"].append(entry)
        print(json.dumps(entry), flush=True)
        (work / "report.json").write_text(json.dumps(report, indent=1, default=str))
        if not args.keep_merged and prev.parent.name.startswith("stage"):
            shutil.rmtree(prev, ignore_errors=True)  # the adapters stay; merge_lora rebuilds it
        prev, scored_prev = merged, scored
    (work / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "stages"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
