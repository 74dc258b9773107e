"""bf16 on the CPU: which dtype ``load`` picks by itself, and a bf16 engine decoding the float32 greedy tokens.

The budget: the bf16 engine's logits may differ from the float32 engine's by at most twice what transformers' own
bf16 run differs from its float32 run on the same weights; greedy tokens must agree wherever
float32's top-2 margin exceeds that budget (where it does not, bf16 rounding may legitimately pick the other).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import echo
import tiny_checkpoints as tc
from helpers import engine_greedy_with_logits
from echo.models import loader

NAME = "omni-tiny-gqa2"


def _bf16_checkpoint(checkpoint, tmp_path):
    path, _ = checkpoint(NAME)
    out = tmp_path / "bf16"
    shutil.copytree(path, out)
    raw = json.loads((out / "config.json").read_text())
    raw.pop("dtype", None)
    raw["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(raw))
    return out


@pytest.mark.parametrize("native", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_auto_dtype_on_the_cpu_is_bf16_only_with_bf16_instructions(checkpoint, tmp_path, monkeypatch, native):
    path = _bf16_checkpoint(checkpoint, tmp_path)
    monkeypatch.setattr(loader, "cpu_has_native_bf16", lambda: native)
    assert echo.load(path).dtype == (torch.bfloat16 if native else torch.float32)
    assert echo.load(path, dtype=torch.bfloat16).dtype == torch.bfloat16  # an explicit choice is always honoured
    assert loader._auto_dtype(torch.float16, torch.device("cpu")) == torch.float32
    assert loader._auto_dtype(torch.bfloat16, torch.device("cuda")) == torch.bfloat16


def test_cpu_bf16_probe_agrees_with_cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            flags = {w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()}
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    if not flags:
        pytest.skip("/proc/cpuinfo lists no x86 flags here")
    assert loader.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_bf16_engine_gives_the_fp32_greedy_tokens(checkpoint, features):
    path, hf = checkpoint(NAME)
    fp32, bf16 = echo.load(path), echo.load(path, dtype=torch.bfloat16)
    assert bf16.decoder.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16  # half the bytes per weight

    # the budget: transformers' own bf16 run against its float32 run, last-token logits of a prompt
    hf16 = type(hf)(hf.config).to(torch.bfloat16).eval()
    hf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in hf.state_dict().items()})
    feats, frames = features(fp32.config.family, (2.0,))
    conv = [{"role": "user", "content": [{"type": "audio", "audio": "a"}, {"type": "text", "text": "Q?"}]}]
    ids = torch.tensor([fp32.processor(conv, frames.tolist())])
    fmask = (torch.arange(feats.shape[-1]) < frames[:, None]).long()
    with torch.no_grad():
        ref32 = hf(input_ids=ids, input_features=feats, feature_attention_mask=fmask).logits[0, -1].float()
        ref16 = hf16(input_ids=ids, input_features=feats.bfloat16(), feature_attention_mask=fmask).logits[0, -1]
    budget = 2 * (ref16.float() - ref32).abs().max().item()

    clips = [tc.sine_clip(s, seed=i) for i, s in enumerate((2.0, 3.5, 1.2))]
    tokens32, logits32 = engine_greedy_with_logits(fp32, clips, 8)
    tokens16, logits16 = engine_greedy_with_logits(bf16, clips, 8)
    compared = 0
    for t32, t16, l32, l16 in zip(tokens32, tokens16, logits32, logits16):
        assert len(l32) == len(t32) == 8  # one logits row per sampled token (no re-listens here)
        for step in range(min(len(l32), len(l16))):
            err = (l16[step][:300] - l32[step][:300]).abs().max().item()  # text ids (the sampler sets -inf on audio ids)
            assert err <= budget, f"step {step}: bf16 logits off by {err:.3g}, budget {budget:.3g}"
            top2 = l32[step][:300].topk(2).values
            if (top2[0] - top2[1]).item() <= budget:
                break  # a near-tie: from here bf16 may follow the other branch
            assert t16[step] == t32[step], f"step {step}: bf16 chose {t16[step]}, fp32 {t32[step]} (margin above budget)"
            compared += 1
    assert compared >= 3, f"only {compared} greedy tokens had a margin above the bf16 budget {budget:.3g}"
