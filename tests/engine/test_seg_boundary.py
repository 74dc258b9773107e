"""A ``</seg>`` that does not end on a token boundary: the tokenizer merges its ``>`` with what follows (``><``
here; ``>.`` and ``>\\n`` in Qwen2's). The engine must see it, cut there exactly as the reference's text-level
loop does (text up to and including ``</seg>``, the span's audio, then decoding), and keep what it replaced out
of the trainer's loss."""

from __future__ import annotations

import types

import pytest
import torch

import echo
import tiny_checkpoints as tc
from echo.config import EngineConfig, RelistenPolicy, SamplingParams
from echo.engine.llm import Engine, Request
from echo.engine.relisten import decide, find_seg_close
from echo.train.rollout import Rollout, old_logprobs, response_logprobs
from helpers import assert_close

from test_engine_vs_reference import _conversation, _processor  # noqa: E402  (same directory)

NAME = "omni-tiny-gqa2"
TAGS = ["<seg>1.0, 2.0</seg><", "<seg>2.0, 3.0</seg><", "<seg>3.0, 3.5</seg>"]  # "><" is one token


@pytest.fixture(scope="module")
def omni(checkpoint):
    path, hf = checkpoint(NAME)
    return hf, echo.load(path)


def _ids(proc, text):
    return proc.tokenizer.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text,seen,end", [
    ("a</seg>", 1, 7), ("a</seg>.", 1, 7), ("a</seg>\n", 6, 7), ("a</seg><seg>", 6, 7), ("a</se", 1, None),
    ("a</seg> b", 7, None),  # closed before the new text began: already handled
    ("</seg></seg>", 6, 12),  # the first one that ends in the new text
])
def test_find_seg_close(text, seen, end):
    assert find_seg_close(text, seen) == end


def test_the_tiny_tokenizer_really_merges_the_closing_bracket(omni):
    _, model = omni
    proc = model.processor
    pieces = [proc.decode([t]) for t in _ids(proc, TAGS[0])]
    assert pieces[-1] == "><"  # so the tag's ">" never ends a token here


def text_level_reference(hf, model, clip, question, processor, max_new=80, policy=RelistenPolicy()):
    """The reference's loop at the text level: generate (greedy, no cache) until the decoded text contains a new
    '</seg>' or EOS; cut the text right after '</seg>', append the span's <|audio_bos|> AUDIO*n <|audio_eos|> (and
    the span as one more audio), re-tokenize the whole text and go on."""
    proc = model.processor
    feats, frames = tc.features_for("qwen2_5_omni", [clip])
    prompt = proc(_conversation(question), frames.tolist())
    text, turns = "", 0
    while True:
        ids = prompt + _ids(proc, text)
        if sum(1 for t in ids[len(prompt):] if t not in processor.audio_ids) >= max_new:
            return ids[len(prompt):]
        ids_t = torch.tensor(ids)[None]
        logits, _ = tc.hf_forward(hf, ids_t, torch.ones_like(ids_t), feats, frames)
        token = int(torch.argmax(processor(ids, logits[0, -1])))
        if token in proc.eos_token_ids:
            return ids[len(prompt):] + [token]
        new = proc.decode(ids[len(prompt):] + [token])
        at = new.find("</seg>", max(0, len(text) - len("</seg>") + 1))
        if at < 0:
            text = new
            continue
        text = new[: at + len("</seg>")]
        d = decide(text, turns, len(clip), policy)
        turns += 1
        if d.action == "relisten":
            s, e = d.applied_samples
            span_feats, span_frames = tc.features_for("qwen2_5_omni", [clip[s:e]])
            text += proc.decode(proc.splice_ids(echo.models.num_audio_tokens(int(span_frames[0]))))
            feats, frames = torch.cat([feats, span_feats]), torch.cat([frames, span_frames])


def _plan(proc, start=0, gap=0):
    plan, step = {}, start
    for tag in TAGS:
        plan[step] = _ids(proc, tag)
        step += len(plan[step]) + gap
    plan[step] = [proc.tokenizer.token_to_id("<|im_end|>")]
    return plan


def test_three_back_to_back_tags_give_three_turns_like_the_text_level_reference(omni):
    hf, model = omni
    proc = model.processor
    clip = tc.sine_clip(4.0, seed=1)
    _, frames = tc.features_for("qwen2_5_omni", [clip])
    prompt = proc(_conversation("Three?"), frames.tolist())
    processor = _processor(model, [(prompt, _plan(proc))])
    engine = Engine(model, EngineConfig(num_blocks=200, block_size=16, max_num_batched_tokens=48),
                    logits_processors=[processor])
    [res] = engine.generate([Request(clip, "Three?", SamplingParams(temperature=0, max_new_tokens=80,
                                                                    logprobs=True))])
    sample = res.samples[0]
    assert [(r.decision.action, r.decision.applied_samples, r.dropped_text) for r in sample.relistens] == [
        ("relisten", (16_000, 32_000), "<"), ("relisten", (32_000, 48_000), "<"), ("relisten", (48_000, 56_000), "")]
    assert sample.text == "<seg>1.0, 2.0</seg><seg>2.0, 3.0</seg><seg>3.0, 3.5</seg>"
    assert sample.token_ids == text_level_reference(hf, model, clip, "Three?", processor)
    # each straddling "><" became a ">" that was not sampled: mask 0 and no log-prob
    gt = proc.tokenizer.token_to_id(">")
    for r in sample.relistens[:2]:
        at = r.position - len(prompt) - 1
        assert sample.token_ids[at] == gt and sample.mask[at] == 0
    assert len(sample.logprobs) == sum(sample.mask)
    assert engine.bm.num_free == 200


def test_trainer_logprobs_equal_engine_logprobs_across_straddling_tags(omni):
    """GRPO's parity on trajectories whose tags were re-tokenized: the trainer's dense recomputation over the
    engine's ids, at the mask's sampled tokens, equals the engine's sampling log-probs; replaced tokens carry none."""
    _, model = omni
    proc = model.processor
    clip = tc.sine_clip(4.0, seed=2)
    _, frames = tc.features_for("qwen2_5_omni", [clip])
    prompt = proc(_conversation("Sampled?"), frames.tolist())
    processor = _processor(model, [(prompt, _plan(proc, start=3, gap=6))])
    engine = Engine(model, EngineConfig(num_blocks=200, block_size=16), logits_processors=[processor])
    [res] = engine.generate([Request(clip, "Sampled?", SamplingParams(temperature=1.0, seed=5, n=3,
                                                                      max_new_tokens=80, logprobs=True))])
    record = types.SimpleNamespace(audio="clip.wav", choices=[], answer="")
    rolls = [Rollout(record, 0, res.prompt_token_ids, s.token_ids, s.mask, s.logprobs, s.relistens, s.text,
                     s.finish_reason, res.audio_samples) for s in res.samples]
    for r in rolls:
        assert [x.dropped_text for x in r.relistens] == ["<", "<", ""] and all(x.inserted for x in r.relistens)
        assert len(r.logprobs) == sum(r.mask)
    with torch.no_grad():
        logp, mask = response_logprobs(model, rolls, engine.features, {"clip.wav": torch.from_numpy(clip)})
    old = old_logprobs(rolls, tuple(mask.shape), mask.device)
    assert_close("trainer vs engine log-probs", old, logp, atol=1e-4)
    assert float(logp[mask.bool()].min()) < -1.0  # free tokens were really sampled
