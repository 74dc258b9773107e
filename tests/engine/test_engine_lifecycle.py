"""Nothing a request does outlives it: an interrupted ``generate`` leaves no zombie in the engine cached on the
model, ``abort`` and an abandoned ``stream`` free everything, long clips follow ``EngineConfig.long_audio``, and
inference uses the checkpoint's own feature config, the one SFT and GRPO use."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import echo
import tiny_checkpoints as tc
from echo.audio import FeatureConfig
from echo.audio.features import num_audio_tokens, num_mel_frames
from echo.config import EngineConfig, RelistenPolicy, SamplingParams
from echo.api import engine_for
from echo.engine.llm import Engine, Request
from echo.engine.relisten import decide
from echo.errors import ConfigError
from echo.train.data import SFTRecord, build_example

from test_engine_vs_reference import _conversation, _plan, _processor  # noqa: E402  (same directory)

PARAMS = SamplingParams(temperature=1.0, seed=3, max_new_tokens=10, logprobs=True)


@pytest.fixture(scope="module")
def model(checkpoint):
    path, _ = checkpoint("omni-tiny-gqa2")
    return echo.load(path)


def _idle(engine: Engine) -> None:
    assert not engine.pending() and not engine.scheduler.has_work() and not engine.scheduler.finished
    assert engine.bm.num_free == engine.bm.num_blocks


def test_an_exception_inside_generate_leaves_no_zombie_in_the_models_engine(model, monkeypatch):
    clip = tc.sine_clip(2.0, seed=1)
    [fresh] = Engine(model, EngineConfig(num_blocks=64)).generate([Request(clip, "Again?", PARAMS)])
    config = EngineConfig(num_blocks=64)
    engine = engine_for(model, config)
    calls = {"n": 0}
    real = Engine.step

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Engine, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.generate([Request(clip, "Again?", PARAMS)] * 3, engine_config=config)
    monkeypatch.undo()
    _idle(engine)
    again = model.generate(clip, "Again?", engine_config=config, temperature=1.0, seed=3, max_new_tokens=10,
                           logprobs=True)
    assert engine_for(model, config) is engine and again.samples[0].token_ids == fresh.samples[0].token_ids
    _idle(engine)


def test_abort_finishes_frees_and_forgets_one_request(model):
    clip = tc.sine_clip(2.0, seed=2)
    engine = Engine(model, EngineConfig(num_blocks=64))
    [alone] = Engine(model, EngineConfig(num_blocks=64)).generate([Request(clip, "Kept?", PARAMS)])
    gone = engine.add_request(clip, "Gone?", SamplingParams(n=3, seed=1, max_new_tokens=50, ignore_eos=True))
    kept = engine.add_request(clip, "Kept?", PARAMS)
    for _ in range(3):
        engine.step()
    seqs = engine.request(gone).samples
    assert engine.abort(gone) is True
    assert [s.finish_reason for s in seqs] == ["abort"] * 3 and all(not s.block_table for s in seqs)
    assert engine.abort(gone) is False and gone not in engine.pending()
    while engine.scheduler.has_work():
        engine.step()
    result = engine.result(kept)
    assert result.samples[0].token_ids == alone.samples[0].token_ids  # the other request never noticed
    _idle(engine)


def test_a_stream_consumer_that_stops_early_aborts_its_request(model):
    clip = tc.sine_clip(2.0, seed=3)
    engine = Engine(model, EngineConfig(num_blocks=64))
    stream = engine.stream(clip, "Stream?", SamplingParams(temperature=1.0, seed=0, max_new_tokens=200,
                                                           ignore_eos=True))
    next(stream)
    assert engine.scheduler.has_work()
    stream.close()
    _idle(engine)


def test_long_clips_are_truncated_with_a_warning_and_relistens_stay_inside(model):
    """A 4 s feature extractor and a 5 s clip: the model hears 4 s; a span past them is "outside clip", one
    reaching past them is clamped to them."""
    proc = model.processor
    clip = tc.sine_clip(5.0, seed=4)
    features = FeatureConfig(chunk_length=4)
    frames = [num_mel_frames(len(clip), features)]
    prompt = proc(_conversation("Long?"), frames)
    plan = _plan(proc, [(1, "<seg>4.2, 4.8</seg>"), (16, "<seg>3.0, 4.5</seg>")], 34)
    engine = Engine(model, EngineConfig(num_blocks=128), features, logits_processors=[_processor(
        model, [(prompt, plan)])])
    [res] = engine.generate([Request(clip, "Long?", SamplingParams(temperature=0, max_new_tokens=40))])
    assert res.error is None and res.audio_samples == 64_000 and res.prompt_token_ids == prompt
    assert res.warnings == ["audio of 5.0 s truncated to its first 4 s, the feature extractor's maximum; "
                            "re-listens are limited to them"]
    assert [(r.decision.action, r.decision.reason, r.decision.applied_samples)
            for r in res.samples[0].relistens] == [("skip", "outside clip", None),
                                                   ("relisten", "clamped", (48_000, 64_000))]
    strict = Engine(model, EngineConfig(num_blocks=128, long_audio="error"), features)
    [refused] = strict.generate([Request(clip, "Long?", SamplingParams(max_new_tokens=4))])
    assert "5.0 s, above the feature extractor's maximum of 4 s" in refused.error
    with pytest.raises(ConfigError, match="long_audio"):
        EngineConfig(long_audio="cut")


def test_a_span_too_short_for_one_audio_token_is_never_spliced():
    policy = RelistenPolicy(min_span_s=0.0)
    d = decide("<seg>1.0, 1.01</seg>", 0, 32_000, policy, min_samples=321)  # 160 samples: 0 audio tokens
    assert (d.action, d.reason) == ("skip", "too short")
    assert decide("<seg>1.0, 1.03</seg>", 0, 32_000, policy, min_samples=321).action == "relisten"


@pytest.fixture(scope="module")
def chunk10(checkpoint, tmp_path_factory):
    """The tiny checkpoint with a preprocessor_config.json of chunk_length=10."""
    path, _ = checkpoint("omni-tiny-gqa2")
    out = tmp_path_factory.mktemp("chunk10") / "ckpt"
    shutil.copytree(path, out)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps({**pre, "chunk_length": 10}))
    return out


def test_inference_reads_the_checkpoints_feature_config_like_training(chunk10):
    model = echo.load(chunk10)
    assert model.feature_config == FeatureConfig(chunk_length=10)
    assert model.resolve_feature_config() is model.feature_config  # engine (no directory given) ...
    assert model.resolve_feature_config(chunk10) is model.feature_config  # ... and SFT / GRPO (given it)
    engine = Engine(model, EngineConfig(num_blocks=128))
    assert engine.features == FeatureConfig(chunk_length=10)
    clip = tc.sine_clip(12.0, seed=5)
    [res] = engine.generate([Request(clip, "Twelve?", SamplingParams(max_new_tokens=2))])
    audio_tokens = res.prompt_token_ids.count(model.config.audio_token_id)
    assert audio_tokens == num_audio_tokens(1000) == 250  # 10 s, not 12 s (300) nor the family's 300 s
    example = build_example(SFTRecord("r", "clip.wav", "Twelve?", "<answer>A</answer>"), model.processor,
                            features=model.resolve_feature_config(chunk10), num_samples=len(clip))
    assert example.input_ids.count(model.config.audio_token_id) == audio_tokens  # SFT sees the same prompt


def test_a_checkpoint_with_dither_is_refused_at_load_as_in_training(chunk10, tmp_path):
    out = tmp_path / "dither"
    shutil.copytree(chunk10, out)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps({**pre, "dither": 0.5}))
    with pytest.raises(ConfigError, match="dither=0.5"):
        echo.load(out)


def test_audio_too_short_for_one_token_is_a_per_request_error(model):
    engine = Engine(model, EngineConfig(num_blocks=64))
    short, ok = engine.generate([Request(np.zeros(320, np.float32), "Short?", PARAMS),
                                 Request(tc.sine_clip(0.03, seed=6)[:321], "Shortest?", PARAMS)])
    assert "320 samples (20.0 ms) is too short" in short.error
    assert ok.error is None and ok.prompt_token_ids.count(model.config.audio_token_id) == 1
    _idle(engine)


def test_engine_for_compares_configs_by_value(model):
    engine = engine_for(model, EngineConfig(num_blocks=48))
    assert engine_for(model, EngineConfig(num_blocks=48)) is engine  # equal, not the same object: same KV cache
    assert engine_for(model) is engine  # no config: whatever the model has
    other = engine_for(model, EngineConfig(num_blocks=40))
    assert other is not engine and other.config.num_blocks == 40 and engine_for(model) is other
