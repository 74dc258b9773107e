"""Every bad request gets OpenAI's error shape with the right status and the field it is about; size limits hold
before any decoding; no file outside the allowed directory is read; and the server keeps serving afterwards."""

from __future__ import annotations

import base64
import os

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

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIP = tc.sine_clip(2.0, seed=50)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "clip.wav").write_bytes(live.wav_bytes(CLIP))
    (root / "secret.wav").write_bytes(live.wav_bytes(CLIP))
    os.symlink(root / "secret.wav", allowed / "link.wav")
    return root


@pytest.fixture(scope="module")
def server(model, media):
    engine = Engine(model, EngineConfig(num_blocks=200, block_size=16, max_model_len=200),
                    logits_processors=[live.script(model.processor.tokenizer, (), end=5)])
    config = ServeConfig(model_name="tiny", api_key=KEY, allowed_local_media_path=str(media / "allowed"),
                         max_audio_seconds=8.0, max_audio_bytes=2_000_000, max_request_bytes=3_000_000, max_n=4)
    with live.serve(engine, config) as (url, app):
        yield url, engine


def _body(**overrides) -> dict:
    return {"model": "tiny", "messages": live.audio_message(CLIP, "Fine?"), "max_tokens": 8, "temperature": 0,
            **overrides}


def _audio(part: dict) -> list[dict]:
    return [{"role": "user", "content": [part, {"type": "text", "text": "Fine?"}]}]


def _url(url: str) -> dict:
    return _body(messages=_audio({"type": "audio_url", "audio_url": {"url": url}}))


def _post(url, body=None, content=None, headers=AUTH) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, content=content, headers=headers, timeout=60)


def _assert_error(response: httpx.Response, status: int, param, says: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and says in error["message"], error


B64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
AUDIO0 = "messages[0].content[0]"

BAD = {
    "unknown field": (_body(frobnicate=1), "frobnicate", "unknown field"),
    "no messages": (_body(messages=[]), "messages", "non-empty list"),
    "bad role": (_body(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role", "role must be"),
    "no audio": (_body(messages=[{"role": "user", "content": "hi"}]), "messages", "no audio part"),
    "two audios": (_body(messages=[{"role": "user", "content": live.audio_message(CLIP, "x")[0]["content"][:1] * 2}]),
                   "messages", "2 audio parts, at most 1"),
    "image part": (_body(messages=_audio({"type": "image_url", "image_url": {"url": "data:,"}})),
                   f"{AUDIO0}.type", "must be 'text', 'input_audio' or 'audio_url'"),
    "bad format": (_body(messages=_audio({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "aac"}})),
                   f"{AUDIO0}.input_audio.format", "must be one of"),
    "not base64": (_body(messages=_audio({"type": "input_audio", "input_audio": {"data": "@@@@", "format": "wav"}})),
                   f"{AUDIO0}.input_audio.data", "not valid base64"),
    "undecodable": (_body(messages=_audio({"type": "input_audio",
                                           "input_audio": {"data": B64(b"RIFF\0\0\0\0WAVEjunk" * 50),
                                                           "format": "wav"}})),
                    f"{AUDIO0}.input_audio.data", "cannot decode audio"),
    "too long": (_body(messages=live.audio_message(tc.sine_clip(9.0), "Long?")),
                 f"{AUDIO0}.input_audio.data", "over the limit of 8 s"),
    # not even base64: refused on its length alone, so the size check comes before any decoding
    "too many bytes": (_body(messages=_audio({"type": "input_audio",
                                              "input_audio": {"data": "@" * 2_700_000, "format": "wav"}})),
                       f"{AUDIO0}.input_audio.data", "over the limit of 2000000 bytes"),
    "http url": (_url("https://example.com/a.wav"),
                 f"{AUDIO0}.audio_url.url", "only data: and file:// URLs"),
    "file outside": (_url("file://{root}/secret.wav"),
                     f"{AUDIO0}.audio_url.url", "outside the allowed media directory"),
    "dot-dot": (_url("file://{root}/allowed/../secret.wav"),
                f"{AUDIO0}.audio_url.url", "outside the allowed media directory"),
    "link out": (_url("file://{root}/allowed/link.wav"),
                 f"{AUDIO0}.audio_url.url", "outside the allowed media directory"),
    "missing file": (_url("file://{root}/allowed/no.wav"),
                     f"{AUDIO0}.audio_url.url", "file not found"),
    "directory": (_url("file://{root}/allowed"), f"{AUDIO0}.audio_url.url", "is a directory, not a file"),
    "prompt too long": (_body(messages=live.audio_message(tc.sine_clip(7.5), "Long?")), "messages",
                        "does not fit max_model_len=200"),
    "temperature": (_body(temperature=-0.5), "temperature", "must be in [0, 2]"),
    "top_p": (_body(top_p=0), "top_p", "must be in (0, 1]"),
    "top_k": (_body(top_k="ten"), "top_k", "must be an integer"),
    "n zero": (_body(n=0), "n", "must be in [1, 4]"),
    "n over": (_body(n=5), "n", "must be in [1, 4]"),
    "max_tokens": (_body(max_tokens=0), "max_tokens", "must be in [1, inf]"),
    "max_completion_tokens": (_body(max_completion_tokens=2.5), "max_completion_tokens", "must be an integer"),
    "stop": (_body(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    "seed": (_body(seed="x"), "seed", "must be an integer"),
    "logprobs": (_body(logprobs="yes"), "logprobs", "must be a boolean"),
    "top_logprobs": (_body(logprobs=True, top_logprobs=3), "top_logprobs", "must be in [0, 0]"),
    "penalty": (_body(presence_penalty=1.0), "presence_penalty", "not supported"),
    "stream_options": (_body(stream_options={"include_usage": True}), "stream_options", "only allowed with stream"),
    "relisten": (_body(relisten={"max_turns": -1}), "relisten", "max_turns must be >= 0"),
    "relisten field": (_body(relisten={"turns": 2}), "relisten.turns", "unknown field"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_400_naming_the_field(server, media, case):
    url, engine = server
    body, param, says = BAD[case]
    for message in body["messages"]:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part.get("type") == "audio_url":
                part["audio_url"]["url"] = part["audio_url"]["url"].replace("{root}", str(media))
    _assert_error(_post(url, body), 400, param, says)


def test_malformed_json_oversized_body_and_wrong_model(server):
    url, _ = server
    _assert_error(_post(url, content=b'{"model": "tiny", "messages": [', headers={**AUTH, "content-type":
                                                                           "application/json"}),
                  400, None, "malformed JSON")
    _assert_error(_post(url, content=b"[1, 2]"), 400, None, "must be a JSON object")
    _assert_error(_post(url, content=b"x" * 3_000_001), 413, None, "over the limit of 3000000 bytes")
    _assert_error(_post(url, _body(model="gpt-4o")), 404, "model", "is not served here")


def test_wrong_or_missing_key_is_401(server):
    url, _ = server
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        _assert_error(_post(url, _body(), headers=headers), 401, None, "API key")
    assert httpx.get(url + "/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert [m.id for m in openai.OpenAI(base_url=url + "/v1", api_key=KEY).models.list()] == ["tiny"]
    assert httpx.get(url + "/health").json() == {"status": "ok"}  # health and metrics need no key


def test_allowed_files_and_every_format_are_read_and_nothing_leaks_after_bad_requests(server, media):
    url, engine = server
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    by_file = client.chat.completions.create(**_body(messages=_audio(
        {"type": "audio_url", "audio_url": {"url": f"file://{media}/allowed/clip.wav"}})))
    inline = client.chat.completions.create(**_body())
    assert by_file.choices[0].message.content == inline.choices[0].message.content
    for fmt, subtype in (("flac", "PCM_24"), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")):  # lossy ones too
        out = client.chat.completions.create(**_body(messages=_audio({"type": "input_audio", "input_audio": {
            "data": B64(live.wav_bytes(CLIP, fmt.upper(), subtype)), "format": fmt}})))
        assert out.choices[0].finish_reason == "stop" and out.usage.prompt_tokens_details.audio_tokens == 50, fmt
    metrics = parse(httpx.get(url + "/metrics").text)
    assert metrics["echo_kv_blocks_in_use"] == 0 and metrics["echo_active_requests"] == 0
    assert engine.bm.num_free == 200 and not engine.pending()
