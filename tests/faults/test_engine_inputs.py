"""Every bad input a hostile but realistic user can hand the engine, as one table.

Each case is either a **clear error** (an EchoError whose message names the problem: the request's
``GenerationResult.error``, or a sample ended with finish reason "invalid_logits"/"error" and its message) or a
**documented behaviour** (the check says which). Whatever the case, a good request in the same batch finishes
exactly as it does on a fresh engine, the engine holds nothing of the bad one afterwards (no request, no
sequence, every KV block free), and it answers the good request again identically: one engine serves the whole
table, as one long-lived server would.
"""

from __future__ import annotations

import dataclasses
import signal
from typing import Callable

import numpy as np
import pytest
import torch

import echo
import tiny_checkpoints as tc
from echo.audio import FeatureConfig
from echo.config import EngineConfig, RelistenPolicy, SamplingParams
from echo.engine import llm, runner
from echo.engine.llm import Engine, Request
from echo.errors import ConfigError, EchoError
from helpers import assert_close

CONFIG = dict(num_blocks=96, block_size=16, max_model_len=512)
GOOD = SamplingParams(temperature=1.0, seed=7, max_new_tokens=8, logprobs=True)


@dataclasses.dataclass
class Ctx:
    model: object
    engine: Engine
    clip: np.ndarray
    bad_prompt: list[int]  # the ids of the "Bad?" request (processors misbehave on it only)
    good_alone: llm.GenerationResult


@pytest.fixture(scope="module")
def ctx(checkpoint):
    path, _ = checkpoint("omni-tiny-gqa2")
    model = echo.load(path)
    clip = tc.sine_clip(3.0, seed=1)
    [good] = Engine(model, EngineConfig(**CONFIG)).generate([Request(clip, "Good?", GOOD)])
    _, frames = tc.features_for("qwen2_5_omni", [clip])
    bad_prompt = model.processor(tc.conversation(1, "Bad?"), frames.tolist())
    return Ctx(model, Engine(model, EngineConfig(**CONFIG)), clip, bad_prompt, good)


@pytest.fixture(autouse=True)
def _no_hang():
    def hang(*_):
        raise TimeoutError("hang: the case ran past 120 s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ---- the table ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    id: str
    expect: str  # "error" | "documented"
    request: Callable[[Ctx], tuple]  # -> (audio, prompt, params)
    says: str = ""  # "error": words of the message that name the problem
    check: Callable | None = None  # "documented": asserts the documented behaviour on the bad request's result
    processor: Callable | None = None  # factory(ctx) of an engine-wide logits processor that misbehaves on "Bad?"
    config: dict = dataclasses.field(default_factory=dict)  # EngineConfig overrides: a fresh engine
    chunk_length: int | None = None  # the feature extractor's maximum, in seconds: a fresh engine
    step_fails: bool = False  # the model's forward raises whenever the bad request is in the step


def audio(make, says=None, check=None, id=None):
    expect = "error" if says is not None else "documented"
    return Case(id, expect, lambda c: (make(c), "Bad?", GOOD), says or "", check)


def prompt(value, says):
    return Case(None, "error", lambda c: (c.clip, value(c) if callable(value) else value, GOOD), says)


def params(value, says):
    return Case(None, "error", lambda c: (c.clip, "Bad?", value() if callable(value) else value), says)


def processor(garbage, says):
    def factory(c: Ctx):
        def proc(history, logits):
            return garbage(logits) if history[: len(c.bad_prompt)] == c.bad_prompt else logits
        return proc
    return Case(None, "error", lambda c: (c.clip, "Bad?", GOOD), says, processor=factory)


def _finishes(reason, tokens=None):
    def check(result, c):
        assert result.error is None and result.samples[0].finish_reason == reason, result
        if tokens is not None:
            assert sum(result.samples[0].mask) == tokens
    return check


def _same_as(audio=None, prompt=None):
    """The documented conversion: the same tokens as the equivalent plain request on a fresh engine."""
    def check(result, c):
        assert result.error is None, result.error
        equivalent = (audio(c) if audio else c.clip, prompt(c) if prompt else "Bad?", GOOD)
        [ref] = Engine(c.model, EngineConfig(**CONFIG)).generate([Request(*equivalent)])
        assert result.samples[0].token_ids == ref.samples[0].token_ids
    return check


def _long(c):  # 5 s: past a 4 s feature extractor, while the 3 s good clip is not
    return np.concatenate([c.clip, c.clip[:32000]])


def _mutated(**fields):
    def make():
        p = SamplingParams()
        for k, v in fields.items():
            setattr(p, k, v)  # after construction: only the admission check can see it
        return p
    return make


def _greedy_equivalent(result, c):
    [ref] = Engine(c.model, EngineConfig(**CONFIG)).generate(
        [Request(c.clip, "Bad?", SamplingParams(temperature=0, max_new_tokens=8))])
    assert result.samples[0].token_ids == ref.samples[0].token_ids


def _truncated(result, c):
    assert result.error is None and result.audio_samples == 4 * 16000
    assert result.warnings and "truncated to its first 4 s" in result.warnings[0]


def _with(fn, **kw):
    return dataclasses.replace(fn, **kw)


def _forced_audio_token(logits):
    out = torch.full_like(logits, float("-inf"))
    out[tc.special_ids()["<|AUDIO|>"]] = 0.0
    return out


CASES = [
    # audio
    _with(audio(lambda c: np.zeros(0, np.float32), "zero samples"), id="audio-empty"),
    _with(audio(lambda c: np.full(16000, np.nan, np.float32), "non-finite"), id="audio-nan"),
    _with(audio(lambda c: np.concatenate([c.clip, [np.inf]]).astype(np.float32), "non-finite"), id="audio-inf"),
    _with(audio(lambda c: c.clip[:320], "too short"), id="audio-320-samples"),
    _with(audio(lambda c: c.clip[:1], "too short"), id="audio-1-sample"),
    _with(audio(lambda c: np.zeros((2, 3, 16000), np.float32), "1-D or 2-D"), id="audio-3d"),
    _with(audio(lambda c: c.clip.astype(np.complex64), "complex samples are not audio"), id="audio-complex"),
    _with(audio(lambda c: c.clip > 0, "expected numeric samples"), id="audio-bool"),
    _with(audio(lambda c: None, "expected numeric samples"), id="audio-none"),
    _with(audio(lambda c: "does/not/exist.wav", "file not found"), id="audio-missing-file"),
    _with(audio(lambda c: ".", "is a directory"), id="audio-directory"),
    _with(audio(lambda c: {"array": c.clip}, "expected numeric samples"), id="audio-dict"),
    _with(audio(lambda c: torch.from_numpy(c.clip).to(torch.bfloat16), check=_same_as(
        lambda c: torch.from_numpy(c.clip).to(torch.bfloat16).float().numpy())), id="audio-bfloat16-tensor-upcast"),
    _with(audio(lambda c: torch.from_numpy(c.clip).half(), check=_same_as(
        lambda c: torch.from_numpy(c.clip).half().float().numpy())), id="audio-float16-tensor-upcast"),
    _with(audio(lambda c: (c.clip * 32767).astype(np.int16), check=_same_as(
        lambda c: (c.clip * 32767).astype(np.int16).astype(np.float32) / 32768)), id="audio-int16-scaled"),
    _with(audio(lambda c: np.stack([c.clip, c.clip], 1), check=_same_as()), id="audio-stereo-mixed-down"),
    _with(audio(_long, "above the feature extractor's maximum of 4 s"), id="audio-too-long-policy-error",
          config=dict(long_audio="error"), chunk_length=4),
    _with(audio(_long, check=_truncated), id="audio-too-long-policy-truncate", chunk_length=4),
    # prompt
    _with(prompt(5, "prompt must be"), id="prompt-int"),
    _with(prompt(b"What?", "prompt must be"), id="prompt-bytes"),
    _with(prompt({"role": "user", "content": "hi"}, "prompt must be"), id="prompt-dict"),
    _with(prompt(None, "prompt must be"), id="prompt-none"),
    _with(prompt([], "prompt must be"), id="prompt-empty-list"),
    _with(prompt("", "empty prompt"), id="prompt-empty-string"),
    _with(prompt("  \n", "empty prompt"), id="prompt-whitespace"),
    _with(prompt([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "0 audio parts"),
          id="chat-no-audio-part"),
    _with(prompt(tc.conversation(2, "two?"), "2 audio parts"), id="chat-two-audio-parts"),
    _with(prompt([{"content": "hi"}], "no role"), id="chat-message-without-role"),
    _with(prompt([{"role": "user", "content": 7}], "content must be"), id="chat-content-int"),
    _with(prompt([{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": None}]}], "text part"),
          id="chat-text-part-none"),
    _with(prompt("Is <|AUDIO|> here?", "placeholders"), id="prompt-text-with-audio-placeholder"),
    _with(prompt(lambda c: c.bad_prompt[:-1] + [10**6], "outside the model's vocabulary"), id="ids-above-vocab"),
    _with(prompt(lambda c: [-1] + c.bad_prompt, "outside the model's vocabulary"), id="ids-negative"),
    _with(prompt(lambda c: [t for t in c.bad_prompt if t != tc.special_ids()["<|AUDIO|>"]], "<|AUDIO|> tokens"),
          id="ids-without-audio"),
    _with(prompt(lambda c: [float(t) for t in c.bad_prompt], "prompt must be"), id="ids-floats"),
    _with(prompt(lambda c: c.bad_prompt[:3] + ["x"], "prompt must be"), id="ids-mixed-types"),
    _with(prompt("word " * 600, "does not fit max_model_len"), id="prompt-over-max-model-len"),
    Case("ids-numpy-array", "documented", lambda c: (c.clip, np.asarray(c.bad_prompt), GOOD),
         check=_same_as(prompt=lambda c: c.bad_prompt)),
    Case("ids-torch-tensor", "documented", lambda c: (c.clip, torch.tensor(c.bad_prompt), GOOD),
         check=_same_as(prompt=lambda c: c.bad_prompt)),
    # sampling parameters (per request, as a dict or a SamplingParams changed after it was made)
    _with(params({"temperature": float("nan")}, "temperature must be a finite number"), id="temperature-nan"),
    _with(params({"temperature": float("inf")}, "temperature must be a finite number"), id="temperature-inf"),
    _with(params({"temperature": -1.0}, "temperature must be >= 0"), id="temperature-negative"),
    _with(params({"temperature": "1"}, "temperature must be a finite number"), id="temperature-string"),
    _with(params({"top_p": float("nan")}, "top_p must be a finite number"), id="top-p-nan"),
    _with(params({"top_p": 0.0}, "top_p must be in (0, 1]"), id="top-p-zero"),
    _with(params({"top_p": 1.5}, "top_p must be in (0, 1]"), id="top-p-above-one"),
    _with(params({"top_k": -1}, "top_k must be >= 0"), id="top-k-negative"),
    _with(params({"top_k": 2.5}, "top_k must be an integer"), id="top-k-float"),
    _with(params({"n": 2.5}, "n must be an integer"), id="n-float"),
    _with(params({"n": 0}, "n must be positive"), id="n-zero"),
    _with(params({"seed": 2**70}, "seed must be in"), id="seed-2-pow-70"),
    _with(params({"seed": -1}, "seed must be in"), id="seed-negative"),
    _with(params({"seed": 1.5}, "seed must be an integer"), id="seed-float"),
    _with(params({"max_new_tokens": 2.5}, "max_new_tokens must be an integer"), id="max-new-tokens-float"),
    _with(params({"max_new_tokens": 0}, "max_new_tokens must be positive"), id="max-new-tokens-zero"),
    _with(params({"stop": [""]}, "stop must be non-empty strings"), id="stop-empty-string"),
    _with(params({"stop": [None]}, "stop must be non-empty strings"), id="stop-none"),
    _with(params({"stop": 5}, "stop must be a string or a sequence"), id="stop-int"),
    _with(params({"logprobs": "yes"}, "logprobs must be True or False"), id="logprobs-string"),
    _with(params({"bogus": 1}, "unexpected keyword argument 'bogus'"), id="params-unknown-field"),
    _with(params("hot", "sampling parameters must be SamplingParams or a dict"), id="params-string"),
    _with(params(_mutated(temperature=float("nan")), "temperature must be a finite number"),
          id="params-mutated-temperature-nan"),
    _with(params(_mutated(n=2.5), "n must be an integer"), id="params-mutated-n-float"),
    Case("max-new-tokens-huge", "documented", lambda c: (c.clip, "Bad?", SamplingParams(
        max_new_tokens=10**12, ignore_eos=True, seed=1)), check=_finishes("length"), config=dict(max_model_len=160)),
    Case("temperature-1e-30-is-greedy", "documented", lambda c: (c.clip, "Bad?", SamplingParams(
        temperature=1e-30, max_new_tokens=8)), check=_greedy_equivalent),
    Case("ignore-eos", "documented", lambda c: (c.clip, "Bad?", SamplingParams(ignore_eos=True, max_new_tokens=5,
                                                                                 seed=3)), check=_finishes("length", 5)),
    # logits processors returning garbage (for the bad request only)
    _with(processor(lambda x: torch.full_like(x, float("nan")), "NaN or +inf"), id="processor-nan"),
    _with(processor(lambda x: x.clone().index_fill(0, torch.tensor([3]), float("inf")), "NaN or +inf"),
          id="processor-plus-inf"),
    _with(processor(lambda x: torch.full_like(x, float("-inf")), "no token with a finite logit"),
          id="processor-all-minus-inf"),
    _with(processor(lambda x: None, "must be a float tensor"), id="processor-returns-none"),
    _with(processor(lambda x: x[:10], "must be a float tensor of shape"), id="processor-wrong-shape"),
    _with(processor(lambda x: x.long(), "must be a float tensor"), id="processor-int-tensor"),
    _with(processor(lambda x: 1 / 0, "raised ZeroDivisionError"), id="processor-raises"),
    _with(processor(_forced_audio_token, "no token with a finite logit"), id="processor-forces-audio-placeholder"),
    # the model's forward itself fails while the bad request is in the step: the engine reruns the step in halves,
    # so the bad request alone ends and the good one, which shared the failing step, finishes as it does alone
    Case("model-forward-raises", "error", lambda c: (c.clip, "Bad?", GOOD), "RuntimeError: injected",
         step_fails=True),
    # request containers
    Case("request-dict-without-prompt", "error", lambda c: {"audio": c.clip}, "lacks 'prompt'"),
    Case("request-int", "error", lambda c: 42, "a request must be"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ctx: Ctx, monkeypatch):
    def fresh():
        features = None if case.chunk_length is None else FeatureConfig(chunk_length=case.chunk_length)
        return Engine(ctx.model, EngineConfig(**{**CONFIG, **case.config}), features)

    own = bool(case.config) or case.chunk_length is not None
    engine = fresh() if own else ctx.engine
    # a config of its own: the good reference comes from a fresh engine of that config
    [good_alone] = fresh().generate([Request(ctx.clip, "Good?", GOOD)]) if own else [ctx.good_alone]
    if case.processor is not None:
        monkeypatch.setattr(engine, "logits_processors", [case.processor(ctx)])
    if case.step_fails:
        real = runner.run_step

        def failing(model, kv, bm, chunks):
            if any(c.seq.token_ids[: len(ctx.bad_prompt)] == ctx.bad_prompt for c in chunks):
                raise RuntimeError("injected failure of the model's forward")
            return real(model, kv, bm, chunks)

        monkeypatch.setattr(runner, "run_step", failing)
    made = case.request(ctx)
    bad_request = Request(*made) if isinstance(made, tuple) else made
    bad, good = engine.generate([bad_request, Request(ctx.clip, "Good?", GOOD)])

    if case.expect == "error":
        message = bad.error or "; ".join(s.error or "" for s in bad.samples)
        assert case.says in message, f"expected {case.says!r} in {message!r}"
        if bad.error is None:  # it ran: each sample ended with a reason naming what happened
            assert {s.finish_reason for s in bad.samples} <= {"invalid_logits", "error"}
        elif isinstance(made, tuple):  # refused at admission: add_request raises the same EchoError
            with pytest.raises(EchoError, match=".") as raised:
                engine.add_request(*made)
            assert case.says in str(raised.value)
    else:
        case.check(bad, ctx)

    monkeypatch.undo()  # the processor / failure was the bad request's: the good one runs on a sound engine
    _assert_same(good, good_alone)
    assert not engine.pending() and not engine.scheduler.has_work() and not engine.scheduler.finished
    assert engine.bm.num_free == engine.bm.num_blocks, "KV blocks leaked"
    [again] = engine.generate([Request(ctx.clip, "Good?", GOOD)])
    _assert_same(again, good_alone)
    assert engine.bm.num_free == engine.bm.num_blocks


def _assert_same(result, ref):
    assert result.error is None, result.error
    got, want = result.samples[0], ref.samples[0]
    assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
    assert_close("log-probs beside a bad request", torch.tensor(want.logprobs), torch.tensor(got.logprobs), atol=1e-5)


def test_table_counts():
    """The table's shape, for the report: every case has a readable id and one expected class."""
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids) and all(ids)
    errors = sum(c.expect == "error" for c in CASES)
    documented = sum(c.expect == "documented" for c in CASES)
    assert errors + documented == len(CASES)
    print(f"\n{len(CASES)} inputs: {errors} clear errors, {documented} documented behaviours")


@pytest.mark.parametrize("make,says", [
    (lambda: EngineConfig(num_blocks=2.5), "num_blocks must be an integer"),
    (lambda: EngineConfig(max_model_len=0), "max_model_len must be positive"),
    (lambda: EngineConfig(block_size=True), "block_size must be an integer"),
    (lambda: EngineConfig(encoder_cache_bytes=-1), "encoder_cache_bytes must be >= 0"),
    (lambda: EngineConfig(long_audio="cut"), "long_audio must be 'truncate' or 'error'"),
    (lambda: EngineConfig(relisten={"max_turns": 2}), "relisten must be a RelistenPolicy"),
    (lambda: RelistenPolicy(min_span_s=float("nan")), "min_span_s must be a finite number"),
    (lambda: RelistenPolicy(max_span_s=float("inf")), "max_span_s must be a finite number"),
    (lambda: RelistenPolicy(max_turns=1.5), "max_turns must be an integer"),
    (lambda: RelistenPolicy(out_of_range="wrap"), "out_of_range must be one of"),
], ids=["num-blocks-float", "max-model-len-zero", "block-size-bool", "encoder-cache-negative", "long-audio-unknown",
        "relisten-dict", "min-span-nan", "max-span-inf", "max-turns-float", "out-of-range-unknown"])
def test_bad_engine_configuration(make, says):
    """Engine-wide settings are refused when made, before any engine exists (a clear ConfigError each)."""
    with pytest.raises(ConfigError) as raised:
        make()
    assert says in str(raised.value)
