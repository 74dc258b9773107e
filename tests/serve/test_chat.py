"""The official openai client against a live echo server: plain and streamed completions agree, n > 1, stop
strings, seeded sampling, log-probs, re-listen events that match the streamed tokens, re-listening off per
request, and the same answers as model.generate."""

from __future__ import annotations

import pytest

for _name in ("fastapi", "uvicorn", "openai"):
    pytest.importorskip(_name, reason=f"the server tests need {_name} (pip install '.[test]')")

import openai  # noqa: E402

import live  # noqa: E402
import tiny_checkpoints as tc  # noqa: E402
from echo.audio.features import num_audio_tokens, num_mel_frames  # noqa: E402
from echo.config import EngineConfig  # noqa: E402
from echo.engine.llm import Engine  # noqa: E402
from echo.serve import ServeConfig  # noqa: E402

SEGS = ((2, "<seg>0.5, 1.5</seg>"), (24, "<seg>1.0, 2.25</seg>"))


@pytest.fixture(scope="module")
def server(model):
    engine = Engine(model, EngineConfig(num_blocks=300, block_size=16, max_model_len=1024),
                    logits_processors=[live.script(model.processor.tokenizer, SEGS, end=44)])
    with live.serve(engine, ServeConfig(model_name="tiny")) as (url, app):
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0), engine


def _stream(client, **kwargs):
    """Streamed content per choice, the re-listen events (with the content streamed before each), finish
    reasons, and the usage."""
    content, events, finish, usage = {}, [], {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            content.setdefault(choice.index, "")
            content[choice.index] += choice.delta.content or ""
            extra = (choice.model_extra or {}).get("echo") or {}
            if "relisten" in extra:
                events.append((choice.index, content[choice.index], extra["relisten"]))
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return content, events, finish, usage


def test_plain_and_streamed_completions_agree_and_report_relistens(server, model):
    client, engine = server
    clip = tc.sine_clip(3.0, seed=1)
    kwargs = dict(model="tiny", messages=live.audio_message(clip, "What happens?"), temperature=0, max_tokens=60)
    plain = client.chat.completions.create(**kwargs)
    [choice] = plain.choices
    text = choice.message.content
    assert "<seg>0.5, 1.5</seg>" in text and "<seg>1.0, 2.25</seg>" in text
    assert choice.finish_reason == "stop"
    relistens = choice.model_extra["echo"]["relistens"]
    assert [r["requested_s"] for r in relistens if r["action"] == "relisten"] == [[0.5, 1.5], [1.0, 2.25]]

    content, events, finish, usage = _stream(client, **kwargs)
    assert content == {0: text} and finish == {0: "stop"}
    strip = lambda r: {k: v for k, v in r.items() if k != "cache_hit"}  # the second time, spans are cached
    assert [strip(e) for _, _, e in events] == [strip(r) for r in relistens]
    assert all(e["cache_hit"] for _, _, e in events if e["action"] == "relisten")
    assert usage.prompt_tokens == plain.usage.prompt_tokens > 0
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.model_extra["spliced_audio_tokens"] == plain.usage.model_extra["spliced_audio_tokens"]


def test_relisten_events_are_consistent_with_the_tokens(server, model):
    client, _ = server
    clip = tc.sine_clip(3.0, seed=2)
    features = model.resolve_feature_config()
    content, events, _, usage = _stream(client, model="tiny", messages=live.audio_message(clip, "Listen again?"),
                                        temperature=0, max_tokens=60)
    text = content[0]
    assert len(events) == text.count("</seg>") >= 2  # one event per closing tag, in stream order
    spliced = 0
    for _, before, event in events:
        assert before.endswith(f"<seg>{event['text']}</seg>")  # reported right after its tag was streamed
        if event["action"] != "relisten":
            continue
        a, b = event["requested_s"]
        s, e = event["applied_samples"]
        assert (s, e) == (round(a * 16000), round(min(b, 3.0) * 16000))
        assert event["applied_s"] == [s / 16000, e / 16000]
        assert event["inserted"] and event["num_audio_tokens"] == num_audio_tokens(num_mel_frames(e - s, features))
        spliced += event["num_audio_tokens"]
    assert usage.model_extra["spliced_audio_tokens"] == spliced > 0
    # the same clip again: both spans come from the encoder cache
    _, again, _, _ = _stream(client, model="tiny", messages=live.audio_message(clip, "Listen again?"),
                             temperature=0, max_tokens=60)
    assert [e["cache_hit"] for _, _, e in again if e["action"] == "relisten"] == [True, True]


def test_relistening_off_per_request_makes_a_plain_server(server):
    client, _ = server
    clip = tc.sine_clip(3.0, seed=3)
    kwargs = dict(model="tiny", messages=live.audio_message(clip, "Plain?"), temperature=0, max_tokens=60)
    content, events, _, usage = _stream(client, extra_body={"relisten": False}, **kwargs)
    assert "<seg>0.5, 1.5</seg>" in content[0]  # the tags are just text
    assert events and all(e["action"] == "skip" and not e["inserted"] for _, _, e in events)
    assert usage.model_extra["spliced_audio_tokens"] == 0
    on = client.chat.completions.create(**kwargs, extra_body={"relisten": {"max_turns": 1}})
    actions = [r["action"] for r in on.choices[0].model_extra["echo"]["relistens"]]
    assert actions[:2] == ["relisten", "skip"]


def test_n_samples_are_seeded_and_streaming_gives_the_same_samples(server):
    client, _ = server
    clip = tc.sine_clip(2.0, seed=4)
    kwargs = dict(model="tiny", messages=live.audio_message(clip, "Guess?"), temperature=1.0, n=3, seed=11,
                  max_tokens=20)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in second.choices]
    assert len(set(texts)) > 1  # three different samples
    other = client.chat.completions.create(**{**kwargs, "seed": 12})
    assert [c.message.content for c in other.choices] != texts
    content, _, finish, usage = _stream(client, **kwargs)
    assert [content[i] for i in range(3)] == texts and sorted(finish) == [0, 1, 2]
    assert usage.completion_tokens == first.usage.completion_tokens


def test_stop_strings_end_the_answer_and_are_not_returned(server):
    client, _ = server
    clip = tc.sine_clip(3.0, seed=5)
    kwargs = dict(model="tiny", messages=live.audio_message(clip, "Stop?"), temperature=0, max_tokens=60)
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    stopped = client.chat.completions.create(stop=["1.5</seg>", "never"], **kwargs)
    assert stopped.choices[0].message.content == full.split("1.5</seg>")[0]
    assert stopped.choices[0].finish_reason == "stop"
    content, events, _, _ = _stream(client, stop="1.5</seg>", **kwargs)
    assert content[0] == full.split("1.5</seg>")[0] and events == []  # stopped before any re-listen


def test_logprobs_cover_every_sampled_token(server):
    client, _ = server
    clip = tc.sine_clip(2.5, seed=6)
    out = client.chat.completions.create(model="tiny", messages=live.audio_message(clip, "Why?"), temperature=1.0,
                                         seed=3, max_tokens=30, logprobs=True)
    entries = out.choices[0].logprobs.content
    assert len(entries) == out.usage.completion_tokens
    assert all(e.logprob <= 0 for e in entries)
    assert "".join(e.token for e in entries).startswith(out.choices[0].message.content[:5])


def test_same_answers_as_model_generate(model):
    """No logits processor: the random model's own choices, through HTTP and through model.generate."""
    config = EngineConfig(num_blocks=200, block_size=16, max_model_len=1024)
    cases = [(tc.sine_clip(2.0, seed=7), "First?", 0.0, None, 1), (tc.sine_clip(2.5, seed=8), "Second?", 0.8, 5, 1),
             (tc.sine_clip(1.5, seed=9), "Third?", 1.0, 9, 2)]
    with live.serve(Engine(model, config), ServeConfig(model_name="tiny")) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for clip, question, temperature, seed, n in cases:
            got = client.chat.completions.create(model="tiny", messages=live.audio_message(clip, question, as_url=True),
                                                 temperature=temperature, seed=seed, n=n, max_tokens=12)
            want = model.generate(clip, question, temperature=temperature, seed=seed, n=n, max_new_tokens=12,
                                  engine_config=config)
            assert [c.message.content for c in got.choices] == [s.text for s in want.samples]
            assert [c.finish_reason for c in got.choices] == [
                {"length": "length"}.get(s.finish_reason, "stop") for s in want.samples]
            assert got.usage.completion_tokens == sum(sum(s.mask) for s in want.samples)
