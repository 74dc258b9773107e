"""The one thread that drives the engine: requests enter through a queue, are admitted between steps (so they join
the running batch), and each step's new text, re-listens and finishes go back to each request's asyncio queue.

The engine is not thread-safe, so nothing else touches it: the HTTP side only submits, cancels, and reads the
metrics snapshot this thread writes after every step. A thread rather than an asyncio task because a step is
blocking compute that must not stall the event loop serving the other clients.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time

import numpy as np

from ..audio.io import SAMPLING_RATE
from ..config import SamplingParams
from ..engine.detokenizer import IncrementalDetokenizer
from ..engine.llm import Engine
from ..engine.sequence import RelistenRecord, Sequence
from ..errors import EchoError
from .metrics import Metrics
from .protocol import ApiError



@dataclasses.dataclass(slots=True)
class SampleUpdate:
    """What one sample produced since the last update: text, sampled (token id, log-prob) pairs, re-listens."""

    index: int
    text: str = ""
    tokens: list[tuple[int, float | None]] = dataclasses.field(default_factory=list)
    relistens: list[dict] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None


@dataclasses.dataclass(eq=False)
class Job:
    """One request on its way through the engine. Events on ``events``: ("admitted", info: prompt token counts and
    the request's ``warnings``), ("error", ApiError), ("update", [SampleUpdate]), ("done", usage)."""

    wave: np.ndarray
    messages: list[dict]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)
    index: int | None = None
    sampled: list[int] = dataclasses.field(default_factory=list)
    seen: list[int] = dataclasses.field(default_factory=list)
    closed: list[bool] = dataclasses.field(default_factory=list)
    texts: list[IncrementalDetokenizer] = dataclasses.field(default_factory=list)  # one per sample

    def post(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the client's event loop is gone (server stopping): nobody to tell
            pass


def relisten_event(record: RelistenRecord, num_prompt_tokens: int) -> dict:
    """A re-listen as the stream reports it (seconds and samples; position counted in completion tokens)."""
    d = record.decision
    applied = d.applied_samples if record.inserted or d.action == "relisten" else None
    return {"turn": record.turn, "action": d.action, "reason": d.reason, "text": d.text,
            "requested_s": list(d.requested_s) if d.requested_s is not None else None,
            "applied_s": [applied[0] / SAMPLING_RATE, applied[1] / SAMPLING_RATE] if applied else None,
            "applied_samples": list(applied) if applied else None, "num_audio_tokens": record.num_audio_tokens,
            "cache_hit": record.cache_hit, "inserted": record.inserted,
            "position": record.position - num_prompt_tokens if record.inserted else None}




def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of ``text`` that may be the start of a stop string (not shown until resolved)."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop), len(text)), 0, -1):
            if text.endswith(stop[:k]):
                held = max(held, k)
                break
    return held


class EngineLoop:
    def __init__(self, engine: Engine, max_pending: int, retry_after_s: int = 1):
        self.engine, self.max_pending, self.retry_after_s = engine, max_pending, retry_after_s
        self.metrics = Metrics(kv_blocks_total=engine.bm.num_blocks)
        self._inbox: queue.Queue = queue.Queue()
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._active = 0
        self._accepting = True
        self._exit = False
        self._thread = threading.Thread(target=self._run, name="echo-engine", daemon=True)

    # ---- the HTTP side -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._accepting

    def check_capacity(self) -> None:
        """ApiError 503 while stopping, 429 when ``max_pending`` requests are already in (also called before a
        request's audio is decoded, so a full server refuses cheaply)."""
        headers = {"Retry-After": str(self.retry_after_s)}
        if not self._accepting or not self._thread.is_alive():
            self.metrics.requests_rejected += 1
            raise ApiError("the server is shutting down", status=503, type="service_unavailable", headers=headers)
        if self._active >= self.max_pending:
            self.metrics.requests_rejected += 1
            raise ApiError(f"the server is at capacity ({self.max_pending} requests in flight); retry later",
                           status=429, type="rate_limit_error", headers=headers)

    def submit(self, job: Job) -> None:
        """Queue a job (refused as ``check_capacity`` says)."""
        with self._lock:
            self.check_capacity()
            self._active += 1
            self.metrics.active_requests = self._active
            self.metrics.queued_requests += 1
        self._inbox.put(("add", job))

    def cancel(self, job: Job) -> None:
        """The client went away: abort the job's samples and free their blocks (a no-op once it is done)."""
        self._inbox.put(("abort", job))

    def close(self, grace_s: float) -> None:
        """Refuse new requests, give running ones ``grace_s`` to finish, abort the rest, stop the thread."""
        with self._lock:
            self._accepting = False
        deadline = time.monotonic() + grace_s
        while self._active and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        self._inbox.put(("exit", None))
        self._thread.join(timeout=30)

    # ---- the engine thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._exit:
            try:
                self._drain(block=not self.engine.scheduler.has_work())
                if self._exit or not self.engine.scheduler.has_work():
                    continue
                self.engine.step()
                self._publish()
            except Exception as exc:  # a bug here must not kill this thread and hang every client: fail what is
                for job in list(self._jobs.values()):  # in flight and keep serving
                    self._finish(job, error=ApiError(f"engine error: {exc!r}", status=500, type="server_error"))
        for job in list(self._jobs.values()):  # shutdown after the grace period
            self._abort(job, tell=True)

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, job = item
            if kind == "add":
                self._admit(job)
            elif kind == "abort":
                self._abort(job, tell=False)
            else:
                self._exit = True
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _admit(self, job: Job) -> None:
        self.metrics.queued_requests -= 1
        stats = self.engine.encoder_cache.stats
        try:
            job.index = self.engine.add_request(job.wave, job.messages, job.params)
        except EchoError as exc:
            self._finish(job, error=ApiError(str(exc), "messages"))
            return
        except Exception as exc:
            self._finish(job, error=ApiError(f"engine error: {exc!r}", status=500, type="server_error"))
            return
        finally:
            self.metrics.encoder_cache_hits, self.metrics.encoder_cache_misses = stats.hits, stats.misses
        state = self.engine.request(job.index)
        seqs, prompt_ids = state.samples, state.prompt_ids
        n = len(seqs)
        job.sampled, job.seen, job.closed = [0] * n, [0] * n, [False] * n
        job.texts = [IncrementalDetokenizer(self.engine.model.processor) for _ in range(n)]
        self._jobs[job.index] = job
        self.metrics.requests_total += 1
        audio_id = self.engine.model.config.audio_token_id
        job.post(("admitted", {"prompt_tokens": len(prompt_ids),
                               "prompt_audio_tokens": sum(1 for t in prompt_ids if t == audio_id),
                               "warnings": list(state.warnings)}))

    def _abort(self, job: Job, tell: bool) -> None:
        if job.index is None or self._jobs.pop(job.index, None) is None:
            return
        self.engine.abort(job.index)
        self._snapshot()
        self._release()
        self.metrics.requests_aborted += 1  # last: whoever sees the count sees the blocks and the slot freed
        if tell:
            job.post(("update", [SampleUpdate(i, finish_reason="abort") for i, c in enumerate(job.closed) if not c]))
            job.post(("done", None))

    def _finish(self, job: Job, error: ApiError | None = None, usage: dict | None = None) -> None:
        if job.index is not None:
            self._jobs.pop(job.index, None)
        if error is not None:
            self.metrics.requests_failed += 1
            if job.index is not None:
                self.engine.abort(job.index)
            job.post(("error", error))
        else:
            job.post(("done", usage))
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._active -= 1
            self.metrics.active_requests = self._active

    def _publish(self) -> None:
        tokens = 0
        for job in list(self._jobs.values()):
            seqs = self.engine.request(job.index).samples
            updates = []
            for i, seq in enumerate(seqs):
                if job.closed[i]:
                    continue
                update = self._sample_update(job, i, seq)
                tokens += len(update.tokens)
                if update.text or update.tokens or update.relistens or update.finish_reason:
                    updates.append(update)
            if updates:
                job.post(("update", updates))
            if all(job.closed):
                result = self.engine.result(job.index)
                spliced = [len(s.mask) - sum(s.mask) for s in result.samples]
                self._finish(job, usage={
                    "completion_tokens": sum(sum(s.mask) for s in result.samples),
                    "spliced_tokens": sum(spliced),
                    "spliced_audio_tokens": sum(r.num_audio_tokens for s in result.samples for r in s.relistens
                                                if r.inserted),
                    "texts": [s.text for s in result.samples]})
        self.metrics.record_step(tokens)
        self._snapshot()

    def _snapshot(self) -> None:
        m, sched, stats = self.metrics, self.engine.scheduler, self.engine.encoder_cache.stats
        m.waiting_sequences, m.running_sequences = len(sched.waiting), len(sched.running)
        m.peak_running_sequences = max(m.peak_running_sequences, m.running_sequences)
        m.kv_blocks_in_use = self.engine.bm.num_blocks - self.engine.bm.num_free
        m.encoder_cache_hits, m.encoder_cache_misses = stats.hits, stats.misses

    def _sample_update(self, job: Job, i: int, seq: Sequence) -> SampleUpdate:
        update = SampleUpdate(i)
        generated = seq.token_ids[seq.num_prompt_tokens:]
        sampled = [t for t, m in zip(generated, seq.mask[seq.num_prompt_tokens:]) if m]
        new = sampled[job.sampled[i]:]
        lps = seq.logprobs[job.sampled[i]:] if seq.params.logprobs else [None] * len(new)
        update.tokens = list(zip(new, lps))
        job.sampled[i] = len(sampled)
        text = job.texts[i].text(generated)
        stops = tuple(seq.params.stop)
        if seq.is_finished:
            for stop in stops:  # as Engine.result trims it
                if text.endswith(stop):
                    text = text[: -len(stop)]
        else:
            text = text[: len(text) - _held_back(text, stops)]
        update.text = job.texts[i].emit(text, final=seq.is_finished)
        for record in seq.relistens[job.seen[i]:]:
            update.relistens.append(relisten_event(record, seq.num_prompt_tokens))
            if record.inserted:
                self.metrics.relistens += 1
                self.metrics.relisten_cache_hits += int(record.cache_hit)
        job.seen[i] = len(seq.relistens)
        if seq.is_finished:
            update.finish_reason = seq.finish_reason or "stop"
            job.closed[i] = True
        return update
