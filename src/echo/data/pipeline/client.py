"""The OpenAI-compatible client every stage uses: the official ``openai`` package (its own retries off), with a
concurrency limit, request- and token-per-minute limits, exponential backoff with full jitter on 429 / 5xx /
timeouts / dropped connections (a Retry-After header wins), per-request timeouts, and usage accounting."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Any

from ...errors import EchoError
from .config import EndpointConfig


class EndpointRefused(EchoError):
    """The endpoint refuses every request (bad key, unknown model or route): the stage stops instead of dropping
    every item, so a corrected rerun finds them all still to do."""


class RequestFailed(EchoError):
    """A request that still failed after every retry (or failed in a way retrying cannot fix)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclasses.dataclass(slots=True)
class Reply:
    """One chat completion: ``text`` (None on a refusal), ``finish_reason``, ``refusal`` and token usage."""

    text: str | None
    finish_reason: str | None
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def problem(self) -> str | None:
        """Why the reply cannot be used, as a drop-reason name; None when it can."""
        if self.refusal:
            return "refusal"
        if self.finish_reason == "length":
            return "truncated"
        if self.finish_reason == "content_filter":
            return "refusal"
        if not (self.text or "").strip():
            return "empty"
        return None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Reply":
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(slots=True)
class Usage:
    """Per-stage counters. ``requests`` are HTTP attempts sent by this process; ``cached`` answers were reused."""

    requests: int = 0
    answered: int = 0
    retries: int = 0
    failed: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def add_tokens(self, reply: Reply, endpoint: EndpointConfig | None) -> None:
        self.prompt_tokens += reply.prompt_tokens or 0
        self.completion_tokens += reply.completion_tokens or 0
        if endpoint is not None:
            self.cost += ((reply.prompt_tokens or 0) * endpoint.price_in
                          + (reply.completion_tokens or 0) * endpoint.price_out) / 1e6


class RateLimiter:
    """Token bucket refilled at ``per_minute / 60`` per second, holding at most one second's worth (or one call)."""

    def __init__(self, per_minute: float | None, *, clock=time.monotonic, sleep=asyncio.sleep):
        self.rate = None if per_minute is None else per_minute / 60.0
        self.capacity = None if self.rate is None else max(1.0, self.rate)
        self.level = self.capacity
        self.clock, self.sleep = clock, sleep
        self.stamp = clock()
        self.lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        if self.rate is None:
            return
        amount = min(amount, self.capacity)  # a request bigger than the bucket waits for a full bucket
        async with self.lock:
            while True:
                now = self.clock()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await self.sleep((amount - self.level) / self.rate)


class ChatClient:
    """``await client.complete(messages, response_format=...)`` -> :class:`Reply`, or raises :class:`RequestFailed`.

    Create it inside the running event loop (the semaphore and the HTTP pool belong to that loop).
    """

    def __init__(self, endpoint: EndpointConfig, usage: Usage | None = None, *, sleep=asyncio.sleep):
        from openai import AsyncOpenAI

        self.endpoint = endpoint
        self.usage = usage if usage is not None else Usage()
        self.openai = AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key(), max_retries=0,
                                  timeout=endpoint.timeout_s)
        self.semaphore = asyncio.Semaphore(endpoint.concurrency)
        self.requests_limit = RateLimiter(endpoint.rpm)
        self.tokens_limit = RateLimiter(endpoint.tpm)
        self.sleep = sleep

    async def complete(self, messages: list[dict], *, response_format: dict | None = None) -> Reply:
        import openai

        ep = self.endpoint
        kwargs: dict[str, Any] = dict(model=ep.model, messages=messages, **ep.params())
        if response_format is not None:
            kwargs["response_format"] = response_format
        estimate = _estimate_tokens(messages) + ep.max_tokens
        last = "no attempt"
        for attempt in range(ep.max_retries + 1):
            await self.requests_limit.acquire()
            await self.tokens_limit.acquire(estimate)
            retry_after = None
            async with self.semaphore:
                self.usage.requests += 1
                try:
                    response = await self.openai.chat.completions.create(**kwargs)
                except openai.APITimeoutError as exc:
                    last = f"timeout after {ep.timeout_s:g} s ({exc})"
                except openai.APIConnectionError as exc:
                    last = f"connection error ({exc.__cause__ or exc})"
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    last = f"HTTP {status}: {str(exc)[:200]}"
                    if status in (401, 403, 404):
                        raise EndpointRefused(f"{ep.base_url} ({ep.model}) answered {last}; check the API key "
                                              f"(${ep.api_key_env}), the model name and the URL") from None
                    if status != 429 and status < 500 and status != 408:
                        self.usage.failed += 1
                        raise RequestFailed("rejected", last) from None  # a bad request: retrying won't help
                    retry_after = _retry_after(exc.response.headers)
                else:
                    self.usage.answered += 1
                    return _reply(response)
            if attempt == ep.max_retries:
                break
            self.usage.retries += 1
            backoff = random.uniform(0, min(ep.backoff_max_s, ep.backoff_s * 2 ** attempt))
            await self.sleep(max(retry_after, backoff) if retry_after is not None else backoff)
        self.usage.failed += 1
        raise RequestFailed("request_failed", f"{ep.max_retries + 1} attempts; last: {last}")

    async def close(self) -> None:
        await self.openai.close()


def _reply(response) -> Reply:
    if not response.choices:
        return Reply(None, "empty", None)
    choice = response.choices[0]
    usage = response.usage
    return Reply(choice.message.content, choice.finish_reason, getattr(choice.message, "refusal", None),
                 getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)


def _retry_after(headers) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds; an HTTP date is ignored)."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def _estimate_tokens(messages: list[dict]) -> int:
    """About four characters a token; audio about 25 tokens a second of 16-bit 16 kHz wav (base64)."""
    chars = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for p in content:
                chars += len(p.get("text", "")) + len(p.get("input_audio", {}).get("data", "")) // 400
    return chars // 4 + 1
