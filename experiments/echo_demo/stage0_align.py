"""Stage 0 of the echo-demo recipe: align the projector so the decoder hears (encoder and decoder frozen).

    python experiments/echo_demo/stage0_align.py --work runs/stage0 [--n 400] [--steps-per-item 1] [--lr 1e-3]

Three resumable steps, each skipped when its output exists (rerun the same command after a kill):
1. data: ``echo data synth`` clips whose answers are exact, turned into short-answer SFT records
   (user: the clip + its question; assistant: the exact answer) — a stand-in for captions and transcripts of
   spans until the recorded-sound data lands;
2. train: echo's SFT (``train_only=("projector",)``; grounded format, no chain of thought), resuming from its own
   checkpoint;
3. export: the trained projector as ``parts/projector.safetensors``, which ``echo convert demo --parts`` applies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROMPT = "Answer with the exact answer only."


def make_data(work: Path, n: int, seed: int) -> Path:
    from echo.data.synthetic import SynthConfig, write_synthetic

    out = work / "align.jsonl"
    if out.is_file():
        return out
    synth = work / "synth"
    if not (synth / "synthetic.jsonl").is_file():
        write_synthetic(SynthConfig(n=n, seed=seed), synth, progress=True)
    rows = []
    for line in (synth / "synthetic.jsonl").read_text().splitlines():
        r = json.loads(line)
        choices = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(r["choices"]))
        rows.append({"id": r["id"], "audios": [str((synth / r["audio"]).resolve())],
                     "messages": [{"role": "user", "content": f"<audio>{r['question']} Choices: {choices}. {PROMPT}"},
                                  {"role": "assistant", "content": r["answer"]}]})
    tmp = out.with_suffix(".partial")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.rename(out)
    return out


def export_projector(final: Path, parts: Path) -> Path:
    from safetensors.torch import load_file, save_file

    parts.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(final / "model.safetensors"))
    proj = {k: v for k, v in weights.items() if k.startswith("multi_modal_projector.")}
    save_file(proj, str(parts / "projector.safetensors"), metadata={"format": "pt"})
    return parts / "projector.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="run directory (data, checkpoints, parts)")
    ap.add_argument("--model", default="echo-demo", help="the assembled checkpoint to align")
    ap.add_argument("--n", type=int, default=400, help="synthetic clips")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--save-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from echo.models.convert.demo import resolve
    from echo.train.sft import SFTConfig, train_sft

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(work, args.n, args.seed)
    model_dir = str(resolve(args.model))  # the trainer copies tokenizer files from a real directory
    cfg = SFTConfig(format="grounded", lr=args.lr, epochs=args.epochs, grad_accum=args.grad_accum,
                    save_every=args.save_every, seed=args.seed, train_only=("projector",), max_len=2048)
    result = train_sft(model_dir, str(data), str(work / "sft"), cfg)
    part = export_projector(work / "sft" / "final", work / "parts")
    print(f"stage 0: {result['steps']} steps on {result['examples']} records; projector in {part}; "
          f"assemble with: python -m echo convert demo --parts {part.parent} --force")


if __name__ == "__main__":
    main()
