"""Rule filters: checks that cost no tokens, run before any judge call.

Question problems drop the item (the judge never sees it); chain-of-thought problems only cost the item its chain
of thought (it can still become an RL item if the judge finds the question valid). ``<seg>`` tags are read with
``echo.protocol``'s span grammar, the engine's own, and judged as the engine's default ``RelistenPolicy`` hears them
(inside the clip, not reversed, at least ``min_span_s``): a tag the engine would not re-listen is a problem here
too, so SFT never teaches a span the engine would ignore.
"""

from __future__ import annotations

import re

from ...audio.io import SAMPLING_RATE
from ...answers import extract_answer
from ...config import RelistenPolicy
from ...protocol import SEG_CLOSE, SEG_OPEN, SPAN_DECIMALS, last_seg_text, parse_span
from ..formats import DataFormatError, parse_cot

# every tag is judged on its own (no turn limit); out-of-range and reversed tags are reported, never repaired
_MIN_SPAN_S = RelistenPolicy().min_span_s

_CATCH_ALL = {"all of the above", "none of the above", "both", "neither", "all of them", "none of them"}
QA_REASONS = ("empty_question", "too_few_choices", "choices_not_distinct", "answer_not_in_choices",
              "answer_not_unique")
COT_REASONS = ("cot_format", "cot_answer_mismatch", "malformed_span", "span_reversed", "span_outside_clip",
               "span_too_short", "span_precision", "no_span_cited")


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def qa_problems(item: dict) -> list[str]:
    """Problems with the question, choices and answer (names from QA_REASONS)."""
    question, choices, answer = item.get("question"), item.get("choices"), item.get("answer")
    if not isinstance(question, str) or not question.strip():
        return ["empty_question"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        return ["too_few_choices"]
    if len({_norm(c) for c in choices}) != len(choices):
        return ["choices_not_distinct"]
    if answer not in choices:
        return ["answer_not_in_choices"]
    # one right choice only: no catch-all option, no other choice that says the answer and more, and the scorer
    # maps the answer's own text to its choice
    words = set(_norm(answer).split())
    others = [set(_norm(c).split()) for c in choices if c != answer]
    if (any(_norm(c) in _CATCH_ALL for c in choices) or any(words <= o for o in others)
            or extract_answer(f"<answer>{answer}</answer>", choices).choice_index != choices.index(answer)):
        return ["answer_not_unique"]
    return []


def spans_of(cot: str, duration_s: float) -> tuple[list[tuple[float, float]], list[str]]:
    """The spans the engine would re-listen to in ``cot``, and a problem name for every tag it would not."""
    num_samples = int(round(duration_s * SAMPLING_RATE))
    spans, problems = [], []
    pos, turn = 0, 0
    while (end := cot.find(SEG_CLOSE, pos)) >= 0:
        end += len(SEG_CLOSE)
        inner = last_seg_text(cot[:end])
        span = None if inner is None else parse_span(inner)
        problem = "malformed_span" if span is None else _span_problem(*span, num_samples)
        if problem is None:
            spans.append(span)
        else:
            problems.append(problem)
        pos, turn = end, turn + 1
    if cot.count(SEG_OPEN) != turn:  # an opening tag never closed
        problems.append("malformed_span")
    return spans, problems


def _span_problem(start: float, end: float, num_samples: int) -> str | None:
    """Why the engine's default policy would not re-listen to ``(start, end)`` s of a clip, or None."""
    if start > end:
        return "span_reversed"
    if start < 0 or end > num_samples / SAMPLING_RATE:
        return "span_outside_clip"
    first, last = int(round(start * SAMPLING_RATE)), min(int(round(end * SAMPLING_RATE)), num_samples)
    return "span_too_short" if last - first < max(1, int(round(_MIN_SPAN_S * SAMPLING_RATE))) else None


def cot_problems(item: dict, duration_s: float) -> list[str]:
    """Problems with the chain of thought (names from COT_REASONS); empty when it can be SFT data."""
    cot = item.get("cot")
    if not isinstance(cot, str) or not cot.strip():
        return ["cot_format"]
    problems = []
    spans, span_problems = spans_of(cot, duration_s)
    try:
        written, cot_answer = parse_cot(cot)
    except DataFormatError as exc:
        first = "malformed_span" if "malformed span" in str(exc) else "cot_format"
        return list(dict.fromkeys([first, *span_problems]))
    if cot_answer != item.get("answer"):
        problems.append("cot_answer_mismatch")
    problems += span_problems
    if any(round(x, SPAN_DECIMALS) != x for span in written for x in span):
        problems.append("span_precision")
    if not spans and not span_problems:
        problems.append("no_span_cited")
    return list(dict.fromkeys(problems))


def check(item: dict, duration_s: float) -> tuple[list[str], list[str]]:
    """(question problems, chain-of-thought problems) of one item."""
    return qa_problems(item), cot_problems(item, duration_s)
