"""Engine behaviour under sampling, sharing, memory pressure and bad input: n samples share the prompt's blocks,
log-probs equal a trainer's recomputation, KV exhaustion preempts without changing any output, runaway
re-listening is capped, and bad requests are reported while the rest of the batch finishes."""

from __future__ import annotations

import pytest
import torch

import echo
import tiny_checkpoints as tc
from echo.config import EngineConfig, RelistenPolicy, SamplingParams
from echo.engine.llm import Engine, Request
from echo.errors import EchoError
from helpers import assert_close

from test_engine_vs_reference import _conversation, _plan, _processor  # noqa: E402  (same directory)


@pytest.fixture(scope="module")
def model(checkpoint):
    path, _ = checkpoint("omni-tiny-gqa2")
    return echo.load(path)


def _prompt(model, clip, question):
    _, frames = tc.features_for("qwen2_5_omni", [clip])
    return model.processor(_conversation(question), frames.tolist())


def test_n_samples_share_prompt_blocks_and_follow_their_seeds(model):
    clip = tc.sine_clip(3.0, seed=5)
    params = SamplingParams(temperature=1.0, n=8, seed=123, max_new_tokens=12, logprobs=True)
    processor = _processor(model, [(_prompt(model, clip, "Describe."), _plan(model.processor, [], 30))])
    engine = Engine(model, EngineConfig(num_blocks=200, block_size=16), logits_processors=[processor])
    idx = engine.add_request(clip, "Describe.", params)
    prompt_len = len(engine.request(idx).prompt_ids)
    engine.step()  # the prompt prefill (one chunk); all 8 samples fork its blocks
    prompt_blocks = -(-prompt_len // 16)
    assert engine.bm.num_free == 200 - prompt_blocks  # the prompt is held once for all 8
    seqs = engine.request(idx).samples
    assert all(s.block_table[: prompt_len // 16] == seqs[0].block_table[: prompt_len // 16] for s in seqs)
    while engine.scheduler.has_work():
        engine.step()
    result = engine.result(idx)
    texts = [tuple(s.token_ids) for s in result.samples]
    assert len(set(texts)) > 1  # different samples
    again = Engine(model, EngineConfig(num_blocks=200, block_size=16), logits_processors=[processor])
    [rerun] = again.generate([Request(clip, "Describe.", params)])
    assert [tuple(s.token_ids) for s in rerun.samples] == texts  # seeded: reproducible
    assert engine.bm.num_free == 200  # everything released


def test_logprobs_equal_the_trainers_recomputation(model):
    """GRPO's invariant: log_softmax of a dense forward over the interleaved sequence (prompt + sampled + spliced
    audio) at each sampled token equals what the engine returned while sampling."""
    clip = tc.sine_clip(4.0, seed=6)
    prompt = _prompt(model, clip, "Listen.")
    plan = _plan(model.processor, [(2, "<seg>1.0, 2.0</seg>")], 30)
    engine = Engine(model, EngineConfig(num_blocks=100, block_size=16), logits_processors=[_processor(
        model, [(prompt, plan)])])
    [res] = engine.generate([Request(clip, "Listen.", SamplingParams(temperature=1.0, seed=0, logprobs=True,
                                                                     max_new_tokens=40))])
    sample = res.samples[0]
    assert sample.relistens[0].decision.action == "relisten"
    ids = torch.tensor(prompt + sample.token_ids)
    feats, frames = tc.features_for("qwen2_5_omni", [clip])
    s, e = sample.relistens[0].decision.applied_samples
    span_feats, span_frames = tc.features_for("qwen2_5_omni", [clip[s:e]])
    with torch.no_grad():
        audio = torch.cat([model.encode_audio(feats, frames), model.encode_audio(span_feats, span_frames)])
        logits = model(inputs_embeds=model.embed(ids, audio)[None])[0]
    logits[..., model.config.audio_token_id] = float("-inf")  # the <|AUDIO|> placeholder is never sampled
    logp = torch.log_softmax(logits.float(), -1)
    n = len(prompt)
    positions = [n + i for i, m in enumerate(sample.mask) if m == 1]
    recomputed = torch.stack([logp[p - 1, ids[p]] for p in positions])
    assert len(sample.logprobs) == len(positions)
    # forced (scripted) tokens can be very unlikely under the random model; compare all of them anyway
    assert_close("engine vs trainer log-probs", recomputed, torch.tensor(sample.logprobs), atol=1e-4)


def test_kv_exhaustion_preempts_without_changing_outputs(model):
    clips = [tc.sine_clip(s, seed=20 + i) for i, s in enumerate((3.0, 3.5, 4.0, 4.5))]
    questions = ["One?", "Two?", "Three?", "Four?"]
    plans = [(_prompt(model, c, q), _plan(model.processor, [(2, "<seg>0.5, 2.5</seg>")], 30))
             for c, q in zip(clips, questions)]
    processor = _processor(model, plans)
    params = SamplingParams(temperature=0, max_new_tokens=40)
    reqs = [Request(c, q, params) for c, q in zip(clips, questions)]
    roomy = Engine(model, EngineConfig(num_blocks=200, block_size=16), logits_processors=[processor])
    expected = [r.samples[0].token_ids for r in roomy.generate(reqs)]
    tight = Engine(model, EngineConfig(num_blocks=24, block_size=16), logits_processors=[processor])
    got = tight.generate(reqs)
    assert tight.scheduler.num_preemptions > 0
    assert [r.samples[0].token_ids for r in got] == expected
    assert tight.bm.num_free == 24


def test_a_sequence_that_can_never_fit_is_finished_and_the_rest_complete(model):
    short, long = tc.sine_clip(1.0, seed=1), tc.sine_clip(12.0, seed=2)
    plans = [(_prompt(model, c, "Q?"), _plan(model.processor, [], 6)) for c in (short, long)]
    engine = Engine(model, EngineConfig(num_blocks=12, block_size=16, max_num_batched_tokens=64),
                    logits_processors=[_processor(model, plans)])
    params = SamplingParams(temperature=0, max_new_tokens=10)
    ok, too_big = engine.generate([Request(short, "Q?", params), Request(long, "Q?", params)])
    assert too_big.samples[0].finish_reason == "kv_cache_full"  # 12 s = 300 audio tokens > 12 blocks of 16
    assert ok.samples[0].finish_reason == "stop" and len(ok.samples[0].token_ids) == 7


def test_runaway_relistening_is_capped(model):
    clip = tc.sine_clip(3.0, seed=8)
    segs = [(2 + 18 * i, "<seg>0.5, 1.5</seg>") for i in range(5)]
    plans = [(_prompt(model, clip, "Again?"), _plan(model.processor, segs, 2 + 18 * 5 + 2))]
    policy = RelistenPolicy(max_turns=3)
    engine = Engine(model, EngineConfig(num_blocks=100, block_size=16, relisten=policy),
                    logits_processors=[_processor(model, plans)])
    [res] = engine.generate([Request(clip, "Again?", SamplingParams(temperature=0, max_new_tokens=120))])
    actions = [(r.decision.action, r.decision.reason) for r in res.samples[0].relistens]
    assert actions == [("relisten", "ok")] * 3 + [("skip", "max turns")] * 2
    assert res.samples[0].finish_reason == "stop"  # echo keeps decoding to the answer
    stop = Engine(model, EngineConfig(num_blocks=100, block_size=16,
                                      relisten=RelistenPolicy(max_turns=3, after_max_turns="stop")),
                  logits_processors=[_processor(model, plans)])
    [res] = stop.generate([Request(clip, "Again?", SamplingParams(temperature=0, max_new_tokens=120))])
    assert res.samples[0].finish_reason == "relisten_stop"


def test_bad_requests_are_reported_and_the_batch_finishes(model, tmp_path):
    clip = tc.sine_clip(2.0, seed=9)
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    plans = [(_prompt(model, clip, "Fine?"), _plan(model.processor, [], 5))]
    engine = Engine(model, EngineConfig(num_blocks=50, block_size=16, max_model_len=200),
                    logits_processors=[_processor(model, plans)])
    params = SamplingParams(temperature=0, max_new_tokens=8)
    results = engine.generate([
        Request(tmp_path / "broken.wav", "Fine?", params),
        Request(clip, "Fine?", params),
        Request(clip, "   ", params),
        Request(tc.sine_clip(9.0), "Fine?", params),  # 225 audio tokens > max_model_len=200
    ])
    assert "broken.wav: cannot read" in results[0].error
    assert results[1].error is None and results[1].samples[0].finish_reason == "stop"
    assert results[2].error == "empty prompt"
    assert "does not fit max_model_len=200" in results[3].error
    with pytest.raises(EchoError, match="empty prompt"):
        engine.add_request(clip, "")
