"""One sample being generated: its tokens, which of them were sampled, its audio rows and its KV blocks.

Token positions are indices into ``token_ids`` (one position stream through text, audio and splices).
``mask[i]`` is 1 for a sampled token and 0 for prompt and spliced tokens, so GRPO trains on exactly what was
sampled. ``audio`` holds one ``AudioRun`` per block of consecutive ``<|AUDIO|>`` tokens (the prompt's audio, then
every re-listened span): where it starts and the encoder cache's rows for it, so any uncached range can be
(re)prefilled, e.g. after a preemption. A run's rows are filled in by the step that first runs it (all of a
step's missing rows in one encoder call: engine/runner.py), not when it is queued or spliced.
"""

from __future__ import annotations

import dataclasses
import enum

import torch

from ..config import SamplingParams
from .relisten import RelistenDecision


class Status(enum.Enum):
    WAITING = "waiting"      # not admitted yet (or preempted: its KV is gone and will be recomputed)
    RUNNING = "running"      # holds blocks; decodes, or prefills a prompt/splice chunk
    FINISHED = "finished"


@dataclasses.dataclass(slots=True, eq=False)
class Clip:
    """The audio a sequence may re-listen to: 16 kHz float32 samples (on the model's device) and a content hash."""

    wave: torch.Tensor
    hash: str

    @property
    def num_samples(self) -> int:
        return int(self.wave.numel())


@dataclasses.dataclass(slots=True, eq=False)
class AudioRun:
    """``num_tokens`` ``<|AUDIO|>`` tokens from ``token_ids[position]``: the embeddings of samples [start, end) of
    ``clip``; ``rows`` is None until a step embeds them (then the encoder cache's tensor itself, shared by every
    sample of a request). ``record`` is the re-listen it belongs to (None: the prompt's audio). The tokens are
    consecutive unless ``pieces`` says where each block of rows goes (``protocol.audio_pieces``: time marks sit
    between the blocks)."""

    position: int
    num_tokens: int
    clip: Clip
    start: int
    end: int
    rows: torch.Tensor | None = None
    record: "RelistenRecord | None" = None
    pieces: tuple[tuple[int, int, int], ...] | None = None  # (token offset, first row, end row) of each block

    def blocks(self):
        return self.pieces or ((0, 0, self.num_tokens),)


@dataclasses.dataclass(slots=True)
class RelistenRecord:
    """One ``</seg>`` turn: what the model asked for, what the policy did, and how many audio tokens went in."""

    turn: int
    decision: RelistenDecision
    num_audio_tokens: int = 0
    position: int = 0  # index in token_ids where <|audio_bos|> was inserted (relisten only)
    cache_hit: bool = False
    inserted: bool = False  # the span's tokens went in (False when skipped, stopped, or no room was left)
    dropped_text: str = ""  # what the sampled token that closed the tag held past "</seg>" (Postprocessor._cut_at_seg)


@dataclasses.dataclass(slots=True, eq=False)
class Sequence:
    seq_id: int
    request_index: int
    sample_index: int
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    clip: Clip
    audio: list[AudioRun]  # the audio-token runs of token_ids, in order
    mask: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    block_table: list[int] = dataclasses.field(default_factory=list)
    num_cached: int = 0  # tokens whose K/V are in the cache
    status: Status = Status.WAITING
    relistens: list[RelistenRecord] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    leader: "Sequence | None" = None  # for samples 1..n-1: fork the leader's prompt blocks instead of prefilling
    num_forced: int = 0  # text tokens put in by the engine, not sampled (a re-tokenized "</seg>": mask 0)
    num_sampled: int = 0  # tokens with mask 1 (kept as a count: summing the mask every step grows with the length)
    error: str | None = None  # why the sequence ended early (finish reasons "error", "invalid_logits")

    def __post_init__(self):
        if not self.mask:
            self.mask = [0] * len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == Status.FINISHED

    def append_sampled(self, token: int, logprob: float | None) -> None:
        self.token_ids.append(token)
        self.mask.append(1)
        self.num_sampled += 1
        if logprob is not None:
            self.logprobs.append(logprob)

    def replace_last(self, ids: list[int]) -> None:
        """Replace the last sampled token (not yet in the KV cache) by ``ids``, which were not sampled: mask 0 and
        no log-prob, so a trainer never trains on them."""
        if self.params.logprobs:
            self.logprobs.pop()
        self.token_ids.pop()
        self.mask.pop()
        self.num_sampled -= 1
        self.token_ids.extend(ids)
        self.mask.extend([0] * len(ids))
        self.num_forced += len(ids)

    def append_splice(self, ids: list[int], run: AudioRun) -> None:
        """Insert <|audio_bos|> AUDIO×n <|audio_eos|> (mask 0); ``run`` describes the n audio tokens."""
        self.token_ids.extend(ids)
        self.mask.extend([0] * len(ids))
        self.audio.append(run)

    def audio_in(self, start: int, end: int):
        """``(run, first row, last row + 1, token position)`` of each run's part inside token_ids[start:end]; the
        work is per block of a run, never per token (a sequence has 1 + its re-listens runs)."""
        for run in self.audio:
            for offset, first, last in run.blocks():
                at = run.position + offset
                lo, hi = max(start, at), min(end, at + last - first)
                if lo < hi:
                    yield run, first + lo - at, first + hi - at, lo
