"""Re-listen decisions: the last ``<seg>a, b</seg>`` (``echo.protocol``'s span grammar) under the RelistenPolicy.

Nothing here raises on what the model wrote: every outcome is a ``RelistenDecision`` the engine records. The
decisions in order: docs/architecture.md §6.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..audio.io import SAMPLING_RATE
from ..config import RelistenPolicy
# the format's names stay importable from here (the engine's public API before protocol.py held them)
from ..protocol import SEG_CLOSE, SEG_OPEN, find_seg_close, last_seg_text, parse_span, splice_ids  # noqa: F401

Action = Literal["relisten", "skip", "stop"]


@dataclasses.dataclass(frozen=True, slots=True)
class RelistenDecision:
    """What to do at one ``</seg>``.

    Attributes:
        action: "relisten" (splice the span's audio), "skip" (keep decoding) or "stop" (finish the sequence).
        reason: why, in a few words ("ok", "clamped", "too short", "outside clip", "reversed", "malformed",
            "out of range", "max turns"). "outside clip": the span lies wholly outside the clip, so clamping
            leaves nothing of it.
        text: the raw text between the tags (None when there was no opening tag).
        requested_s: the (start, end) the model wrote, in seconds, when it parsed.
        applied_samples: the (start_sample, end_sample) re-listened (end exclusive), for action "relisten".
    """

    action: Action
    reason: str
    text: str | None = None
    requested_s: tuple[float, float] | None = None
    applied_samples: tuple[int, int] | None = None


def ends_with_seg(text: str) -> bool:
    return text.endswith(SEG_CLOSE)


def decide(text: str, turn: int, num_samples: int, policy: RelistenPolicy, sampling_rate: int = SAMPLING_RATE,
           min_samples: int = 1) -> RelistenDecision:
    """Decide the re-listen for a sequence whose decoded ``text`` ends with ``</seg>``.

    Args:
        text: the sequence's generated text so far (it ends with ``</seg>``).
        turn: how many ``</seg>`` turns came before this one.
        num_samples: length of the sequence's clip in samples.
        policy: the RelistenPolicy in force.
        min_samples: the shortest span that gives any audio token (``audio.features.min_audio_samples``); a
            shorter one is "too short" whatever ``policy.min_span_s`` says.
    """
    if turn >= policy.max_turns:
        return RelistenDecision("stop" if policy.after_max_turns == "stop" else "skip", "max turns")
    inner = last_seg_text(text)
    span = None if inner is None else parse_span(inner)
    if span is None:
        return RelistenDecision("stop" if policy.malformed == "stop" else "skip", "malformed", inner)
    start, end = span
    reason = "ok"
    if start > end:
        if policy.reversed_span != "swap":
            return RelistenDecision("stop" if policy.reversed_span == "stop" else "skip", "reversed", inner, span)
        start, end, reason = end, start, "swapped"
    duration = num_samples / sampling_rate
    if start < 0 or end > duration:
        if policy.out_of_range != "clamp":
            return RelistenDecision("stop" if policy.out_of_range == "stop" else "skip", "out of range", inner, span)
        if end <= 0 or start >= duration:
            return RelistenDecision("skip", "outside clip", inner, span)
        start, end, reason = max(start, 0.0), min(end, duration), "clamped"
    if policy.max_span_s is not None and end - start > policy.max_span_s:
        end, reason = start + policy.max_span_s, "cut to max_span_s"
    first, last = int(round(start * sampling_rate)), min(int(round(end * sampling_rate)), num_samples)
    if last - first < max(1, min_samples, int(round(policy.min_span_s * sampling_rate))):
        return RelistenDecision("skip", "too short", inner, span)
    return RelistenDecision("relisten", reason, inner, span, (first, last))

