"""Re-listen decisions: parse the last ``<seg>a, b</seg>``, apply the RelistenPolicy, build the splice ids.

Nothing here raises on what the model wrote: every outcome is a ``RelistenDecision`` the engine records.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Literal

from ..config import RelistenPolicy

SEG_OPEN, SEG_CLOSE = "<seg>", "</seg>"
_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*s?"
_SPAN = re.compile(rf"^\s*{_NUMBER}\s*,\s*{_NUMBER}\s*$")

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


def find_seg_close(text: str, new_from: int) -> int | None:
    """End index (exclusive) of the first ``</seg>`` in ``text`` that ends after ``text[:new_from]``, the part
    already seen; None when there is none. The tag may start in the seen part and end inside a token that also
    holds what follows it (``</seg>.`` or ``</seg><`` as one token)."""
    pos = text.find(SEG_CLOSE, max(0, new_from - len(SEG_CLOSE) + 1))
    return None if pos < 0 else pos + len(SEG_CLOSE)


def last_seg_text(text: str) -> str | None:
    """The text between the last ``<seg>`` and the closing ``</seg>`` that ends ``text``."""
    if not text.endswith(SEG_CLOSE):
        return None
    body = text[: -len(SEG_CLOSE)]
    start = body.rfind(SEG_OPEN)
    return None if start < 0 else body[start + len(SEG_OPEN):]


def parse_span(inner: str) -> tuple[float, float] | None:
    """``"3.0, 5.5"`` (an optional ``s`` after each number) -> (3.0, 5.5); anything else -> None."""
    m = _SPAN.match(inner)
    if m is None:
        return None
    a, b = float(m.group(1)), float(m.group(2))
    return (a, b) if math.isfinite(a) and math.isfinite(b) else None


def decide(text: str, turn: int, num_samples: int, policy: RelistenPolicy, sampling_rate: int = 16_000,
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


def splice_ids(num_audio_tokens: int, audio_bos_id: int, audio_id: int, audio_eos_id: int) -> list[int]:
    """The ids inserted after ``</seg>``: ``<|audio_bos|> <|AUDIO|> x n <|audio_eos|>``."""
    return [audio_bos_id] + [audio_id] * num_audio_tokens + [audio_eos_id]
