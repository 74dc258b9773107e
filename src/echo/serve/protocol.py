"""OpenAI chat-completions requests in, echo's engine inputs out: every field checked once, here.

A bad field raises ``ApiError`` naming it (OpenAI's error shape, ``param`` set), before any audio is decoded and
before the engine sees anything. Echo's one extension is the optional ``relisten`` field: ``false`` (a plain
server: ``</seg>`` is just text), ``true`` (the engine's policy) or an object of ``RelistenPolicy`` fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import RelistenPolicy, SamplingParams
from ..errors import ConfigError, EchoError
from .config import ServeConfig

AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg")
# Accepted for client compatibility; they change nothing here (penalties only at their neutral value).
_IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}
_NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0}
_KNOWN = {"model", "messages", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "n", "stop",
          "seed", "logprobs", "top_logprobs", "stream", "stream_options", "relisten", *_IGNORED, *_NEUTRAL}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(EchoError):
    """A request the server refuses: HTTP status, OpenAI error type, the offending field, optional headers."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.type = message, param, status, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": None}}


@dataclasses.dataclass(slots=True)
class AudioPart:
    """One audio content part, not decoded yet: base64 text (``input_audio`` or a data: URL) or a file:// URL."""

    param: str  # where it sits in the request, for error messages
    kind: str   # "base64" or "file"
    data: str   # base64 text, or the URL
    format: str | None = None


@dataclasses.dataclass(slots=True)
class ChatRequest:
    messages: list[dict]  # the engine's chat shape: audio parts replaced by {"type": "audio"}
    audio: AudioPart
    params: SamplingParams
    stream: bool
    include_usage: bool


def _number(body: dict, name: str, kind: type, low=None, high=None, low_open=False):
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise ApiError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}", name)
    value = kind(value)
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
        raise ApiError(f"{name} must be in {bounds}, got {value!r}", name)
    return value


def _relisten(value: Any) -> RelistenPolicy | None:
    if value is None or value is True:
        return None
    if value is False:
        return RelistenPolicy(max_turns=0)  # a plain server: every </seg> is just text
    if not isinstance(value, dict):
        raise ApiError(f"relisten must be true, false or an object of policy fields, got {value!r}", "relisten")
    fields = set(RelistenPolicy.__dataclass_fields__)
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ApiError(f"relisten: unknown field(s) {unknown}; known: {sorted(fields)}", f"relisten.{unknown[0]}")
    try:
        return RelistenPolicy(**value)
    except (ConfigError, TypeError) as exc:
        raise ApiError(f"relisten: {exc}", "relisten") from exc


def _audio_part(part: dict, where: str) -> AudioPart:
    if part["type"] == "input_audio":
        inner = part.get("input_audio")
        if not isinstance(inner, dict) or not isinstance(inner.get("data"), str):
            raise ApiError(f"{where}.input_audio must be an object with base64 'data' and 'format'",
                           f"{where}.input_audio")
        fmt = inner.get("format")
        if fmt not in AUDIO_FORMATS:
            raise ApiError(f"{where}.input_audio.format must be one of {AUDIO_FORMATS}, got {fmt!r}",
                           f"{where}.input_audio.format")
        return AudioPart(f"{where}.input_audio.data", "base64", inner["data"], fmt)
    inner = part.get("audio_url")
    url = inner.get("url") if isinstance(inner, dict) else inner
    if not isinstance(url, str):
        raise ApiError(f"{where}.audio_url must be an object with a 'url'", f"{where}.audio_url")
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(f"{where}.audio_url.url: a data: URL must be base64 ('data:audio/wav;base64,...')",
                           f"{where}.audio_url.url")
        mime = head[5:-7].lower()
        fmt = {"audio/mpeg": "mp3", "audio/x-wav": "wav", "audio/wave": "wav"}.get(mime, mime.split("/")[-1] or None)
        return AudioPart(f"{where}.audio_url.url", "base64", payload, fmt)
    if url.startswith("file://"):
        return AudioPart(f"{where}.audio_url.url", "file", url)
    raise ApiError(f"{where}.audio_url.url: only data: and file:// URLs are accepted (no downloads)",
                   f"{where}.audio_url.url")


def _messages(value: Any, config: ServeConfig) -> tuple[list[dict], list[AudioPart]]:
    if not isinstance(value, list) or not value:
        raise ApiError("messages must be a non-empty list", "messages")
    out, audio = [], []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ApiError(f"{where} must be an object", where)
        role = _ROLES.get(msg.get("role"))
        if role is None:
            raise ApiError(f"{where}.role must be one of {sorted(_ROLES)}, got {msg.get('role')!r}", f"{where}.role")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list) or not content:
            raise ApiError(f"{where}.content must be a string or a non-empty list of parts", f"{where}.content")
        parts = []
        for j, part in enumerate(content):
            pw = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ApiError(f"{pw}.text must be a string", f"{pw}.text")
                parts.append({"type": "text", "text": part["text"]})
            elif kind in ("input_audio", "audio_url"):
                if role != "user":
                    raise ApiError(f"{pw}: audio is accepted in user messages only", f"{pw}.type")
                audio.append(_audio_part(part, pw))
                parts.append({"type": "audio", "audio": "<audio>"})
            else:
                raise ApiError(f"{pw}.type must be 'text', 'input_audio' or 'audio_url', got {kind!r}", f"{pw}.type")
        out.append({"role": role, "content": parts})
    if not audio:
        raise ApiError("messages: no audio part (input_audio or audio_url); echo answers about one clip", "messages")
    if len(audio) > config.max_audios_per_request:
        raise ApiError(f"messages: {len(audio)} audio parts, at most {config.max_audios_per_request} per request",
                       "messages")
    return out, audio


def parse_chat_request(body: Any, config: ServeConfig) -> ChatRequest:
    """Validate a decoded JSON body; raise ApiError naming the first bad field."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise ApiError(f"unknown field {unknown[0]!r}", unknown[0])
    for name, neutral in _NEUTRAL.items():
        if body.get(name) not in (None, neutral):
            raise ApiError(f"{name} is not supported (only {neutral})", name)
    model = body.get("model")
    if model is not None and model != config.model_name:
        raise ApiError(f"model {model!r} is not served here (this server serves {config.model_name!r})", "model",
                       status=404, type="not_found_error")
    messages, audio = _messages(body.get("messages"), config)

    temperature = _number(body, "temperature", float, 0, 2)
    top_p = _number(body, "top_p", float, 0, 1, low_open=True)
    top_k = _number(body, "top_k", int, -1)
    n = _number(body, "n", int, 1, config.max_n)
    seed = _number(body, "seed", int)
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):
        max_tokens = max_tokens or _number(body, name, int, 1)
    if _number(body, "top_logprobs", int, 0, 0) is not None and not body.get("logprobs"):
        raise ApiError("top_logprobs needs logprobs: true", "top_logprobs")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                             or any(not isinstance(s, str) or not s for s in stop)):
        raise ApiError("stop must be a non-empty string or a list of at most 4 non-empty strings", "stop")
    for name in ("stream", "logprobs"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise ApiError(f"{name} must be a boolean", name)
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise ApiError("stream_options must be an object with only 'include_usage'", "stream_options")
    if options is not None and not body.get("stream"):
        raise ApiError("stream_options is only allowed with stream: true", "stream_options")

    params = SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=max(top_k or 0, 0),  # vLLM's -1 and 0 both mean off
        max_new_tokens=max_tokens or config.default_max_tokens,
        n=n or 1, seed=seed, stop=tuple(stop or ()), logprobs=bool(body.get("logprobs")),
        relisten=_relisten(body.get("relisten")),
    )
    return ChatRequest(messages, audio[0], params, bool(body.get("stream")),
                       bool((options or {}).get("include_usage")))
