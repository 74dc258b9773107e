"""The run of a step: the audio rows the step's chunks still lack, embedded in one call (prompts admitted and
re-listens spliced since the last step, through the encoder cache) -> the chunks flattened once into a
``StepBatch`` (step_batch.py) -> the model's flattened forward over the paged cache (or, for a pure decode step on
CUDA, the replay of its batch bucket's graph: cuda_graphs.py) -> logits of the chunks that end their sequence ->
one token sampled for every sequence that samples this step."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from ..audio import FeatureConfig
from ..ops.linear import few_row_forward
from .block_manager import BlockManager
from .cuda_graphs import DecodeGraphs
from .encoder_cache import EncoderCache
from .kv_cache import PagedKVCache
from .sampler import LogitsProcessor, sample
from .scheduler import Chunk, ScheduledStep
from .step_batch import StepBatch


@dataclasses.dataclass(slots=True)
class Sampled:
    """One token per ``ScheduledStep.samples`` entry: None (with its reason in ``errors``) for a row that could
    not be sampled; ``logprobs`` under the sampler's policy."""

    tokens: list[int | None]
    logprobs: list[float]
    errors: list[str | None]


class ModelRunner:
    def __init__(self, model, kv: PagedKVCache, bm: BlockManager, features: FeatureConfig,
                 encoder_cache: EncoderCache, graphs: DecodeGraphs | None = None):
        self.model, self.kv, self.bm = model, kv, bm
        self.features, self.encoder_cache = features, encoder_cache
        self.graphs = graphs  # CUDA graphs of pure decode steps (cuda_graphs.py); None: every step eager

    def run(self, step: ScheduledStep, processors: Sequence[LogitsProcessor] = ()) -> Sampled:
        self.embed_audio(step.chunks)
        if self.graphs is not None and self.graphs.fits(step.chunks):
            logits = self.graphs.run(step.chunks)
        else:
            logits = run_step(self.model, self.kv, self.bm, step.chunks)
        for c in step.chunks:  # either path wrote the chunks' K/V
            c.seq.num_cached = c.end
        seqs = step.samples
        if not seqs:
            return Sampled([], [], [])
        errors: list[str | None] = []
        # every sampling chunk's own sequence has its row, so equal counts mean rows == 0..n-1: no forked sample
        rows = logits[torch.tensor(step.rows, device=logits.device)] if len(seqs) != len(logits) else logits
        tokens, logprobs = sample(rows, [s.params for s in seqs], [s.generator for s in seqs],
                                  [s.token_ids for s in seqs], processors, never=[self.model.config.audio_token_id],
                                  errors=errors)
        return Sampled(tokens, logprobs, errors)

    def embed_audio(self, chunks: Sequence[Chunk]) -> None:
        """Fill in the rows of every audio run the chunks cover that has none yet (prompt audio of newly admitted
        requests, spans re-listened in the last step): one encoder-cache call for all of them, which encodes all
        its misses in one batched mel + encoder + projector call (``model.embed_spans``)."""
        runs = list({id(r): r for c in chunks for r, *_ in c.seq.audio_in(c.start, c.end) if r.rows is None}.values())
        if not runs:
            return
        rows, hits = self.encoder_cache.embed(
            [(r.clip, r.start, r.end) for r in runs],
            lambda waves, which: self.model.embed_spans(self.features, waves, which))
        for run, piece, hit in zip(runs, rows, hits):
            if piece.shape[0] != run.num_tokens:
                raise RuntimeError(f"audio of {run.end - run.start} samples gave {piece.shape[0]} rows for "
                                   f"{run.num_tokens} <|AUDIO|> tokens")
            run.rows = piece
            if run.record is not None:
                run.record.cache_hit = hit


@torch.inference_mode()
def run_step(model, kv: PagedKVCache, bm: BlockManager, chunks: list[Chunk]) -> torch.Tensor:
    """Run ``chunks`` (their sequences' audio rows filled in); returns logits (num sampling chunks, vocab) in the
    order of ``[c for c in chunks if c.samples]`` (the caller marks the chunks' tokens as cached)."""
    batch = StepBatch.build(chunks, bm, model.device)
    with few_row_forward(len(batch.ids), model.device, model.dtype):  # a decode step: the linears take the cores
        embeds = model.embed_gathered(batch.ids, batch.audio_sources, batch.audio_dst)
        hidden = model.forward_flat(embeds, batch.positions, kv.for_batch(batch))
        rows = batch.sample_rows
        logits = model.compute_logits(hidden[rows]) if rows else None
    return logits if rows else hidden.new_zeros(0, model.config.decoder.vocab_size)
