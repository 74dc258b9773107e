"""What goes into the engine and what comes out: ``Request`` in, ``GenerationResult`` (one ``SampleOutput`` per
sample) out. Re-exported by ``echo.engine.llm`` and ``echo``, where they have always been imported from."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import SamplingParams
from .sequence import RelistenRecord


@dataclasses.dataclass(slots=True)
class SampleOutput:
    """One sample of a request. ``token_ids``/``mask``/``logprobs`` cover everything after the prompt: sampled
    tokens (mask 1, with a log-prob each when asked) and spliced re-listen tokens (mask 0)."""

    text: str
    token_ids: list[int]
    mask: list[int]
    logprobs: list[float] | None
    relistens: list[RelistenRecord]
    finish_reason: str
    error: str | None = None  # the message behind finish reasons "error" and "invalid_logits"


@dataclasses.dataclass(slots=True)
class GenerationResult:
    """``error`` is set (and ``samples`` empty) when the request itself was bad (unreadable, too short or, under
    ``EngineConfig.long_audio="error"``, too long audio; a malformed, empty or over-long prompt; invalid sampling
    parameters); the other requests of the batch are unaffected. ``warnings`` says what was changed to serve the
    request (a clip truncated to the feature extractor's maximum)."""

    request_index: int
    prompt_token_ids: list[int]
    samples: list[SampleOutput]
    seconds: float
    error: str | None = None
    audio_samples: int = 0  # length of the request's clip as the model hears it (16 kHz samples, after truncation)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def text(self) -> str:
        return self.samples[0].text


@dataclasses.dataclass(slots=True)
class Request:
    """audio: a path or a 16 kHz array; prompt: question text (wrapped as a user turn with the audio), a chat
    conversation (messages with one audio part), or token ids that already contain the expanded audio.
    params: SamplingParams, or a dict of its fields."""

    audio: Any
    prompt: Any
    params: SamplingParams | dict = dataclasses.field(default_factory=SamplingParams)
