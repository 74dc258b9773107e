"""What every stage shares: the bounded async loop over work items, chunked atomic output, cached requests, and
the dry run.

A stage turns each work item (a clip or a question) into output rows. Items run concurrently (the endpoint's
concurrency bounds the requests in flight); finished rows collect into a chunk written atomically every
``chunk_size`` rows. A kill loses the rows of the unwritten chunk, never their answers: those are in the request
cache, so the rerun rebuilds the same rows without sending anything again.
"""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable, Iterable

from tqdm import tqdm

from .cache import RequestCache, cache_key, request_digest
from .client import ChatClient, Reply, RequestFailed, Usage
from .config import EndpointConfig, PipelineConfig
from .store import ChunkStore


class StageContext:
    """One stage of one process: its cache, its chunk store, its usage counters, its client (when it has one)."""

    def __init__(self, cfg: PipelineConfig, stage: str, endpoint: EndpointConfig | None):
        self.cfg, self.stage, self.endpoint = cfg, stage, endpoint
        self.cache = RequestCache(cfg.out_dir / "cache", stage, cfg.rank)
        self.store = ChunkStore(cfg.out_dir, stage, cfg.rank, cfg.world_size)
        self.usage = Usage()
        self.client: ChatClient | None = None
        self.dry_requests: list[dict] = []

    async def ask(self, messages: list[dict], input_hash: str, *, response_format: dict | None = None
                  ) -> Reply | None:
        """The endpoint's answer, from the cache when it is there. None in a dry run (the request is recorded)."""
        ep = self.endpoint
        params = {**ep.params(), "response_format": response_format}
        key = cache_key(self.stage, ep.model, messages, params, input_hash)
        hit = self.cache.get(key)
        if hit is not None:
            self.usage.cached += 1
            return Reply.from_json(hit)
        if self.cfg.dry_run:
            self.dry_requests.append({"model": ep.model, "messages": messages, **params})
            return None
        if self.client is None:
            self.client = ChatClient(ep, self.usage)
        reply = await self.client.complete(messages, response_format=response_format)
        self.usage.add_tokens(reply, ep)
        await self.cache.put_async(key, reply.to_json(), request=request_digest(ep.model, messages))
        return reply

    def remember(self, key: str, reply: Reply, request: str) -> None:
        """Cache an answer produced without the client (local captioning)."""
        self.cache.put(key, reply.to_json(), request=request)


async def run_items(ctx: StageContext, items: list, handle: Callable[[object], Awaitable[list[dict]]],
                    desc: str) -> int:
    """Run ``handle`` over ``items`` with a bounded window in flight, writing rows chunk by chunk; returns rows."""
    window = max(1, (ctx.endpoint.concurrency if ctx.endpoint else 1) * 2)
    pending: list[dict] = []
    written = 0
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=not ctx.cfg.progress)
    queue = iter(items)
    running: set[asyncio.Task] = set()
    try:
        while True:
            while len(running) < window:
                nxt = next(queue, None)
                if nxt is None:
                    break
                running.add(asyncio.ensure_future(handle(nxt)))
            if not running:
                break
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                pending += task.result()
                bar.update(1)
            if len(pending) >= ctx.cfg.chunk_size:
                ctx.store.write(pending)
                written += len(pending)
                pending = []
        ctx.store.write(pending)
        written += len(pending)
    finally:
        for task in running:
            task.cancel()
        bar.close()
        if ctx.client is not None:
            await ctx.client.close()
            ctx.client = None
        ctx.cache.close()
    return written


def run_stage(ctx: StageContext, items: list, handle, desc: str) -> int:
    return asyncio.run(run_items(ctx, items, handle, desc))


async def ask_or_drop(ctx: StageContext, messages, input_hash, *, response_format=None
                      ) -> tuple[Reply | None, str | None]:
    """(reply, None), or (None, "<stage>:<reason>") when no usable answer came, or (None, None) in a dry run."""
    try:
        reply = await ctx.ask(messages, input_hash, response_format=response_format)
    except RequestFailed as exc:
        return None, f"{ctx.stage}:{exc.reason}"
    if reply is None:
        return None, None
    problem = reply.problem()
    return (None, f"{ctx.stage}:{problem}") if problem else (reply, None)


def parse_json(ctx: StageContext, reply: Reply, schema: dict | None) -> tuple[object | None, str | None]:
    """The reply's JSON object, checked against the prompt's schema; or (None, drop reason)."""
    from .prompts import validate

    text = (reply.text or "").strip()
    if text.startswith("<think>") and "</think>" in text:  # a reasoning model's thinking, then the answer
        text = text.split("</think>", 1)[1].strip()
    if text.startswith("```"):  # some servers fence JSON even under a response format
        text = text.strip("`").removeprefix("json").strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None, f"{ctx.stage}:malformed_json"
    if schema is not None and validate(obj, schema):
        return None, f"{ctx.stage}:schema"
    return obj, None


def print_dry_run(ctx: StageContext, total: int, show: int = 3) -> None:
    print(f"[dry run] {ctx.stage}: {len(ctx.dry_requests)} requests would be sent to {ctx.endpoint.base_url} "
          f"({ctx.endpoint.model}) for {total} items; {ctx.usage.cached} answers are cached")
    for req in ctx.dry_requests[:show]:
        shown = json.loads(json.dumps(req))
        for m in shown["messages"]:
            for p in m["content"] if isinstance(m["content"], list) else []:
                if p.get("type") == "input_audio":
                    p["input_audio"]["data"] = f"<{len(p['input_audio']['data'])} base64 chars>"
        print(json.dumps(shown, indent=1, ensure_ascii=False))


def events_text(events: Iterable[dict]) -> str:
    lines = [f"- {e['label']}: {e['onset']:.2f} - {e['offset']:.2f}" for e in events]
    return "\n".join(lines) if lines else "(none given)"
