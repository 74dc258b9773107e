"""GRPO's update computes a prompt once for all its samples (``SharedPrefixAttention``): per-token log-probs and
parameter gradients equal each sequence computed alone (the dense causal pass the trainer ran before), in float32,
on awkward groups (one sample; responses of different lengths; one cut before its re-listen, one ending in a
splice, one empty) for each decoder layout the trainers serve: Qwen2.5-Omni, Qwen2-Audio (its projector in the
graph), the Qwen3-Omni MoE."""

from __future__ import annotations

import dataclasses

import pytest
import tiny_checkpoints as tc
import torch
from helpers import assert_close
from test_grpo import _script

import echo
from echo.config import EngineConfig, SamplingParams
from echo.engine.llm import Engine
from echo.models import DenseCausalAttention, SharedPrefixAttention
from echo.train.rl_data import read_rl_records
from echo.train.rollout import Rollout, response_logprobs, rollout


def _cut(r: Rollout, n: int) -> Rollout:
    """``r``'s first ``n`` response tokens, with the re-listens whose splice they hold whole."""
    splices, inside = 0, False  # splices (runs of mask 0) that end within the first n tokens
    for j, m in enumerate(r.mask[:n]):
        if not m and (j + 1 == len(r.mask) or r.mask[j + 1]) and j + 1 <= n:
            splices += 1
        inside = not m
    if inside and n < len(r.mask) and not r.mask[n]:
        raise ValueError(f"cut {n} falls inside a splice")
    inserted = [x for x in r.relistens if x.inserted][:splices]
    return dataclasses.replace(r, token_ids=r.token_ids[:n], mask=r.mask[:n], logprobs=r.logprobs[:sum(r.mask[:n])],
                               relistens=inserted)


def _alone(model, r: Rollout, features, waves, grad_audio: bool) -> torch.Tensor:
    """Log-probs of ``r``'s response tokens with its sequence alone through the model (plain causal pass)."""
    ids = torch.tensor(r.prompt_ids + r.token_ids)
    rows = model.embed_spans(features, [waves[r.record.audio]], [(0, s, e) for s, e in r.spans], grad=grad_audio)
    embeds = model.embed(ids, torch.cat(rows))[None]
    p, n = len(r.prompt_ids), len(r.token_ids)
    positions = torch.arange(len(ids))[None]
    hidden = model.decoder(embeds, positions, DenseCausalAttention())[0, p - 1:p - 1 + n]
    logits = model.compute_logits(hidden).float()
    logits[..., model.config.audio_token_id] = float("-inf")
    logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.token_ids)[:, None])[:, 0]
    return torch.where(torch.tensor(r.mask, dtype=torch.bool), logp, torch.zeros_like(logp))


def _groups(workdir, model):
    """Rollouts of two prompts, each with two re-listens: the first prompt's group made awkward by cuts, the
    second prompt a group of one."""
    records, _ = read_rl_records(workdir / "rl.jsonl")
    script = _script(model.processor.tokenizer, choose_letter=False)
    cfg = model.config  # this family's audio tokens: never sampled, so not counted as answer steps
    script.skip_ids = {cfg.audio_token_id, cfg.audio_bos_token_id, cfg.audio_eos_token_id}
    script.banned = list(range(340, 354))
    engine = Engine(model, EngineConfig(num_blocks=256, block_size=16), logits_processors=[script])
    a = rollout(engine, records[:1], 3, SamplingParams(temperature=1.0, max_new_tokens=60), seeds=[3])
    b = rollout(engine, records[1:2], 1, SamplingParams(temperature=1.0, max_new_tokens=60), seeds=[4])
    full = a[0]
    assert sum(x.inserted for x in full.relistens) == 2, full.text
    first_splice_end = next(j for j in range(1, len(full.mask)) if not full.mask[j - 1] and full.mask[j])
    group = [full, _cut(a[1], 4), _cut(a[2], first_splice_end), _cut(a[1], 0), _cut(a[2], first_splice_end + 3)]
    assert [len(x.spans) for x in group] == [3, 1, 2, 1, 2]
    return group + b


@pytest.mark.parametrize("preset", ["omni-tiny-gqa2", "qwen2audio-tiny-gqa2", "qwen3omni-tiny-gqa2"])
def test_shared_prompt_gives_each_sequences_own_logprobs_and_gradients(tmp_path_factory, preset):
    workdir = tc.train_workdir(tmp_path_factory, "shared_" + preset.replace("-", "_"), preset)
    tc.write_rl_task(workdir, ["How many beeps?", "Which is louder?"], seed=40)
    model = echo.load(workdir / "base")
    rolls = _groups(workdir, model)
    features, waves = model.resolve_feature_config(workdir / "base"), {}
    grad_audio = any(p.requires_grad for n, p in model.named_parameters() if n.startswith("projector"))
    model.requires_grad_(True).train()  # a full fine-tune; the tiny models have no dropout
    logp, mask = response_logprobs(model, rolls, features, waves, grad_audio=grad_audio)
    weights = torch.randn(logp.shape, generator=torch.Generator().manual_seed(0))
    (logp * weights).sum().backward()
    logp = logp.detach()
    packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    assert mask.shape[0] == len(rolls) and int(mask[3].sum()) == 0  # the empty response
    total = 0.0
    for b, r in enumerate(rolls):
        alone = _alone(model, r, features, waves, grad_audio)
        n = len(r.token_ids)
        assert_close(f"log-probs of rollout {b}", alone, logp[b, :n], atol=1e-5)
        assert float(logp[b, n:].abs().sum()) == 0.0
        total = total + (alone * weights[b, :n]).sum()
    total.backward()
    alone_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert packed.keys() == alone_grads.keys() and any(n.startswith("decoder.layers") for n in packed)
    assert grad_audio == any(n.startswith("projector") for n in packed)
    for name, g in packed.items():
        scale = max(1.0, float(alone_grads[name].abs().max()))
        assert_close(f"gradient of {name}", alone_grads[name] / scale, g / scale, atol=1e-5)


def test_layout_positions_and_what_each_token_sees():
    # roots 0 (3 tokens) and 3 (2 tokens); continuations 1, 2 of root 0 (2 and 0 tokens), 4 of root 3 (1 token)
    att = SharedPrefixAttention([3, 2, 0, 2, 1], [None, 0, 0, None, 3])
    assert att.positions.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    q = k = torch.eye(8)[:, None, :]  # one head: query t scores key t alone
    v = torch.arange(8.0)[:, None, None].expand(8, 1, 8).contiguous()
    out = att(0, q * 50, k, v, 1.0)[:, 0, 0]
    # each token, scoring itself far above every other key it may see, reads its own value: nothing hides it
    assert out.tolist() == pytest.approx(list(range(8)), abs=1e-6)
    # with all scores equal a token reads the mean of what it sees: root 0 causal; continuation 1 sees root 0 whole
    flat = att(0, torch.zeros(8, 1, 8), torch.zeros(8, 1, 8), v, 1.0)[:, 0, 0]
    seen = [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4], [5], [5, 6], [5, 6, 7]]
    assert flat.tolist() == pytest.approx([sum(s) / len(s) for s in seen], abs=1e-6)
    with pytest.raises(ValueError, match="earlier root"):
        SharedPrefixAttention([2, 2, 2], [None, 0, 1])
