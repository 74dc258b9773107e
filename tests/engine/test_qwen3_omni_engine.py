"""Qwen3-Omni's thinker through echo's engine: greedy output with two spans re-listened equals transformers'
re-submission loop token for token (paged KV cache, MoE decode, 13-tokens-per-second splices), a batch of
requests equals each one run alone, and a repeated span is served by the encoder cache."""

from __future__ import annotations

import pytest

import echo
import tiny_checkpoints as tc
from echo.config import SamplingParams
from echo.engine.llm import Request
from test_engine_vs_reference import _conversation, _engine, _plan, _processor, reference_loop

FAMILY = "qwen3_omni_moe"


@pytest.fixture(scope="module")
def qwen3(checkpoint):
    path, hf = checkpoint("qwen3omni-tiny-gqa2")
    return hf, echo.load(path)


def test_two_relistens_match_the_transformers_loop(qwen3):
    hf, model = qwen3
    proc = model.processor
    clip = tc.sine_clip(4.0, seed=1)
    question = "How many beeps?"
    _, frames = tc.features_for(FAMILY, [clip])
    prompt = proc(_conversation(question), frames.tolist())
    # a span over two 1 s chunks with a tail, and a sub-chunk span at the clip's end
    plan = _plan(proc, [(2, "<seg>1.0, 2.5</seg>"), (18, "<seg>3.3, 4.0</seg>")], end_step=36)
    processor = _processor(model, [(prompt, plan)])
    expected = reference_loop(hf, model, clip, question, processor)
    [result] = _engine(model, processor).generate([Request(clip, question, SamplingParams(temperature=0,
                                                                                          max_new_tokens=60))])
    sample = result.samples[0]
    assert result.prompt_token_ids == prompt
    assert sample.token_ids == expected
    assert [r.decision.applied_samples for r in sample.relistens] == [(16_000, 40_000), (52_800, 64_000)]
    assert [r.num_audio_tokens for r in sample.relistens] == [20, 9]  # 13 per 1 s chunk + the tail's
    assert sample.finish_reason == "stop"


def test_batch_equals_alone_and_repeated_spans_hit_the_cache(qwen3):
    _, model = qwen3
    proc = model.processor
    cases = [(3.0, "Where is the tone?", [(1, "<seg>0.5, 1.5</seg>")], 20),
             (3.0, "Count the beeps.", [(3, "<seg>0.5, 1.5</seg>"), (21, "<seg>2.0, 3.0</seg>")], 38)]
    clip = tc.sine_clip(3.0, seed=3)
    _, frames = tc.features_for(FAMILY, [clip])
    processor = _processor(model, [(proc(_conversation(q), frames.tolist()), _plan(proc, segs, end))
                                   for _, q, segs, end in cases])
    params = SamplingParams(temperature=0, max_new_tokens=45)
    engine = _engine(model, processor)
    together = engine.generate([Request(clip, q, params) for _, q, _, _ in cases])
    alone = [_engine(model, processor).generate([Request(clip, q, params)])[0] for _, q, _, _ in cases]
    assert [r.samples[0].token_ids for r in together] == [r.samples[0].token_ids for r in alone]
    hits = [r.cache_hit for res in together for r in res.samples[0].relistens]
    assert hits.count(True) == 1 and engine.encoder_cache.stats.hits >= 2  # the prompt audio and 0.5-1.5 s
