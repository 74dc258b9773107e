"""Server counters in Prometheus' text format. The engine thread writes them after each step; readers only read
plain numbers (a snapshot, never the engine's own structures, which are not thread-safe)."""

from __future__ import annotations

import dataclasses
import time
from collections import deque


@dataclasses.dataclass(slots=True)
class Metrics:
    queued_requests: int = 0          # submitted, not yet admitted by the engine
    waiting_sequences: int = 0        # admitted, waiting for KV blocks / a batch slot
    running_sequences: int = 0
    peak_running_sequences: int = 0
    kv_blocks_in_use: int = 0
    kv_blocks_total: int = 0
    active_requests: int = 0
    requests_total: int = 0
    requests_rejected: int = 0        # 429/503
    requests_failed: int = 0          # refused by the engine (400) or failed by an engine error (500)
    requests_aborted: int = 0         # client went away, or shutdown
    generated_tokens: int = 0
    steps: int = 0
    relistens: int = 0
    relisten_cache_hits: int = 0
    encoder_cache_hits: int = 0
    encoder_cache_misses: int = 0
    _window: deque = dataclasses.field(default_factory=lambda: deque(maxlen=512))  # (time, tokens) per step

    def record_step(self, tokens: int) -> None:
        self.steps += 1
        self.generated_tokens += tokens
        self._window.append((time.monotonic(), tokens))

    def tokens_per_second(self, horizon_s: float = 10.0) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._window) if now - t <= horizon_s]
        if len(recent) < 2:
            return 0.0
        return sum(n for _, n in recent[1:]) / max(recent[-1][0] - recent[0][0], 1e-9)

    def render(self) -> str:
        rows = [
            ("echo_queue_requests", "gauge", "requests submitted and not yet admitted", self.queued_requests),
            ("echo_waiting_sequences", "gauge", "admitted sequences waiting for KV blocks", self.waiting_sequences),
            ("echo_running_sequences", "gauge", "sequences in the running batch", self.running_sequences),
            ("echo_peak_running_sequences", "gauge", "most sequences in one batch since start",
             self.peak_running_sequences),
            ("echo_kv_blocks_in_use", "gauge", "KV cache blocks held", self.kv_blocks_in_use),
            ("echo_kv_blocks_total", "gauge", "KV cache blocks", self.kv_blocks_total),
            ("echo_active_requests", "gauge", "requests in the server", self.active_requests),
            ("echo_tokens_per_second", "gauge", "sampled tokens per second over the last 10 s",
             round(self.tokens_per_second(), 3)),
            ("echo_requests_total", "counter", "requests accepted", self.requests_total),
            ("echo_requests_rejected_total", "counter", "requests refused with 429/503", self.requests_rejected),
            ("echo_requests_failed_total", "counter", "requests the engine refused or failed", self.requests_failed),
            ("echo_requests_aborted_total", "counter", "requests cancelled (disconnect or shutdown)",
             self.requests_aborted),
            ("echo_generated_tokens_total", "counter", "sampled tokens", self.generated_tokens),
            ("echo_engine_steps_total", "counter", "engine steps", self.steps),
            ("echo_relistens_total", "counter", "re-listened spans spliced in", self.relistens),
            ("echo_relisten_cache_hits_total", "counter", "re-listens served from the encoder cache",
             self.relisten_cache_hits),
            ("echo_encoder_cache_hits_total", "counter", "encoder-cache hits (prompts and spans)",
             self.encoder_cache_hits),
            ("echo_encoder_cache_misses_total", "counter", "encoder-cache misses", self.encoder_cache_misses),
        ]
        out = []
        for name, kind, help_text, value in rows:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(out) + "\n"


def parse(text: str) -> dict[str, float]:
    """Prometheus text -> {name: value} (no labels), for tests and the benchmark."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out
