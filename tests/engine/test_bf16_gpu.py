"""bf16 on a GPU: the engine (paged KV cache, the GPU attention path) decoding in bf16 gives the float32 greedy
tokens wherever float32's top-2 margin exceeds the bf16 budget.

The budget: twice what transformers' own bf16 run differs from its float32 run on the same weights and device
(last-token logits of the prompt); bf16 logits must stay within it at every compared step, and greedy tokens must
agree until the first near-tie (where bf16 rounding may legitimately pick the other branch).
"""

from __future__ import annotations

import pytest
import torch

import echo
import tiny_checkpoints as tc
from helpers import engine_greedy_with_logits

pytestmark = pytest.mark.gpu

TEXT_VOCAB = 300  # the tiny tokenizer's text ids; its specials (and <|AUDIO|>) come after


def check_bf16_greedy_parity(checkpoint, features, name: str, device: str) -> int:
    """The parity check on ``device``; returns how many greedy tokens it compared."""
    path, hf = checkpoint(name)
    fp32 = echo.load(path, device=device, dtype=torch.float32)
    bf16 = echo.load(path, device=device, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.device.type == torch.device(device).type

    hf32 = type(hf)(hf.config).to(device).eval()
    hf32.load_state_dict(hf.state_dict())
    hf16 = type(hf)(hf.config).to(device, torch.bfloat16).eval()
    hf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in hf.state_dict().items()})
    feats, frames = features(fp32.config.family, (2.0,))
    conv = [{"role": "user", "content": [{"type": "audio", "audio": "a"}, {"type": "text", "text": "Q?"}]}]
    ids = torch.tensor([fp32.processor(conv, frames.tolist())], device=device)
    fmask = (torch.arange(feats.shape[-1]) < frames[:, None]).long().to(device)
    with torch.no_grad():
        ref32 = hf32(input_ids=ids, input_features=feats.to(device), feature_attention_mask=fmask).logits[0, -1]
        ref16 = hf16(input_ids=ids, input_features=feats.to(device, torch.bfloat16),
                     feature_attention_mask=fmask).logits[0, -1]
    budget = 2 * (ref16.float() - ref32.float()).abs().max().item()

    clips = [tc.sine_clip(s, seed=i) for i, s in enumerate((2.0, 3.5, 1.2, 5.1))]
    tokens32, logits32 = engine_greedy_with_logits(fp32, clips, 8, TEXT_VOCAB)
    tokens16, logits16 = engine_greedy_with_logits(bf16, clips, 8, TEXT_VOCAB)
    compared = 0
    for t32, t16, l32, l16 in zip(tokens32, tokens16, logits32, logits16):
        assert len(l32) == len(t32) == 8  # one logits row per sampled token (no re-listens here)
        for step in range(min(len(l32), len(l16))):
            a, b = l32[step][:TEXT_VOCAB], l16[step][:TEXT_VOCAB]
            err = (b - a).abs().max().item()
            assert err <= budget, f"step {step}: bf16 logits off by {err:.3g}, budget {budget:.3g}"
            top2 = a.topk(2).values
            if (top2[0] - top2[1]).item() <= budget:
                break  # a near-tie: from here bf16 may follow the other branch
            assert t16[step] == t32[step], f"step {step}: bf16 chose {t16[step]}, fp32 {t32[step]} (margin above budget)"
            compared += 1
    return compared


@pytest.mark.parametrize("name", ["omni-tiny-gqa2", "qwen2audio-tiny-gqa4"])
def test_bf16_engine_on_cuda_gives_the_fp32_greedy_tokens(checkpoint, features, name):
    compared = check_bf16_greedy_parity(checkpoint, features, name, "cuda")
    assert compared >= 3, f"only {compared} greedy tokens had a margin above the bf16 budget"
