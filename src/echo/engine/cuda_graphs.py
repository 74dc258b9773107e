"""Decode steps replayed from CUDA graphs, one graph per batch-size bucket (as vLLM and nano-vllm capture them).

A decode step of a small batch on a GPU is a few hundred short kernels (embedding, every layer's linears, norms,
rotary, ``store_kv`` and the Triton decode kernel, the LM head); their launch overhead, not the bytes of the
weights, bounds it. Captured once, the step is one replay: the step's inputs are copied into static buffers
(token ids, positions, KV slots, padded block tables, key counts), the smallest bucket that holds the batch
replays, and the first n rows of its static logits are the step's. Padding rows write no K/V (slot -1, which
``store_kv`` skips) and attend to one key of block 0; their logits are never read.

Only pure decode steps replay: every chunk one sampled token and no audio row. Prefill chunks and re-listen
splices (many tokens at any context) run eagerly, as does a batch past the largest bucket. The graphs need the
Triton attention and ``store_kv`` (no host syncs, tensor-driven lengths), so they are off when ECHO_BACKEND picks
another backend. On by default on CUDA (``EngineConfig.enforce_eager`` turns them off), never on the CPU, where
there is no launch overhead to hide. ``capture`` is injectable: the tests on a CPU run the buffers, buckets and
padding with a stand-in that replays the captured function eagerly (``capture_eagerly``).
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

from ..ops import _backend
from ..ops.paged_attention import BACKENDS as ATTENTION_BACKENDS, AttentionPlan, DecodePlan
from ..ops.store_kv import BACKENDS as STORE_KV_BACKENDS
from .kv_cache import PagedKVCache, PagedStep

MAX_BUCKET = 512  # batches past this run eagerly (a graph per bucket costs capture time and pool memory)

# capture(fn, pool) -> (replay, output, pool): ``output`` is the tensor ``fn`` returned, refreshed by each replay
Capture = Callable[[Callable[[], torch.Tensor], object], tuple[Callable[[], None], torch.Tensor, object]]


def capture_cuda(fn: Callable[[], torch.Tensor], pool) -> tuple[Callable[[], None], torch.Tensor, object]:
    """One CUDA graph of ``fn`` (after one eager run, which compiles the Triton kernels and sets up cuBLAS),
    sharing ``pool`` with the buckets captured before it."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph.replay, out, graph.pool()


def capture_eagerly(fn: Callable[[], torch.Tensor], pool) -> tuple[Callable[[], None], torch.Tensor, object]:
    """Stand-in for ``capture_cuda`` on any device: each replay calls ``fn`` again on the same static buffers and
    copies its result into the one output tensor, as a graph's replay refreshes its output in place."""
    out = fn()
    return (lambda: out.copy_(fn())), out, pool


def buckets(max_num_seqs: int) -> list[int]:
    """Batch sizes that get a graph: 1, 2, 4, then every multiple of 8, up to ``max_num_seqs`` (itself included)."""
    top = min(max_num_seqs, MAX_BUCKET)
    sizes = [b for b in (1, 2, 4) if b < top] + list(range(8, top, 8))
    return sizes + [top]


def graphs_usable(device: torch.device) -> bool:
    """Whether decode steps on ``device`` can replay from graphs: a CUDA device whose attention and ``store_kv``
    resolve to Triton (ECHO_BACKEND=torch, say, keeps the eager path)."""
    return (device.type == "cuda"
            and _backend.resolve("paged_attention", ATTENTION_BACKENDS, device) == "triton"
            and _backend.resolve("store_kv", STORE_KV_BACKENDS, device) == "triton")


class DecodeGraphs:
    """The static buffers and one captured graph per bucket; captured on the first decode step that fits."""

    def __init__(self, model, kv: PagedKVCache, max_num_seqs: int, max_model_len: int,
                 capture: Capture = capture_cuda):
        self.model, self.kv, self.capture = model, kv, capture
        self.sizes = buckets(max_num_seqs)
        device = kv.k.device
        n = self.sizes[-1]
        width = min(-(-max_model_len // kv.block_size), kv.num_blocks)  # block-table columns
        # ids, positions, slots and key counts: one host staging tensor, one copy a step
        self.meta = torch.zeros(4, n, dtype=torch.int64, device=device)
        self.tables = torch.zeros(n, width, dtype=torch.int32, device=device)
        pin = device.type == "cuda"
        self.meta_host = torch.zeros(4, n, dtype=torch.int64, pin_memory=pin)
        self.tables_host = torch.zeros(n, width, dtype=torch.int32, pin_memory=pin)
        self.rows = torch.arange(n, device=device)
        self.graphs: dict[int, tuple[Callable[[], None], torch.Tensor]] = {}
        self.replays = 0  # decode steps served by a graph (benchmarks and tests read it)
        self.failed: str | None = None  # why capture failed: the engine then decodes eagerly
        self.audio_token_id = model.config.audio_token_id

    def fits(self, chunks: Sequence) -> bool:
        """A pure decode step of at most the largest bucket (each chunk one token, sampled, not an audio row),
        with the graphs captured: the first call captures them; a capture that fails warns once, naming the
        error, and every later step decodes eagerly."""
        if self.failed is not None:
            return False
        if not (0 < len(chunks) <= self.sizes[-1] and all(
            c.end - c.start == 1 and c.end == len(c.seq) and c.seq.token_ids[c.start] != self.audio_token_id
            for c in chunks)):
            return False
        if not self.graphs:
            try:
                self._capture_all()
            except Exception as exc:  # noqa: BLE001 -- an op that cannot be captured: eager still works
                self.graphs.clear()
                self.failed = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"CUDA graph capture failed, decoding eagerly from now on ({self.failed}); "
                              "EngineConfig(enforce_eager=True) (--enforce-eager) skips the capture",
                              RuntimeWarning, stacklevel=2)
                return False
        return True

    @torch.inference_mode()
    def run(self, chunks: Sequence) -> torch.Tensor:
        """Logits (len(chunks), vocab) of a step that ``fits``, from its bucket's graph."""
        n = len(chunks)
        size = next(b for b in self.sizes if b >= n)
        bs, pad = self.kv.block_size, size - n
        # ids, positions, slots, key counts; padding rows: token 0 at position 0, no K/V write, one key of block 0
        self.meta_host[:, :size] = torch.tensor([[c.seq.token_ids[c.start] for c in chunks] + [0] * pad,
                                                 [c.start for c in chunks] + [0] * pad,
                                                 [c.seq.block_table[c.start // bs] * bs + c.start % bs
                                                  for c in chunks] + [-1] * pad,
                                                 [c.end for c in chunks] + [1] * pad])
        width = 1
        for i, c in enumerate(chunks):
            used = -(-c.end // bs)
            self.tables_host[i, :used] = torch.as_tensor(c.seq.block_table[:used], dtype=torch.int32)
            width = max(width, used)
        self.tables_host[n:size, 0] = 0
        self.meta[:, :size].copy_(self.meta_host[:, :size], non_blocking=True)
        self.tables[:size, :width].copy_(self.tables_host[:size, :width], non_blocking=True)
        replay, logits = self.graphs[size]
        replay()
        self.replays += 1
        return logits[:n]

    def _forward(self, size: int) -> torch.Tensor:
        """The captured step of ``size`` rows: embedding, every layer over the paged cache, the LM head."""
        ids, positions, slots = self.meta[0, :size], self.meta[1, :size], self.meta[2, :size]
        plan = AttentionPlan([], "triton", DecodePlan(self.rows[:size], self.tables[:size],
                                                      self.meta[3, :size].to(torch.int32)))
        attention = PagedStep(self.kv, [()] * size, [1] * size, [0] * size, slots, plan, check_slots=False)
        hidden = self.model.forward_flat(self.model.decoder.embed_tokens(ids), positions, attention)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def _capture_all(self) -> None:
        """Every bucket, largest first (the smaller ones then reuse its pool memory), on padding-only buffers: the
        capture's eager run writes no K/V and reads one key of block 0."""
        self.meta[:] = torch.tensor([[0], [0], [-1], [1]], device=self.meta.device)
        self.tables.zero_()
        pool = None
        for size in reversed(self.sizes):
            replay, out, pool = self.capture(lambda size=size: self._forward(size), pool)
            self.graphs[size] = (replay, out)


def decode_graphs_for(model, kv: PagedKVCache, config) -> DecodeGraphs | None:
    """The engine's graphs: on a CUDA device whose backends allow them, unless ``config.enforce_eager``."""
    if config.enforce_eager or not graphs_usable(kv.k.device):
        return None
    return DecodeGraphs(model, kv, config.max_num_seqs, config.max_model_len)

