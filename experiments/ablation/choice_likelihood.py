"""Multiple choice by likelihood: for each test item, the log-probability the model gives each choice's text as the
start of its answer (after Echo's prompt with the audio); the most likely choice is its answer. This scores a model
that does not write an extractable answer (the aligned model of arm A) on what it hears and knows rather than on
its format, as language-model harnesses score base models. Two rules: the sum of the choice's token log-probs, and
their mean (length-normalised).

    python experiments/ablation/choice_likelihood.py --model runs/s0/aligned --data runs/s0/data/test \
        --out runs/s0/eval/aligned-likelihood

Writes ``predictions.json`` (the length-normalised rule's pick as ``model_output``; the analysis scripts read it)
and ``summary.json`` with the accuracy of both rules. Each item's record is appended to ``predictions.jsonl`` as it
is scored, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import echo
from echo.audio import load as load_audio
from echo.audio.features import num_mel_frames
from echo.durable import append_row, drop_partial_line, read_lines, write_atomic
from echo.eval.datasets import load_benchmark
from echo.protocol import build_prompt


@torch.inference_mode()
def choice_logprobs(model, features, wave: torch.Tensor, text: str, choices: list[str]) -> list[tuple[float, int]]:
    """(sum of log-probs, token count) of each choice's tokens as the answer's start: one right-padded forward of
    prompt + choice for all choices, logits only at the choices' rows."""
    proc = model.processor
    conv = [{"role": "user", "content": [{"type": "audio", "audio": "<audio>"}, {"type": "text", "text": text}]}]
    prompt = proc(conv, [num_mel_frames(wave.numel(), features)])
    [rows] = model.embed_spans(features, [wave], [(0, 0, wave.numel())])
    ids = [proc.tokenizer.encode(choice, add_special_tokens=False).ids for choice in choices]
    n, longest = len(prompt), max(len(i) for i in ids)
    embeds = torch.stack([F.pad(model.embed(torch.tensor(prompt + i), rows), (0, 0, 0, longest - len(i)))
                          for i in ids])
    mask = torch.tensor([[1] * (n + len(i)) + [0] * (longest - len(i)) for i in ids])
    at = torch.tensor([[n - 1 + min(k, len(i) - 1) for k in range(longest)] for i in ids])  # pads repeat a row
    logp = torch.log_softmax(model.logits_at(embeds, mask, at).float(), -1)
    out = []
    for c, i in enumerate(ids):
        lp = logp[c, : len(i)].gather(1, torch.tensor(i)[:, None])
        out.append((float(lp.sum()), len(i)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="a synthetic split (its synthetic.jsonl and audio)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = echo.load(args.model)
    features = model.resolve_feature_config(args.model)
    bench = load_benchmark("synthetic", str(args.data))
    items = bench.items[: args.limit] if args.limit else bench.items
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "predictions.jsonl"
    drop_partial_line(partial)
    records = [r for _, r in read_lines(partial)] if partial.exists() else []
    if any(r.get("id") != item.record.get("id") for r, item in zip(records, items)) or len(records) > len(items):
        raise SystemExit(f"{partial} holds other items than {args.data}'s: remove it or choose another --out")
    with open(partial, "a", encoding="utf-8") as f:
        for item in tqdm(items[len(records):], desc="choices", unit="item", initial=len(records), total=len(items)):
            wave = torch.from_numpy(load_audio(item.audio_path)).to(model.device)
            scores = choice_logprobs(model, features, wave, build_prompt(item.question, item.choices), item.choices)
            pick = {"sum": max(range(len(scores)), key=lambda i: scores[i][0]),
                    "mean": max(range(len(scores)), key=lambda i: scores[i][0] / scores[i][1])}
            record = {**item.record, "model_output": item.choices[pick["mean"]], "response": "", "no_answer": False,
                      "choice_logprobs": [s for s, _ in scores], "pick_sum": item.choices[pick["sum"]],
                      "correct_mean": item.choices[pick["mean"]] == item.answer,
                      "correct_sum": item.choices[pick["sum"]] == item.answer}
            append_row(f, record)
            records.append(record)
    write_atomic(args.out / "predictions.json", json.dumps(records))
    right = {rule: sum(r[f"correct_{rule}"] for r in records) for rule in ("sum", "mean")}
    summary = {"items": len(items), "accuracy_mean_logprob": right["mean"] / len(items),
               "accuracy_sum_logprob": right["sum"] / len(items)}
    write_atomic(args.out / "summary.json", json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
