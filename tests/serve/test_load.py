"""Many clients, one batch: 32 concurrent streams equal the sequential answers and really shared the batch; a
client that goes away frees its KV blocks at once; a full server answers 429 with Retry-After and loses nothing;
a server shutting down aborts what is left cleanly."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

for _name in ("fastapi", "uvicorn", "openai"):
    pytest.importorskip(_name, reason=f"the server tests need {_name} (pip install '.[test]')")

import httpx  # noqa: E402
import openai  # noqa: E402

import live  # noqa: E402
import tiny_checkpoints as tc  # noqa: E402
from echo.config import EngineConfig  # noqa: E402
from echo.engine.llm import Engine  # noqa: E402
from echo.serve import ServeConfig  # noqa: E402
from echo.serve.metrics import parse  # noqa: E402


def _metrics(url: str) -> dict[str, float]:
    return parse(httpx.get(url + "/metrics").text)


def _wait_for(predicate, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Gate:
    """Wraps a logits processor; while closed, the engine thread waits inside its step (the server stays up)."""

    def __init__(self, inner):
        self.inner, self.open = inner, threading.Event()
        self.open.set()

    def __call__(self, history, logits):
        assert self.open.wait(timeout=60), "the gate stayed closed"
        return self.inner(history, logits)


def test_32_concurrent_streams_equal_sequential_and_share_the_batch(model):
    engine = Engine(model, EngineConfig(num_blocks=600, block_size=16, max_model_len=1024, max_num_seqs=64),
                    logits_processors=[live.script(model.processor.tokenizer, ((2, "<seg>0.5, 1.5</seg>"),), 20)])
    clips = [tc.sine_clip(1.5 + 0.25 * (i % 4), seed=30 + i % 8) for i in range(32)]
    requests = [dict(model="tiny", messages=live.audio_message(c, f"Question {i}?"), temperature=0.8, seed=i,
                     max_tokens=24) for i, c in enumerate(clips)]
    with live.serve(engine, ServeConfig(model_name="tiny")) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        sequential = [client.chat.completions.create(**r).choices[0].message.content for r in requests]
        assert _metrics(url)["echo_peak_running_sequences"] == 1

        async def one(aclient, request):
            text = ""
            async for chunk in await aclient.chat.completions.create(stream=True, **request):
                for choice in chunk.choices:
                    text += choice.delta.content or ""
            return text

        async def all_at_once():
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                          http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=64),
                                                                        timeout=120)) as aclient:
                return await asyncio.gather(*(one(aclient, r) for r in requests))

        concurrent = asyncio.run(all_at_once())
        metrics = _metrics(url)
    assert concurrent == sequential
    assert all("<seg>0.5, 1.5</seg>" in t for t in concurrent)
    assert metrics["echo_peak_running_sequences"] > 1  # the clients shared the batch
    assert metrics["echo_requests_total"] == 64 and metrics["echo_kv_blocks_in_use"] == 0
    assert metrics["echo_relistens_total"] == 64


def test_a_client_that_disconnects_frees_its_blocks(model):
    engine = Engine(model, EngineConfig(num_blocks=400, block_size=16, max_model_len=4096),
                    logits_processors=[live.script(model.processor.tokenizer, (), end=None)])  # never ends alone
    body = {"model": "tiny", "messages": live.audio_message(tc.sine_clip(2.0, seed=40), "Go on?"),
            "max_tokens": 4000, "temperature": 0, "stream": True}
    with live.serve(engine, ServeConfig(model_name="tiny")) as (url, _):
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                received = [line for line, _ in zip(lines, range(6)) if line.startswith("data: ")]
                assert len(received) >= 3
                during = _metrics(url)
                assert during["echo_kv_blocks_in_use"] > 0 and during["echo_active_requests"] == 1
        _wait_for(lambda: _metrics(url)["echo_requests_aborted_total"] == 1, what="the abort")
        after = _metrics(url)
        assert after["echo_kv_blocks_in_use"] == 0 and after["echo_active_requests"] == 0
        assert engine.bm.num_free == 400 and not engine.pending()
        assert after["echo_generated_tokens_total"] < 4000  # it did not run on to max_tokens


def test_a_full_server_answers_429_and_loses_nothing(model):
    gate = Gate(live.script(model.processor.tokenizer, (), end=6))
    engine = Engine(model, EngineConfig(num_blocks=200, block_size=16, max_model_len=1024), logits_processors=[gate])
    with live.serve(engine, ServeConfig(model_name="tiny", max_pending=1, retry_after_s=3)) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        kwargs = dict(model="tiny", messages=live.audio_message(tc.sine_clip(2.0, seed=41), "Busy?"),
                      temperature=0, max_tokens=20)
        alone = client.chat.completions.create(**kwargs).choices[0].message.content
        gate.open.clear()
        first: list = []
        worker = threading.Thread(target=lambda: first.append(client.chat.completions.create(**kwargs)))
        worker.start()
        _wait_for(lambda: _metrics(url)["echo_active_requests"] == 1, what="the first request to be admitted")
        response = httpx.post(url + "/v1/chat/completions", json=kwargs)
        assert response.status_code == 429 and response.headers["retry-after"] == "3"
        assert response.json()["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**kwargs)
        gate.open.set()
        worker.join(timeout=60)
        assert first[0].choices[0].message.content == alone  # the running request was untouched
        assert client.chat.completions.create(**kwargs).choices[0].message.content == alone
        assert _metrics(url)["echo_requests_rejected_total"] == 2


def test_shutdown_aborts_running_streams_cleanly(model):
    engine = Engine(model, EngineConfig(num_blocks=400, block_size=16, max_model_len=4096),
                    logits_processors=[live.script(model.processor.tokenizer, (), end=None)])
    body = {"model": "tiny", "messages": live.audio_message(tc.sine_clip(2.0, seed=42), "Long?"),
            "max_tokens": 4000, "temperature": 0, "stream": True}
    with live.serve(engine, ServeConfig(model_name="tiny", shutdown_grace_s=0.2)) as (url, app):
        with httpx.Client(timeout=60) as http, http.stream("POST", url + "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            app.state.loop.close(app.state.config.shutdown_grace_s)  # what the app's shutdown does
            events = [line[6:] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "abort"
        assert engine.bm.num_free == 400 and not engine.pending()
        refused = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert httpx.get(url + "/health").status_code == 503


def test_bad_requests_during_a_stream_leave_it_untouched(model):
    gate = Gate(live.script(model.processor.tokenizer, ((2, "<seg>0.5, 1.5</seg>"),), end=30))
    engine = Engine(model, EngineConfig(num_blocks=200, block_size=16, max_model_len=200), logits_processors=[gate])
    with live.serve(engine, ServeConfig(model_name="tiny")) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        kwargs = dict(model="tiny", messages=live.audio_message(tc.sine_clip(2.0, seed=43), "Steady?"),
                      temperature=0, max_tokens=40)
        alone = client.chat.completions.create(**kwargs).choices[0].message.content
        gate.open.clear()
        texts: list[str] = []

        def stream():
            texts.append("".join(c.choices[0].delta.content or "" for c in
                                 client.chat.completions.create(stream=True, **kwargs) if c.choices))

        worker = threading.Thread(target=stream)
        worker.start()
        _wait_for(lambda: _metrics(url)["echo_active_requests"] == 1, what="the stream to be admitted")
        too_long = {**kwargs, "messages": live.audio_message(tc.sine_clip(9.0, seed=44), "Too long?")}
        with ThreadPoolExecutor(1) as pool:  # refused by the engine between two of the stream's steps
            refused = pool.submit(httpx.post, url + "/v1/chat/completions", json=too_long, timeout=60)
            time.sleep(0.2)
            gate.open.set()
            assert refused.result().status_code == 400
        broken = {**kwargs, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": "UklGRgAAAABXQVZFanVuaw==", "format": "wav"}}]}]}
        assert httpx.post(url + "/v1/chat/completions", json=broken).status_code == 400
        worker.join(timeout=60)
        assert texts == [alone]
        assert engine.bm.num_free == 200


def test_a_plain_request_whose_client_gives_up_is_aborted(model):
    engine = Engine(model, EngineConfig(num_blocks=400, block_size=16, max_model_len=4096),
                    logits_processors=[live.script(model.processor.tokenizer, (), end=None)])
    body = {"model": "tiny", "messages": live.audio_message(tc.sine_clip(2.0, seed=45), "Wait?"),
            "max_tokens": 4000, "temperature": 0}
    with live.serve(engine, ServeConfig(model_name="tiny")) as (url, _):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=1.5))
        _wait_for(lambda: _metrics(url)["echo_requests_aborted_total"] == 1, what="the abort")
        assert engine.bm.num_free == 400 and not engine.pending()
        assert _metrics(url)["echo_generated_tokens_total"] < 4000
