"""HTTP routes: OpenAI's chat completions (plain and server-sent events), models, health, metrics, and the page.

``build_app(engine, config)`` takes a prepared Engine (tests pass one with logits processors) and returns the
ASGI app; the engine loop starts and stops with the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.llm import Engine
from .audio_input import decode_audio
from .config import ServeConfig
from .loop import EngineLoop, Job, SampleUpdate
from .protocol import ApiError, ChatRequest, parse_chat_request

STATIC = Path(__file__).parent / "static"
_FINISH = {"stop": "stop", "length": "length", "relisten_stop": "stop", "kv_cache_full": "length", "abort": "abort"}


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed ``limit``: from Content-Length, else while reading."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(f"request body of {declared} bytes is over the limit of {limit} bytes", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(f"request body is over the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _logprobs(proc, tokens) -> dict:
    return {"content": [{"token": proc.decode([t]), "logprob": lp, "bytes": list(proc.decode([t]).encode()),
                         "top_logprobs": []} for t, lp in tokens]}


def _usage(admitted: dict, done: dict) -> dict:
    return {"prompt_tokens": admitted["prompt_tokens"], "completion_tokens": done["completion_tokens"],
            "total_tokens": admitted["prompt_tokens"] + done["completion_tokens"] + done["spliced_tokens"],
            "prompt_tokens_details": {"audio_tokens": admitted["prompt_audio_tokens"]},
            "spliced_audio_tokens": done["spliced_audio_tokens"]}


def build_app(engine: Engine, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    loop = EngineLoop(engine, config.max_pending, config.retry_after_s)
    proc = engine.model.processor

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop.start()
        yield
        await run_in_threadpool(loop.close, config.shutdown_grace_s)

    app = FastAPI(title="echo", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.loop, app.state.config = loop, config

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return _error(ApiError(str(exc.detail), status=exc.status_code,
                               type="not_found_error" if exc.status_code == 404 else "invalid_request_error"))

    def _authorize(request: Request) -> None:
        if config.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {config.api_key}":
            raise ApiError("missing or wrong API key (Authorization: Bearer KEY)", status=401,
                           type="authentication_error")

    @app.get("/health")
    async def health():
        if not loop.alive:
            return JSONResponse({"status": "stopping"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(loop.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/v1/models")
    async def models(request: Request):
        _authorize(request)
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "echo", "max_model_len": engine.config.max_model_len}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        _authorize(request)
        raw = await _read_body(request, config.max_request_bytes)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(f"malformed JSON body: {exc}") from exc
        req = parse_chat_request(body, config)
        loop.check_capacity()
        wave = await run_in_threadpool(decode_audio, req.audio, config)
        job = Job(wave, req.messages, req.params, asyncio.get_running_loop())
        loop.submit(job)
        try:
            kind, info = await job.events.get()
        except asyncio.CancelledError:
            loop.cancel(job)
            raise
        if kind == "error":
            raise info
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        warned = _warning_headers(info["warnings"])
        if req.stream:
            return StreamingResponse(_stream(job, req, info, rid, created), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **warned})
        body = await _complete(request, job, req, info, rid, created)
        return JSONResponse(body, headers=warned) if isinstance(body, dict) else body

    async def _events(job: Job):
        """The job's events until it is done; the request is cancelled if the consumer stops early."""
        finished = False
        try:
            while True:
                kind, payload = await job.events.get()
                if kind == "error":
                    raise payload
                yield kind, payload
                if kind == "done":
                    finished = True
                    return
        finally:
            if not finished:
                loop.cancel(job)

    async def _complete(request: Request, job: Job, req: ChatRequest, admitted: dict, rid: str, created: int):
        n = req.params.n
        content = [""] * n
        tokens: list[list] = [[] for _ in range(n)]
        relistens: list[list] = [[] for _ in range(n)]
        finish = ["stop"] * n
        done = None
        events = _events(job)
        watcher = asyncio.create_task(_watch_disconnect(request))
        try:
            while True:
                step = asyncio.ensure_future(events.__anext__())
                await asyncio.wait({step, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():  # the client went away: stop waiting (closing the events cancels the job)
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await step
                    return Response(status_code=499)
                try:
                    kind, payload = step.result()
                except StopAsyncIteration:
                    break
                if kind == "update":
                    for u in payload:
                        content[u.index] += u.text
                        tokens[u.index] += u.tokens
                        relistens[u.index] += u.relistens
                        finish[u.index] = u.finish_reason or finish[u.index]
                elif kind == "done":
                    done = payload
        finally:
            watcher.cancel()
            await events.aclose()
        texts = done["texts"] if done else content
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                    "logprobs": _logprobs(proc, tokens[i]) if req.params.logprobs else None,
                    "finish_reason": _FINISH.get(finish[i], "stop"),
                    "echo": {"relistens": relistens[i], "finish_reason": finish[i]}} for i in range(n)]
        return {"id": rid, "object": "chat.completion", "created": created, "model": config.model_name,
                "choices": choices, "usage": _usage(admitted, done) if done else None,
                "echo": {"warnings": admitted["warnings"]}}

    async def _stream(job: Job, req: ChatRequest, admitted: dict, rid: str, created: int):
        def chunk(choices, **extra) -> str:
            return "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                          "model": config.model_name, "choices": choices, **extra}) + "\n\n"

        n = req.params.n
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None} for i in range(n)], echo={"warnings": admitted["warnings"]})
        open_samples, pending_last = n, None
        async for kind, payload in _events(job):
            if kind == "update":
                for u in payload:
                    u: SampleUpdate
                    if u.text or (u.tokens and req.params.logprobs):
                        yield chunk([{"index": u.index, "delta": {"content": u.text},
                                      "logprobs": _logprobs(proc, u.tokens) if req.params.logprobs else None,
                                      "finish_reason": None}])
                    for event in u.relistens:  # standard clients ignore the extension field
                        yield chunk([{"index": u.index, "delta": {}, "logprobs": None, "finish_reason": None,
                                      "echo": {"relisten": event}}])
                    if u.finish_reason:
                        open_samples -= 1
                        last = {"index": u.index, "delta": {}, "logprobs": None,
                                "finish_reason": _FINISH.get(u.finish_reason, "stop"),
                                "echo": {"finish_reason": u.finish_reason}}
                        if open_samples or u.finish_reason == "abort":
                            yield chunk([last])
                        else:
                            pending_last = last
            elif kind == "done" and payload is not None and pending_last is not None:
                usage = _usage(admitted, payload)
                if req.include_usage:
                    yield chunk([pending_last])
                    yield chunk([], usage=usage)
                else:  # usage rides on the last chunk (an optional field every client accepts)
                    yield chunk([pending_last], usage=usage)
        yield "data: [DONE]\n\n"

    return app


def _warning_headers(warnings: list[str]) -> dict[str, str]:
    """``X-Echo-Warnings``: what was changed to serve the request (a truncated clip), for clients that read headers
    only; the body's ``echo.warnings`` (the first chunk's, streamed) has the same list."""
    if not warnings:
        return {}
    return {"X-Echo-Warnings": "; ".join(warnings).encode("ascii", "replace").decode()}  # header values: ASCII


async def _watch_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)
