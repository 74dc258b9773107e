"""Reading an answer, below everything that scores or rewards one: the official MMAU/MMAR token rule
(:func:`string_match`), span answers (:func:`answer_span`, :func:`prediction_correct`), and answer extraction: a
model's full response -> one of the item's choices, or "no answer" (:func:`extract_answer`).

The extracted choice's text is what echo writes as the prediction string the official scorers read, so an item
with no extractable answer gets an empty prediction (wrong, and counted separately) — never the first choice, which
the public Echo evaluation substitutes and which inflates its scores.

Order of attempts on the candidate text (see :func:`extract_answer`):
1. where the candidate comes from: the last closed ``<answer>…</answer>``, else an unclosed ``<answer>…`` at the
   end, else an "answer is …" / "answer: …" phrase, else the text outside a *closed* ``<think>`` block (a response cut
   off inside ``<think>`` has no answer);
2. how it maps to a choice: the choice's own words (case, punctuation and quotes ignored), an option letter
   (``B``, ``(b)``, ``B.``, ``option B``), a letter plus text (``B) Woman``: the text decides when it names a choice),
   the official token rule (:func:`string_match`) when exactly one choice passes it, and last a
   shortened choice: the candidate's words all belong to exactly one choice and include a word only it has
   (``woman`` -> ``A woman``; the official rule alone would reject it for lacking ``a``).

Items whose choices are spans (``<seg>a, b</seg>``: "when is the dog heard?") take a written span instead: it
names the choice it overlaps with IoU >= ``SPAN_ANSWER_IOU`` (method ``span``), and a span that lands on no choice
is a wrong answer, not a missing one (its prediction is the span itself, which scores wrong).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .protocol import (ANSWER_BLOCK, ANSWER_OPEN, SEG_BLOCK, THINK_BLOCK, THINK_OPEN, format_span, parse_span,
                       seg_bodies, span_iou)

_WORD = re.compile(r"\b\w+\b")

# the format's patterns, read leniently here: a model's answer may spell a tag in capitals
_ANSWER_CLOSED = re.compile(ANSWER_BLOCK.pattern, re.IGNORECASE | re.DOTALL)
_ANSWER_OPEN = re.compile(re.escape(ANSWER_OPEN) + r"(.*)$", re.IGNORECASE | re.DOTALL)
_THINK_CLOSED = re.compile(THINK_BLOCK.pattern, re.IGNORECASE | re.DOTALL)
_SEG = re.compile(SEG_BLOCK.pattern + r"|<\|audio_bos\|>.*?<\|audio_eos\|>", re.IGNORECASE | re.DOTALL)
_PHRASE = re.compile(
    r"(?:final answer|correct answer|the answer|answer)\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE
)
_LEAD_IN = re.compile(r"^(?:(?:the\s+)?(?:final\s+|correct\s+)?answer\s*(?:is|:)\s*:?\s*)", re.IGNORECASE)
_LETTER_ONLY = re.compile(r"^(?:option|choice)?\s*[\(\[]?([a-z])[\)\]]?\s*[\.\):]?$", re.IGNORECASE)
_LETTER_PREFIX = re.compile(r"^(?:option|choice)?\s*[\(\[]?([a-z])(?:[\)\]]\s*|[\.\):]\s+)(.+)$", re.IGNORECASE | re.DOTALL)
_STRIP_CHARS = string.whitespace + "\"'`*_.,;:!?[](){}<>"


def word_tokens(text: Any) -> set[str]:
    """Lower-cased word tokens, as the official scripts compute them: ``set(re.findall(r'\\b\\w+\\b', text.lower()))``."""
    return set(_WORD.findall(str(text).lower()))


def string_match(answer: Any, prediction: Any, choices: Iterable[Any]) -> bool:
    """The official MMAU/MMAR correctness rule for one prediction string.

    Correct when the prediction has at least one token, contains every token of ``answer``, and contains no token
    that belongs to a choice (whose token set differs from the answer's) but not to the answer.
    """
    prediction_tokens = word_tokens(prediction)
    answer_tokens = word_tokens(answer)
    if not prediction_tokens:
        return False
    incorrect_tokens: set[str] = set()
    for choice in choices:
        if choice is None:
            continue
        choice_tokens = word_tokens(choice)
        if choice_tokens != answer_tokens:
            incorrect_tokens |= choice_tokens - answer_tokens
    return answer_tokens <= prediction_tokens and prediction_tokens.isdisjoint(incorrect_tokens)


SPAN_ANSWER_IOU = 0.5  # a span answer is right when it overlaps the true span by at least this IoU


def answer_span(text: Any, bare: bool = True) -> tuple[float, float] | None:
    """The span an answer gives, when it is one: a single ``<seg>a, b</seg>`` (what echo writes, the clip's audio
    spliced after it or not), or with ``bare`` also the plain ``a, b`` of the span grammar; None otherwise."""
    text = str(text)
    bodies = seg_bodies(text)
    if len(bodies) == 1:
        return parse_span(bodies[0])
    return parse_span(text.strip().rstrip(".")) if bare and not bodies else None


def prediction_correct(answer: Any, prediction: Any, choices: Iterable[Any]) -> bool:
    """Whether a prediction string is right: an answer written as a span (``<seg>a, b</seg>``, echo's grounding
    items) by IoU >= ``SPAN_ANSWER_IOU`` with the span the prediction gives (:func:`answer_span`); any other answer by
    the official token rule."""
    truth = answer_span(answer, bare=False)
    if truth is not None:
        said = answer_span(prediction)
        return said is not None and span_iou(said, truth) >= SPAN_ANSWER_IOU
    return string_match(answer, prediction, choices)



@dataclass(frozen=True, slots=True)
class Extraction:
    """Result of :func:`extract_answer`.

    Attributes:
        choice_index: index into the item's choices, or ``None`` when nothing could be extracted (or a written span
            lands on no choice).
        prediction: the string written for the official scorers: ``choices[choice_index]``, a written span that
            lands on no choice, or ``""`` (no answer).
        source: where the candidate text came from: ``answer_tag``, ``answer_tag_unclosed``, ``answer_phrase``,
            ``bare``, or ``none`` (empty response or cut off inside ``<think>``).
        method: how it was mapped: ``text``, ``letter``, ``letter_text``, ``tokens``, ``subset``, ``span``, or
            ``none``.
        candidate: the candidate text itself (useful when reading failures).
    """

    choice_index: int | None
    prediction: str
    source: str
    method: str
    candidate: str

    @property
    def no_answer(self) -> bool:
        return not self.prediction


def extract_answer(response: str, choices: Sequence[str]) -> Extraction:
    """Map a model response to one of ``choices`` (see the module docstring for the rules), never guessing."""
    choices = [str(c) for c in choices]
    source, candidate = _candidate(response or "")
    if source == "none":
        return Extraction(None, "", "none", "none", "")
    spans = [answer_span(c, bare=False) for c in choices]
    if choices and all(s is not None for s in spans) and (said := answer_span(candidate)) is not None:
        return _span_choice(said, spans, choices, source, candidate)
    index, method = match_choice(candidate, choices)
    if index is None:
        return Extraction(None, "", source, "none", candidate)
    return Extraction(index, choices[index], source, method, candidate)


def _span_choice(said: tuple[float, float], spans: list, choices: list[str], source: str, candidate: str
                 ) -> Extraction:
    """The choice a written span names: the one it overlaps best, with IoU >= ``SPAN_ANSWER_IOU``; else a wrong
    answer whose prediction is the span as written."""
    ious = [span_iou(said, s) for s in spans]
    best = max(range(len(ious)), key=ious.__getitem__)
    if ious[best] >= SPAN_ANSWER_IOU and ious.count(ious[best]) == 1:
        return Extraction(best, choices[best], source, "span", candidate)
    return Extraction(None, format_span(*said), source, "span", candidate)


def match_choice(candidate: str, choices: Sequence[str]) -> tuple[int | None, str]:
    """Index of the choice ``candidate`` names and the rule that decided it, or ``(None, "none")``."""
    text = _clean(candidate)
    if not text:
        return None, "none"
    by_text = _by_words(text, choices)
    if by_text is not None:
        return by_text, "text"
    letter = _LETTER_ONLY.match(text)
    if letter:
        index = _letter_index(letter.group(1), choices)
        return (index, "letter") if index is not None else (None, "none")
    prefixed = _LETTER_PREFIX.match(text)
    if prefixed:
        rest = _clean(prefixed.group(2))
        index = _by_words(rest, choices)
        if index is None:
            index = _by_tokens(rest, choices)
        if index is not None:
            return index, "letter_text"
        index = _letter_index(prefixed.group(1), choices)
        if index is not None and not word_tokens(rest):
            return index, "letter"
    index = _by_tokens(text, choices)
    if index is not None:
        return index, "tokens"
    index = _by_subset(text, choices)
    return (index, "subset") if index is not None else (None, "none")


def _by_subset(text: str, choices: Sequence[str]) -> int | None:
    """The one choice whose words include all of ``text``'s and one no other choice has ("woman" -> "A woman")."""
    words = word_tokens(text)
    sets = [word_tokens(c) for c in choices]
    hits = [i for i, s in enumerate(sets) if words <= s and words - set().union(*(o for j, o in enumerate(sets) if j != i))]
    return hits[0] if len(hits) == 1 else None


def _candidate(response: str) -> tuple[str, str]:
    closed = _ANSWER_CLOSED.findall(response)
    if closed:
        return "answer_tag", closed[-1]
    opened = _ANSWER_OPEN.search(response)
    if opened:
        return "answer_tag_unclosed", opened.group(1)
    outside = _SEG.sub(" ", _THINK_CLOSED.sub(" ", response))
    if re.search(re.escape(THINK_OPEN), outside, re.IGNORECASE):  # cut off mid-thought: whatever follows is not an answer
        return "none", ""
    phrases = _PHRASE.findall(outside)
    if phrases:
        return "answer_phrase", phrases[-1].splitlines()[0]
    if word_tokens(outside):
        return "bare", outside
    return "none", ""


def _clean(text: str) -> str:
    text = _SEG.sub(" ", text)
    text = " ".join(text.split())
    text = _LEAD_IN.sub("", text.strip(_STRIP_CHARS + "-"))
    return text.strip(_STRIP_CHARS)


def _words(text: str) -> list[str]:
    return re.findall(r"\b\w+\b", text.lower())


def _by_words(text: str, choices: Sequence[str]) -> int | None:
    words = _words(text)
    if not words:
        return None
    hits = [i for i, choice in enumerate(choices) if _words(choice) == words]
    return hits[0] if hits else None


def _letter_index(letter: str, choices: Sequence[str]) -> int | None:
    index = ord(letter.lower()) - ord("a")
    return index if 0 <= index < len(choices) else None


def _by_tokens(text: str, choices: Sequence[str]) -> int | None:
    hits = [i for i, choice in enumerate(choices) if string_match(choice, text, choices)]
    if not hits:
        return None
    # Several hits are only possible when those choices have identical word sets; any of them scores the same.
    first = word_tokens(choices[hits[0]])
    return hits[0] if all(word_tokens(choices[i]) == first for i in hits) else None
