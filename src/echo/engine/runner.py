"""The run of a step: scheduled chunks -> flattened tokens, positions, audio rows and slot mapping -> the model's
flattened forward over the paged cache -> logits of the chunks that end their sequence -> one token sampled for
every sequence that samples this step."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from .block_manager import BlockManager
from .kv_cache import PagedKVCache
from .sampler import LogitsProcessor, sample
from .scheduler import Chunk, ScheduledStep


@dataclasses.dataclass(slots=True)
class Sampled:
    """One token per ``ScheduledStep.samples`` entry: None (with its reason in ``errors``) for a row that could
    not be sampled; ``logprobs`` under the sampler's policy."""

    tokens: list[int | None]
    logprobs: list[float]
    errors: list[str | None]


class ModelRunner:
    def __init__(self, model, kv: PagedKVCache, bm: BlockManager):
        self.model, self.kv, self.bm = model, kv, bm

    def run(self, step: ScheduledStep, processors: Sequence[LogitsProcessor] = ()) -> Sampled:
        logits = run_step(self.model, self.kv, self.bm, step.chunks)
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


@torch.inference_mode()
def run_step(model, kv: PagedKVCache, bm: BlockManager, chunks: list[Chunk]) -> torch.Tensor:
    """Run ``chunks``; returns logits (num sampling chunks, vocab) in the order of ``[c for c in chunks if
    c.samples]``, and marks the chunks' tokens as cached."""
    device = model.device
    audio_id = model.config.audio_token_id
    ids, positions, slots, audio, last = [], [], [], [], []
    total = 0
    for c in chunks:
        ids.extend(c.seq.token_ids[c.start : c.end])
        positions.extend(range(c.start, c.end))
        slots.extend(bm.slots(c.seq.block_table, c.start, c.end))
        rows = c.seq.audio_rows_for(c.start, c.end, audio_id)
        if rows.numel():
            audio.append(rows)
        total += c.end - c.start
        if c.samples:
            last.append(total - 1)
    ids_t = torch.tensor(ids, device=device)
    embeds = model.embed(ids_t, torch.cat(audio).to(device) if audio else None)
    step = kv.step([c.seq.block_table for c in chunks], [c.end - c.start for c in chunks],
                   [c.start for c in chunks], torch.tensor(slots, device=device))
    hidden = model.forward_flat(embeds, torch.tensor(positions, device=device), step)
    for c in chunks:
        c.seq.num_cached = c.end
    return model.compute_logits(hidden[last]) if last else hidden.new_zeros(0, model.config.decoder.vocab_size)
