"""The two engine hooks the server stands on: a per-request re-listen policy (off = a plain decoder for that
request only, in the same batch as re-listening ones) and Engine.abort (finish, free, forget)."""

from __future__ import annotations

import pytest
from helpers import ScriptedTurn

import tiny_checkpoints as tc
from echo.config import EngineConfig, RelistenPolicy, SamplingParams
from echo.engine.llm import Engine, Request
from echo.errors import ConfigError
from echo.models.tiny import special_ids

SP = special_ids()


def _script(tok) -> ScriptedTurn:
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    plan = {2: enc("<seg>0.5, 1.5</seg>"), 20: enc("<seg>1.0, 2.0</seg>"), 40: [SP["<|im_end|>"]]}
    return ScriptedTurn(plan, SP["<|im_start|>"], len(enc("assistant\n")),
                        {SP["<|AUDIO|>"], SP["<|audio_bos|>"], SP["<|audio_eos|>"]}, list(range(340, 350)))


def test_a_request_policy_overrides_the_engines_for_that_request_only(model):
    engine = Engine(model, EngineConfig(num_blocks=200, block_size=16),
                    logits_processors=[_script(model.processor.tokenizer)])
    clip = tc.sine_clip(3.0, seed=60)
    base = dict(temperature=0, max_new_tokens=60)
    on, off, one = engine.generate([
        Request(clip, "On?", SamplingParams(**base)),
        Request(clip, "Off?", SamplingParams(**base, relisten=RelistenPolicy(max_turns=0))),
        Request(clip, "One?", SamplingParams(**base, relisten=RelistenPolicy(max_turns=1, after_max_turns="stop"))),
    ])
    assert [r.decision.action for r in on.samples[0].relistens] == ["relisten", "relisten"]
    assert [(r.decision.action, r.inserted) for r in off.samples[0].relistens] == [("skip", False)] * 2
    assert sum(off.samples[0].mask) == len(off.samples[0].mask)  # nothing spliced: every token was sampled
    assert "<seg>1.0, 2.0</seg>" in off.samples[0].text
    assert [r.decision.action for r in one.samples[0].relistens] == ["relisten", "stop"]
    assert one.samples[0].finish_reason == "relisten_stop"
    with pytest.raises(ConfigError, match="SamplingParams.relisten"):
        SamplingParams(relisten={"max_turns": 0})


def test_abort_finishes_every_sample_frees_blocks_and_forgets_the_request(model):
    engine = Engine(model, EngineConfig(num_blocks=100, block_size=16),
                    logits_processors=[_script(model.processor.tokenizer)])
    clip = tc.sine_clip(2.0, seed=61)
    keep = engine.add_request(clip, "Keep?", SamplingParams(temperature=0, max_new_tokens=50))
    drop = engine.add_request(clip, "Drop?", SamplingParams(temperature=1.0, n=4, seed=1, max_new_tokens=50))
    for _ in range(4):
        engine.step()
    seqs = engine.request(drop).samples
    assert all(s.block_table for s in seqs)  # all four samples hold blocks now
    engine.abort(drop)
    assert all(s.is_finished and s.finish_reason == "abort" for s in seqs)
    assert drop not in engine.pending()
    engine.abort(drop)  # twice, or an unknown index: nothing happens
    while engine.scheduler.has_work():
        assert all(s.request_index == keep for s in engine.step())
    assert engine.result(keep).samples[0].finish_reason == "stop"
    assert engine.bm.num_free == 100
