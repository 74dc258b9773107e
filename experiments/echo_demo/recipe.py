"""The echo-demo recipe: data -> stage 0 (align the projector) -> stage 1 (SFT) -> 1b (the tags' head rows) ->
evaluation on the test split.

    python experiments/echo_demo/recipe.py --work runs/echo-demo [--until data|align|sft|eval] [--eval-aligned]
        [--grpo] [--grpo-aligned] [--sft-format grounded] [--grpo-from echo-demo --seed 1] [--grpo-reward NAME=W ...]
        [--controls] [--time-marks 1.0 --span-grid 1.0] [--families ... scene_when] [--sounds ...] [--held-out-classes]

Every step is skipped when its output exists and every training run resumes from its own last checkpoint, so
rerunning the same command after a kill continues where it stopped. Steps and outputs (under ``--work``):

- ``data/{train,val,test}``: ``echo data synth`` scene items of the seven scene_* families, one split each (no
  recording in two splits), easy and medium levels (10-20 s clips);
- ``base/``: the untrained assembly (``python -m echo convert demo --bare``) that stage 0 starts from;
- ``align/``: stage 0. Each mixed sound of the train clips, cut out with a margin, paired with its label (the
  transcript for a spoken prompt): short-answer records on which echo's SFT trains the projector only
  (``train_only=("projector",)``); the trained projector is ``parts/projector.safetensors`` and ``aligned/`` the
  checkpoint assembled with it;
- ``sft/``: stage 1, echo's SFT in the interleaved format on the train items' reference chains of thought, a LoRA
  adapter over ``aligned/``; ``sft-merged/`` the merged checkpoint and ``parts/lora.safetensors`` the adapter as
  assembly parts;
- ``heads/``, ``sft-heads/``: stage 1b, the output-head rows of the added tokens (tags) trained alone on the merged
  model (LoRA cannot move a row of the head); ``parts/lm_head_rows.safetensors``; ``demo-from-parts/`` is echo-demo
  assembled from the packages + ``parts/``, checked to have the trained model's logits;
- ``grpo/`` (``--grpo``): stage 2, GRPO with re-listening rollouts from ``sft-heads/`` (arm D);
  ``grpo-aligned/`` (``--grpo-aligned``): GRPO from ``aligned/`` without SFT (arm E); with ``--grpo-from MODEL``
  only stage 2, from that SFT model (``echo-demo`` is seed 0's C), evaluated with it as ``eval/sft``;
- ``eval/<model>``: ``echo eval --benchmark synthetic`` on the test split: ``sft`` (arm C, or B with
  ``--sft-format grounded``, evaluated without re-listening), ``aligned`` with ``--eval-aligned`` (arm A), ``grpo``
  and ``grpo-aligned``; with ``--controls`` also ``eval/<model>-silence`` (silence for audio) and
  ``eval/<model>-norelisten``, each paired with ``eval/<model>`` item by item (their ``compare.md``);
- ``data/audit.json``: ``echo data audit`` of the splits: uniform chance and the best no-audio guesser, the bar.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCENE = ("scene_heard_between", "scene_which_first", "scene_count", "scene_said_at", "scene_starts_when",
         "scene_longer", "scene_which_heard")
ALIGN_PROMPT = "What is heard in this clip?"
MARGIN_S = 0.3


def log(work: Path, stage: str, **fields) -> None:
    with open(work / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"stage": stage, "time": time.time(), **fields}) + "\n")
    print(f"[{stage}] " + ", ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


def make_data(work: Path, n_train: int, n_val: int, n_test: int, seed: int, families: tuple[str, ...] = SCENE,
              sounds: tuple[str, ...] | None = None, held_out_classes: bool = False, span_grid_s: float = 0.0
              ) -> dict[str, Path]:
    from echo.data.synthetic import SynthConfig, write_synthetic

    out = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        d = work / "data" / split
        if not (d / "synthetic.jsonl").is_file():  # write_synthetic resumes by item after a kill
            write_synthetic(SynthConfig(n=n, seed=seed, families=families, difficulties=("easy", "medium"),
                                        split=split, sounds=sounds, held_out_classes=held_out_classes,
                                        span_grid_s=span_grid_s), d,
                            progress=True)
        out[split] = d / "synthetic.jsonl"
    audit_path = work / "data" / "audit.json"
    if not audit_path.is_file():  # the bar a model must clear: what the test split gives away without the audio
        subprocess.run([sys.executable, "-m", "echo", "data", "audit", str(work / "data"), "--json", str(audit_path)])
        report = json.loads(audit_path.read_text())
        log(work, "audit", chance=round(report["chance"], 4), best_no_audio=round(report["best_no_audio"], 4),
            failing=report["failing"])
    return out


def event_caption(event: dict) -> str:
    return f'someone saying "{event["label"]}"' if event["kind"] == "speech" and event["label"] != \
        "a woman speaking" else event["label"]


def make_align_data(work: Path, train_jsonl: Path, name: str = "align") -> Path:
    """Every mixed sound of the clips in ``train_jsonl`` as a short clip of its own with its caption
    (messages-JSONL ``align/<name>.jsonl``, audio in ``align/<name>-audio/``)."""
    import soundfile as sf
    from tqdm.auto import tqdm

    out = work / "align" / f"{name}.jsonl"
    if out.is_file():
        return out
    audio_dir = out.parent / ("audio" if name == "align" else f"{name}-audio")
    audio_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    items = [json.loads(line) for line in train_jsonl.read_text().splitlines()]
    for item in tqdm(items, desc=f"{name} data", unit="clip"):
        wave, sr = sf.read(train_jsonl.parent / item["audio"], dtype="float32")
        for k, ev in enumerate(item["meta"]["events"]):
            s, e = max(0.0, ev["start"] - MARGIN_S), min(len(wave) / sr, ev["end"] + MARGIN_S)
            path = audio_dir / f"{item['id']}-{k}.wav"
            if not path.is_file():
                sf.write(path, wave[int(s * sr):int(e * sr)], sr, subtype="PCM_16")
            rows.append({"id": f"{item['id']}-{k}", "audios": [str(path.relative_to(out.parent))],
                         "messages": [{"role": "user", "content": f"<audio>{ALIGN_PROMPT}"},
                                      {"role": "assistant", "content": event_caption(ev)}]})
    order = np.random.default_rng(0).permutation(len(rows))  # mix the clips' events across optimizer steps
    tmp = out.with_suffix(".partial")
    tmp.write_text("".join(json.dumps(rows[i]) + "\n" for i in order))
    tmp.rename(out)
    return out


def export_tensors(final: Path, prefix: str, dest: Path) -> Path:
    from safetensors.torch import load_file, save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(final / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if k.startswith(prefix)}, str(dest), metadata={"format": "pt"})
    return dest


def stage_align(work: Path, args) -> Path:
    from echo.models.convert.demo import build
    from echo.train.sft import SFTConfig, train_sft

    aligned = work / "aligned"
    if (aligned / "config.json").is_file():
        return aligned
    if args.aligned is not None:  # another run's stage 0: this run's arms differ only after it
        aligned.symlink_to(args.aligned.resolve(), target_is_directory=True)
        export_tensors(args.aligned, "multi_modal_projector.", work / "parts" / "projector.safetensors")
        return aligned
    data = make_align_data(work, work / "data" / "train" / "synthetic.jsonl")
    cfg = SFTConfig(format="grounded", lr=args.align_lr, epochs=1, grad_accum=args.grad_accum,
                    save_every=args.save_every, seed=args.seed, train_only=("projector",), max_len=1024)
    t = time.time()
    base = work / "base"  # the untrained assembly: not the echo-demo cache, which holds the shipped trained parts
    if not (base / "config.json").is_file():
        build(base, bare=True, force=True, time_marks_s=args.time_marks)
    result = train_sft(str(base), str(data), str(work / "align" / "sft"), cfg)
    log(work, "align", seconds=round(time.time() - t), **result)
    export_tensors(work / "align" / "sft" / "final", "multi_modal_projector.", work / "parts" / "projector.safetensors")
    if args.time_marks:  # the parts fit this audio layout only: every assembly from them takes it
        from echo.models.config import TIME_MARKS_KEY

        (work / "parts" / "config.json").write_text(json.dumps({TIME_MARKS_KEY: args.time_marks}))
    build(aligned, parts=work / "parts", force=True)
    return aligned


def check_hearing(work: Path, model_dir: Path, n: int = 120) -> dict:
    """Does the aligned model hear? Greedy captions of ``n`` held-out sounds (val split) against their labels, beside
    the accuracy of always answering the most frequent training caption (what a model that does not hear can reach)."""
    import collections

    import echo

    out = work / "align" / "hearing.json"
    if out.is_file():
        return json.loads(out.read_text())
    val = make_align_data(work, work / "data" / "val" / "synthetic.jsonl", "val")
    rows = [json.loads(line) for line in val.read_text().splitlines()][:n]
    train = [json.loads(line)["messages"][1]["content"]
             for line in (work / "align" / "align.jsonl").read_text().splitlines()]
    prior = collections.Counter(train).most_common(1)[0][0]
    model = echo.load(model_dir)
    reqs = [{"audio": str(val.parent / r["audios"][0]), "prompt": ALIGN_PROMPT} for r in rows]
    results = model.generate(reqs, echo.SamplingParams(temperature=0, max_new_tokens=24))
    said = [res.text.strip() for res in results]
    truth = [r["messages"][1]["content"] for r in rows]
    report = {"items": len(rows), "exact": sum(a == b for a, b in zip(said, truth)) / len(rows),
              "prior_caption": prior, "prior_exact": sum(t == prior for t in truth) / len(rows),
              "examples": [{"said": a, "truth": b} for a, b in zip(said[:12], truth[:12])]}
    out.write_text(json.dumps(report, indent=1))
    log(work, "hearing", **{k: v for k, v in report.items() if k != "examples"})
    return report


def stage_sft(work: Path, args) -> Path:
    from echo.train.lora import adapter_parts, merge_lora
    from echo.train.sft import SFTConfig, train_sft

    merged = work / "sft-merged"
    if (merged / "config.json").is_file():
        return merged
    cfg = SFTConfig(format=args.sft_format, lr=args.sft_lr, epochs=args.sft_epochs, grad_accum=args.sft_grad_accum,
                    save_every=args.save_every, seed=args.seed, lora_rank=args.lora_rank, max_len=2048)
    t = time.time()
    result = train_sft(str(work / "aligned"), str(work / "data" / "train" / "synthetic.jsonl"), str(work / "sft"), cfg)
    log(work, "sft", seconds=round(time.time() - t), **result)
    adapter_parts(work / "sft" / "final", work / "aligned", work / "parts" / "lora.safetensors")
    return merge_lora(work / "aligned", work / "sft" / "final", merged)


def stage_heads(work: Path, args) -> Path:
    """Stage 1b: the output rows of the added tokens (the tags, whose rows started as the mean of their pieces') on
    the same records, everything else frozen: LoRA cannot move a row of the head, and without this the model writes a
    tag's first piece (``<``) where the tag token should be, so no ``</seg>`` ever triggers a re-listen."""
    from echo.models.convert.assembly import AUDIO_TOKENS, TAG_TOKENS
    from echo.train.sft import SFTConfig, train_sft
    from safetensors.torch import load_file, save_file

    done = work / "sft-heads"
    if (done / "config.json").is_file():
        return done
    added = len(AUDIO_TOKENS + TAG_TOKENS)
    data = work / "heads.jsonl"
    if not data.is_file():
        train = work / "data" / "train"
        rows = [json.loads(line) for line in (train / "synthetic.jsonl").read_text().splitlines()[: args.heads_items]]
        data.write_text("".join(json.dumps({**r, "audio": str((train / r["audio"]).resolve())}) + "\n" for r in rows))
    cfg = SFTConfig(format=args.sft_format, lr=args.heads_lr, grad_accum=args.sft_grad_accum, save_every=args.save_every,
                    seed=args.seed, train_only=("lm_head",), train_last_rows=added, max_len=2048)
    t = time.time()
    result = train_sft(str(work / "sft-merged"), str(data), str(work / "heads"), cfg)
    log(work, "heads", seconds=round(time.time() - t), rows=added, **result)
    head = load_file(str(work / "heads" / "final" / "model.safetensors"))["language_model.lm_head.weight"]
    save_file({f"language_model.lm_head.weight[{head.shape[0] - added}:]": head[-added:].contiguous()},
              str(work / "parts" / "lm_head_rows.safetensors"), metadata={"format": "pt"})
    shutil.copytree(work / "heads" / "final", done)
    return done


def stage_parts(work: Path) -> Path:
    """echo-demo assembled from the packages + ``parts/`` (what ships) must be the merged SFT model: same logits."""
    import torch

    import echo
    from echo.models.convert.demo import build

    built = work / "demo-from-parts"
    if not (built / "config.json").is_file() or not (work / "parts" / "lm_head_rows.safetensors").is_file() or \
            (built / "config.json").stat().st_mtime < (work / "parts" / "lm_head_rows.safetensors").stat().st_mtime:
        build(built, parts=work / "parts", force=True)
    ids = torch.arange(100, 400)[None]
    with torch.no_grad():
        err = (echo.load(built)(ids) - echo.load(work / "sft-heads")(ids)).abs().max().item()
    log(work, "parts", max_abs_logit_diff=err, bytes=sum(f.stat().st_size for f in (work / "parts").iterdir()))
    if err > 1e-3:
        raise SystemExit(f"echo-demo built from {work / 'parts'} differs from the merged SFT model by {err}")
    return built


def stage_grpo(work: Path, args, start: Path, name: str) -> Path:
    """Stage 2: GRPO with interleaved rollouts through echo's engine (re-listening on), on the train split, from
    ``start`` (the SFT model: arm D; the aligned model: arm E). Full fine-tune of the decoder and projector (the
    audio encoder stays frozen), no reference model (kl_coef 0), echo's default reward terms unless
    ``--grpo-reward`` names others."""
    from echo.train.grpo import GRPOConfig, train_grpo
    from echo.train.grpo_loss import PolicyLossConfig
    from echo.train.rewards import RewardFn

    final = work / name / "final"
    if (final / "config.json").is_file():
        return final
    cfg = GRPOConfig(group_size=args.grpo_group, prompts_per_step=args.grpo_prompts, steps=args.grpo_steps,
                     lr=args.grpo_lr, max_new_tokens=args.grpo_max_tokens, micro_batch=args.grpo_group,
                     save_every=args.save_every, seed=args.seed, loss=PolicyLossConfig(kl_coef=0.0))
    reward = RewardFn.from_specs(args.grpo_reward)
    t = time.time()
    result = train_grpo(str(start), str(work / "data" / "train" / "synthetic.jsonl"), str(work / name), cfg, reward)
    log(work, name, seconds=round(time.time() - t), steps=result["steps"], records=result["records"])
    return final


def stage_eval(work: Path, model: Path, name: str, limit: int | None, relisten: bool = True,
               audio: str = "original", compare: str | None = None) -> dict:
    """``eval/<name>``; ``audio="silence"`` is the control without the clip; ``compare`` names the evaluation it is
    paired with item by item (``compare.md`` beside its summary)."""
    out = work / "eval" / name
    if not (out / "summary.json").is_file():
        cmd = [sys.executable, "-m", "echo", "eval", "--benchmark", "synthetic", "--data", str(work / "data" / "test"),
               "--model", str(model), "--out", str(out), "--max-new-tokens", "256", "--batch-size", "16",
               "--audio", audio]
        if compare:
            cmd += ["--compare", str(work / "eval" / compare)]
        if limit:
            cmd += ["--limit", str(limit)]
        if not relisten:  # the grounded format cites spans but never hears them again
            cmd += ["--max-relistens", "0"]
        t = time.time()
        subprocess.run(cmd, check=True)
        log(work, f"eval-{name}", seconds=round(time.time() - t))
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, type=Path, help="run directory")
    ap.add_argument("--until", choices=("data", "align", "sft", "eval"), default="eval")
    ap.add_argument("--n-train", type=int, default=700)
    ap.add_argument("--n-val", type=int, default=70)
    ap.add_argument("--n-test", type=int, default=504)
    ap.add_argument("--seed", type=int, default=0, help="training seed (order of records, LoRA init)")
    ap.add_argument("--data-seed", type=int, default=0, help="fixes the train/val/test items (keep it across seeds)")
    ap.add_argument("--families", nargs="+", default=list(SCENE),
                    help="scene families of the data (add scene_when: 'when is X heard?' answered with its span)")
    ap.add_argument("--sounds", nargs="+", default=None, help="recorded-sound sources (echo data synth --sounds)")
    ap.add_argument("--held-out-classes", action="store_true",
                    help="no sound class of the test split occurs in train (echo data synth --held-out-classes)")
    ap.add_argument("--time-marks", type=float, default=0.0, metavar="SECONDS",
                    help="the model's audio runs carry their time every SECONDS (ModelConfig.time_marks_s; 0: none)")
    ap.add_argument("--span-grid", type=float, default=0.0, metavar="SECONDS",
                    help="reference reasoning cites spans widened to multiples of SECONDS (echo data synth "
                    "--span-grid; with --time-marks, the marks' own text); 0: exact spans")
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--save-every", type=int, default=10)
    ap.add_argument("--align-lr", type=float, default=1e-3)
    ap.add_argument("--sft-lr", type=float, default=5e-4)
    ap.add_argument("--sft-epochs", type=int, default=1)
    ap.add_argument("--sft-grad-accum", type=int, default=4)
    ap.add_argument("--sft-format", choices=("interleaved", "grounded"), default="interleaved",
                    help="interleaved: the re-listened spans' audio follows each </seg> (arm C); grounded: tags only (B)")
    ap.add_argument("--aligned", type=Path, help="reuse this run's stage 0 (WORK/aligned of an earlier run)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--heads-items", type=int, default=320)
    ap.add_argument("--heads-lr", type=float, default=1e-3)
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--eval-aligned", action="store_true", help="also evaluate the stage-0 model (arm A)")
    ap.add_argument("--controls", action="store_true",
                    help="also evaluate each model with silence for audio and without re-listening (paired with it)")
    ap.add_argument("--grpo", action="store_true", help="stage 2: GRPO from the SFT model (arm D), then evaluate it")
    ap.add_argument("--grpo-aligned", action="store_true",
                    help="GRPO straight from the aligned model, no SFT (arm E), then evaluate it")
    ap.add_argument("--grpo-from", help="stage 2 from this SFT model instead of training stages 0-1 here (e.g. "
                                         "echo-demo: seed 0's C), then evaluate both; --seed sets GRPO's seed only")
    ap.add_argument("--grpo-steps", type=int, default=30)
    ap.add_argument("--grpo-group", type=int, default=4, help="samples per prompt")
    ap.add_argument("--grpo-prompts", type=int, default=2, help="prompts per step")
    ap.add_argument("--grpo-lr", type=float, default=5e-6)
    ap.add_argument("--grpo-max-tokens", type=int, default=160)
    ap.add_argument("--grpo-reward", action="append", metavar="NAME=WEIGHT",
                    help="stage 2's reward terms as `echo train grpo --reward` takes them (repeat; default: echo's)")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    make_data(args.work, args.n_train, args.n_val, args.n_test, args.data_seed, tuple(args.families),
              tuple(args.sounds) if args.sounds else None, args.held_out_classes, args.span_grid)
    models = train(args)
    for name, model in (models or {}).items():
        relisten = not (name == "sft" and args.sft_format == "grounded")
        print(name, json.dumps(stage_eval(args.work, model, name, args.eval_limit, relisten))[:400])
        if args.controls:  # the same model with silence for audio, and without re-listening, paired with it
            controls = [("silence", relisten, "silence")] + ([("norelisten", False, "original")] if relisten else [])
            for tag, listen, audio in controls:
                summary = stage_eval(args.work, model, f"{name}-{tag}", args.eval_limit, listen, audio, compare=name)
                print(f"{name} ({tag})", json.dumps(summary["overall"]))


def train(args) -> dict[str, Path] | None:
    """The training stages ``args`` ask for; the models to evaluate by name, or None when ``--until`` stops first."""
    if args.until == "data":
        return None
    if args.grpo_from:  # arm D from a given C: only GRPO's seed varies
        from echo.models.convert.demo import resolve

        start = resolve(args.grpo_from)
        return {"grpo": stage_grpo(args.work, args, start, "grpo"), "sft": start}  # the new model evaluated first
    aligned = stage_align(args.work, args)
    if args.aligned is None:  # the run that trained stage 0 checked it
        check_hearing(args.work, aligned)
    models = {"aligned": aligned} if args.eval_aligned else {}
    if args.until == "align":  # stage 0 alone: arm A's seeds (`--seed N --until align --eval-aligned`)
        return models or None
    if args.grpo_aligned:
        models["grpo-aligned"] = stage_grpo(args.work, args, aligned, "grpo-aligned")
    if not args.grpo_aligned or args.grpo:
        stage_sft(args.work, args)
        models["sft"] = stage_heads(args.work, args)
        stage_parts(args.work)
        if args.until == "sft":
            return None
        if args.grpo:
            models["grpo"] = stage_grpo(args.work, args, models["sft"], "grpo")
    return models

if __name__ == "__main__":
    main()
