"""Continuous batching: which tokens of which sequences run in the next step.

Every step runs, within ``max_num_batched_tokens``: one decode token for each running sequence, the pending
chunk of any running sequence that just got a re-listen splice (its audio tokens are prefilled into its own KV,
chunked if long), and prompt chunks of newly admitted sequences (chunked so a long prompt never stalls decoding).
A chunk that reaches the end of its sequence's tokens yields logits to sample from; an earlier chunk does not.

When the KV cache runs out of blocks, the most recently admitted sequence not yet scheduled this step is
preempted: its blocks are freed and it goes back to the front of the waiting queue to be recomputed later (its
tokens and audio rows are kept, so nothing is lost). A sequence that cannot fit even alone is finished with
finish_reason "kv_cache_full"; the others go on.

The scheduler holds every request's state (``requests``) and owns a step's two ends: ``schedule`` (which chunks run,
and which sequences sample from their logits: a leader whose prompt completes brings its n-1 unforked samples, which
share its row) and ``postprocess`` (the forks, the sampled tokens appended, and finishing: ``postprocess.py``).
"""

from __future__ import annotations

import dataclasses
from collections import deque

from ..config import EngineConfig
from .block_manager import BlockManager, OutOfBlocks
from .kv_cache import PagedKVCache
from .request_state import RequestState
from .sequence import Sequence, Status


@dataclasses.dataclass(slots=True)
class Chunk:
    """Tokens [start, end) of ``seq`` run this step (their K/V are written, ``start`` tokens are cached)."""

    seq: Sequence
    start: int
    end: int

    @property
    def samples(self) -> bool:
        return self.end == len(self.seq)


@dataclasses.dataclass(slots=True)
class ScheduledStep:
    """One step: the chunks to run, and the sequences that sample a token, each from ``rows[i]``, its row among
    the logits of the chunks that end their sequence."""

    chunks: list[Chunk]
    samples: list[Sequence]
    rows: list[int]


def split_step(step: ScheduledStep) -> tuple[ScheduledStep, ScheduledStep]:
    """``step``'s chunks in two halves, each with the samples that read its chunks' logits (rows renumbered): what
    the engine reruns to find the chunk whose run raised (``Engine._run_contained``)."""
    half = len(step.chunks) // 2
    sampling = [c for c in step.chunks if c.samples]  # step.rows index into these
    parts = []
    for chunks in (step.chunks[:half], step.chunks[half:]):
        rows = {id(c): k for k, c in enumerate(c for c in chunks if c.samples)}
        mine = [(seq, rows[id(sampling[r])]) for seq, r in zip(step.samples, step.rows) if id(sampling[r]) in rows]
        parts.append(ScheduledStep(chunks, [seq for seq, _ in mine], [r for _, r in mine]))
    return parts[0], parts[1]


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager, kv_cache: PagedKVCache, post=None):
        self.config, self.bm, self.kv = config, block_manager, kv_cache
        self.post = post  # postprocess.Postprocessor: sampled tokens in, forks and finishing
        self.requests: dict[int, RequestState] = {}
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.finished: list[Sequence] = []  # finished since the engine last drained this list
        self.num_preemptions = 0

    def add(self, request: RequestState) -> None:
        """Queue a request: its first sample prefills the prompt, the others fork it once it is cached."""
        self.requests[request.index] = request
        seq = request.samples[0]
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def abort(self, index: int) -> bool:
        """Finish the request's unfinished samples ("abort"), free their blocks and forget the request."""
        request = self.requests.pop(index, None)
        if request is None:
            return False
        for seq in request.samples:
            if not seq.is_finished:
                self.finish(seq, "abort")
        self.finished = [s for s in self.finished if s.request_index != index]
        return True

    def drain(self) -> list[Sequence]:
        """The sequences finished since the last drain."""
        finished, self.finished = self.finished, []
        return finished

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def fork(self, follower: Sequence) -> None:
        """A sample forks its leader's cached prompt: it shares the leader's blocks and runs at once, no prefill."""
        follower.block_table = self.bm.fork(follower.leader.block_table)
        follower.num_cached = follower.leader.num_cached
        follower.status = Status.RUNNING
        self.running.append(follower)

    def finish(self, seq: Sequence, reason: str) -> None:
        """End ``seq`` and free its blocks; a leader that ends before its prompt is cached takes its unforked
        samples with it (same reason and error: they cannot run without its prompt)."""
        seq.status, seq.finish_reason = Status.FINISHED, reason
        self.finished.append(seq)
        self.bm.free(seq.block_table)
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        request = self.requests.get(seq.request_index)
        if request is not None and seq.num_generated == 0:
            for follower in request.unforked(seq):
                follower.error = seq.error
                self.finish(follower, reason)

    def fail(self, step: ScheduledStep | list[Sequence], message: str) -> None:
        """The sequences at fault (a step's: those it ran and the samples that were to fork them) end with finish
        reason "error" and the message; the engine and the other sequences go on."""
        seqs = [c.seq for c in step.chunks] + step.samples if isinstance(step, ScheduledStep) else step
        for seq in {id(s): s for s in seqs}.values():
            if not seq.is_finished:
                seq.error = message
                self.finish(seq, "error")

    def postprocess(self, step: ScheduledStep, sampled) -> None:
        """The step's sampled tokens: forks, appended tokens, finishing and re-listens (``Postprocessor``)."""
        self.post(self, step, sampled)

    def schedule(self) -> ScheduledStep:
        chunks = self._chunks()
        samples, rows = [], []
        for row, chunk in enumerate(c for c in chunks if c.samples):
            samples.append(chunk.seq)
            rows.append(row)
            request = self.requests.get(chunk.seq.request_index)
            if chunk.seq.num_generated == 0 and request is not None:  # the leader's prompt completes: samples fork it
                followers = request.unforked(chunk.seq)
                samples += followers
                rows += [row] * len(followers)
        return ScheduledStep(chunks, samples, rows)

    def _chunks(self) -> list[Chunk]:
        budget = self.config.max_num_batched_tokens
        chunks: list[Chunk] = []
        scheduled: set[int] = set()
        for seq in list(self.running):
            if seq.status != Status.RUNNING or budget <= 0:
                continue
            todo = len(seq) - seq.num_cached
            if todo <= 0:
                continue
            take = min(todo, budget)
            if self._reserve(seq, take, scheduled):
                chunks.append(Chunk(seq, seq.num_cached, seq.num_cached + take))
                scheduled.add(seq.seq_id)
                budget -= take
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            take = min(len(seq) - seq.num_cached, budget)
            if self.bm.blocks_needed(seq.block_table, seq.num_cached, seq.num_cached + take) > self.bm.num_free:
                if not self.running:  # nothing else holds blocks: it can never fit
                    self.finish(seq, "kv_cache_full")
                    continue
                break
            self.kv.copy_blocks(self.bm.reserve(seq.block_table, seq.num_cached, seq.num_cached + take))
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            chunks.append(Chunk(seq, seq.num_cached, seq.num_cached + take))
            scheduled.add(seq.seq_id)
            budget -= take
        return chunks

    def _reserve(self, seq: Sequence, take: int, scheduled: set[int]) -> bool:
        """Blocks for ``take`` more tokens of ``seq``, preempting later sequences if needed."""
        while True:
            try:
                self.kv.copy_blocks(self.bm.reserve(seq.block_table, seq.num_cached, seq.num_cached + take))
                return True
            except OutOfBlocks:
                victims = [s for s in self.running if s is not seq and s.seq_id not in scheduled]
                if victims:
                    self._preempt(victims[-1])
                elif scheduled:  # others run this step: step aside and retry later
                    self._preempt(seq)
                    return False
                else:
                    self.finish(seq, "kv_cache_full")
                    return False

    def _preempt(self, seq: Sequence) -> None:
        self.bm.free(seq.block_table)
        seq.num_cached = 0
        seq.leader = None
        seq.status = Status.WAITING
        self.running.remove(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
