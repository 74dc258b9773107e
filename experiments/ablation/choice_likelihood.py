"""Multiple choice by likelihood: for each test item, the log-probability the model gives each choice's text as the
start of its answer (after Echo's prompt with the audio); the most likely choice is its answer. This scores a model
that does not write an extractable answer (the aligned model of arm A) on what it hears and knows rather than on
its format, as language-model harnesses score base models. Two rules: the sum of the choice's token log-probs, and
their mean (length-normalised).

    python experiments/ablation/choice_likelihood.py --model runs/s0/aligned --data runs/s0/data/test \
        --out runs/s0/eval/aligned-likelihood

Writes ``predictions.json`` (the length-normalised rule's pick as ``model_output``; the analysis scripts read it)
and ``summary.json`` with the accuracy of both rules.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

import echo
from echo.audio import load as load_audio
from echo.audio.features import num_mel_frames
from echo.engine.audio_embed import feature_config_for, span_embeddings
from echo.eval.datasets import load_benchmark
from echo.eval.prompts import build_prompt


@torch.inference_mode()
def choice_logprobs(model, features, wave: torch.Tensor, text: str, choices: list[str]) -> list[tuple[float, int]]:
    """(sum of log-probs, token count) of each choice's tokens as the answer's start."""
    proc = model.processor
    conv = [{"role": "user", "content": [{"type": "audio", "audio": "<audio>"}, {"type": "text", "text": text}]}]
    prompt = proc(conv, [num_mel_frames(wave.numel(), features)])
    [rows] = span_embeddings(model, features, [wave], [(0, 0, wave.numel())])
    out = []
    for choice in choices:
        ids = proc.tokenizer.encode(choice, add_special_tokens=False).ids
        full = torch.tensor(prompt + ids)
        logits = model(inputs_embeds=model.embed(full, rows)[None])[0].float()
        lp = torch.log_softmax(logits[len(prompt) - 1: -1], -1).gather(1, torch.tensor(ids)[:, None])
        out.append((float(lp.sum()), len(ids)))
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
    features = feature_config_for(model, args.model)
    bench = load_benchmark("synthetic", str(args.data))
    items = bench.items[: args.limit] if args.limit else bench.items
    records, right = [], {"sum": 0, "mean": 0}
    for item in tqdm(items, desc="choices", unit="item"):
        wave = torch.from_numpy(load_audio(item.audio_path)).to(model.device)
        scores = choice_logprobs(model, features, wave, build_prompt(item.question, item.choices), item.choices)
        pick = {"sum": max(range(len(scores)), key=lambda i: scores[i][0]),
                "mean": max(range(len(scores)), key=lambda i: scores[i][0] / scores[i][1])}
        for rule, i in pick.items():
            right[rule] += item.choices[i] == item.answer
        records.append({**item.record, "model_output": item.choices[pick["mean"]], "response": "",
                        "no_answer": False, "choice_logprobs": [s for s, _ in scores],
                        "pick_sum": item.choices[pick["sum"]]})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predictions.json").write_text(json.dumps(records))
    summary = {"items": len(items), "accuracy_mean_logprob": right["mean"] / len(items),
               "accuracy_sum_logprob": right["sum"] / len(items)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
