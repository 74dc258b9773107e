"""The engine's public accessors (pending / request / is_done / result), the step's shape (schedule -> run ->
postprocess: a leader whose prompt completes samples for its unforked samples from one row), a leader that ends
before its prompt is cached taking its samples with it, and the import paths of the public API."""

from __future__ import annotations

import subprocess
import sys

import pytest

import echo
import tiny_checkpoints as tc
from echo.config import EngineConfig, SamplingParams
from echo.engine import runner
from echo.engine.llm import Engine, GenerationResult, Request, RequestState
from echo.errors import EchoError

GREEDY = SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def model(checkpoint):
    path, _ = checkpoint("omni-tiny-gqa2")
    return echo.load(path)


def test_accessors_follow_a_request_from_admission_to_its_result(model):
    engine = Engine(model, EngineConfig(num_blocks=64))
    clip = tc.sine_clip(1.0, seed=1)
    a = engine.add_request(clip, "First?", GREEDY)
    b = engine.add_request(clip, "Second?", SamplingParams(temperature=1.0, n=2, seed=5, max_new_tokens=3,
                                                           ignore_eos=True))
    assert engine.pending() == [a, b]
    state = engine.request(b)
    assert isinstance(state, RequestState) and [s.sample_index for s in state.samples] == [0, 1]
    assert state.samples[0].token_ids == state.prompt_ids and not engine.is_done(b)
    with pytest.raises(EchoError, match="still decoding"):
        engine.result(b)
    while not (engine.is_done(a) and engine.is_done(b)):
        engine.step()
    result = engine.result(b)
    assert isinstance(result, GenerationResult) and result.request_index == b
    assert result.prompt_token_ids == state.prompt_ids
    assert [sum(s.mask) for s in result.samples] == [3, 3] and {s.finish_reason for s in result.samples} == {"length"}
    assert [s.num_sampled for s in state.samples] == [3, 3]  # the count the length check reads, not the mask
    assert engine.pending() == [a]
    for gone in (engine.request, engine.is_done, engine.result):
        with pytest.raises(EchoError, match=f"no request {b}"):
            gone(b)
    [alone] = Engine(model, EngineConfig(num_blocks=64)).generate([Request(clip, "First?", GREEDY)])
    assert engine.result(a).samples[0].token_ids == alone.samples[0].token_ids
    assert engine.pending() == [] and engine.bm.num_free == engine.bm.num_blocks


def test_the_prompt_completing_step_samples_every_sample_from_the_leaders_row(model):
    engine = Engine(model, EngineConfig(num_blocks=64))
    other = engine.add_request(tc.sine_clip(1.0, seed=2), "Other?", GREEDY)
    index = engine.add_request(tc.sine_clip(1.0, seed=3), "Three?", SamplingParams(temperature=1.0, n=3, seed=1,
                                                                                    max_new_tokens=4))
    step = engine.scheduler.schedule()
    leaders = [engine.request(other).samples[0], engine.request(index).samples[0]]
    assert [c.seq for c in step.chunks] == leaders
    assert step.samples == leaders + engine.request(index).samples[1:] and step.rows == [0, 1, 1, 1]
    engine.scheduler.postprocess(step, engine.runner.run(step))
    samples = engine.request(index).samples
    assert all(len(s) == len(samples[0]) and s.block_table for s in samples)  # forked, then each sampled its token
    assert len(set(samples[1].block_table[:-1]) & set(samples[0].block_table)) > 0


def _run_bounded(engine: Engine, request: Request, steps: int = 10) -> GenerationResult:
    """generate() for one request, but a regression that leaves a sample unfinished fails instead of looping."""
    index = engine.add_request(request.audio, request.prompt, request.params)
    for _ in range(steps):
        engine.step()
        if engine.is_done(index):
            return engine.result(index)
    raise AssertionError(f"request still decoding after {steps} steps: "
                         f"{[s.status for s in engine.request(index).samples]}")


def test_a_leader_that_fails_before_its_prompt_is_cached_takes_its_samples_with_it(model, monkeypatch):
    clip = tc.sine_clip(1.0, seed=4)
    n3 = SamplingParams(temperature=1.0, n=3, seed=2, max_new_tokens=4)
    tiny = Engine(model, EngineConfig(num_blocks=2, block_size=16))  # 1 s of audio needs more than 32 tokens
    full = _run_bounded(tiny, Request(clip, "Fits?", n3))
    assert [s.finish_reason for s in full.samples] == ["kv_cache_full"] * 3
    assert tiny.bm.num_free == 2 and not tiny.pending()

    def failing(*args):
        raise RuntimeError("forward failed")

    engine = Engine(model, EngineConfig(num_blocks=64))
    monkeypatch.setattr(runner, "run_step", failing)
    failed = _run_bounded(engine, Request(clip, "Fails?", n3))
    assert [(s.finish_reason, s.error) for s in failed.samples] == [("error", "RuntimeError: forward failed")] * 3
    assert engine.bm.num_free == 64 and not engine.pending() and not engine.scheduler.has_work()


def test_public_names_resolve_from_every_import_path():
    import echo.api as api
    import echo.engine.llm as llm
    import echo.engine.outputs as outputs

    assert echo.generate is api.generate and echo.engine_for is api.engine_for and echo.load is api.load
    assert echo.Model is api.Model and echo.from_transformers is api.from_transformers
    assert echo.Request is llm.Request is outputs.Request and llm.SampleOutput is outputs.SampleOutput
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        echo.nothing  # noqa: B018
    # models never import the engine, nor the engine the api (tests/test_import_layers.py checks every import)
    code = "import sys, echo.models, echo.models.loader; print(sorted(m for m in sys.modules if m.startswith(" \
           "('echo.engine', 'echo.api'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
