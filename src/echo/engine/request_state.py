"""One object per request the engine holds: its n samples, its prompt, when it started and what was changed to
serve it; ``result`` turns it into the ``GenerationResult`` the caller gets."""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import torch

from ..config import SamplingParams
from .outputs import GenerationResult, SampleOutput
from .sequence import AudioRun, Clip, Sequence, Status


@dataclasses.dataclass(slots=True, eq=False)
class RequestState:
    index: int
    samples: list[Sequence]  # sample 0 prefills the prompt; samples 1..n-1 fork its blocks once it is cached
    prompt_ids: list[int]
    warnings: list[str]
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def create(cls, index: int, prompt_ids: list[int], params: SamplingParams, clip: Clip,
               audio: AudioRun, warnings: list[str], seq_ids: Iterator[int]) -> "RequestState":
        """A request of ``params.n`` samples (sample i seeded ``seed + i``); samples 1..n-1 will fork sample 0's
        prompt blocks once it is prefilled instead of prefilling it themselves. ``audio`` is the prompt's audio
        run, shared by the samples (embedded once, by the step that first prefills it)."""
        samples: list[Sequence] = []
        for i in range(params.n):
            gen = None if params.seed is None else torch.Generator(clip.wave.device).manual_seed(params.seed + i)
            samples.append(Sequence(next(seq_ids), index, i, list(prompt_ids), len(prompt_ids), params, clip,
                                    [audio], generator=gen, leader=samples[0] if samples else None))
        return cls(index, samples, prompt_ids, warnings)

    @property
    def is_finished(self) -> bool:
        return all(s.is_finished for s in self.samples)

    def unforked(self, leader: Sequence) -> list[Sequence]:
        """The samples waiting to fork ``leader``'s cached prompt (they cannot run without it)."""
        if leader.sample_index != 0:
            return []
        return [f for f in self.samples[1:] if f.leader is leader and f.status == Status.WAITING and not f.block_table]

    def result(self, processor) -> GenerationResult:
        """The request's result: each sample's text (stop string trimmed), tokens, mask, log-probs and re-listens."""
        samples = []
        for s in self.samples:
            gen = s.token_ids[s.num_prompt_tokens:]
            text = processor.decode(gen, skip_special_tokens=True) if processor is not None else ""
            for stop in s.params.stop:
                if text.endswith(stop):
                    text = text[: -len(stop)]
            samples.append(SampleOutput(text, gen, s.mask[s.num_prompt_tokens:],
                                        list(s.logprobs) if s.params.logprobs else None, s.relistens,
                                        s.finish_reason or "unknown", s.error))
        return GenerationResult(self.index, self.prompt_ids, samples, time.perf_counter() - self.started,
                                audio_samples=self.samples[0].clip.num_samples, warnings=list(self.warnings))
