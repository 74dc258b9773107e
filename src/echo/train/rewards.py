"""GRPO reward terms: small named functions of one finished trajectory, combined with weights, each logged.

A term is any ``fn(trajectory) -> float``; ``RewardFn([("format", format_reward, 0.5), ...])`` sums them with
their weights and returns every term's value for the log. Users add their own terms the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

from ..answers import extract_answer
from ..protocol import (ANSWER_BLOCK, ANSWER_OPEN, SEG_CLOSE, THINK_BLOCK, THINK_CLOSE, THINK_OPEN,
                        cited_span_ious)

_BAD_AFTER_SEG = re.compile(re.escape(SEG_CLOSE) + r"(?=[A-Z<])")  # "</seg>The" or "</seg><seg>"; "</seg> The" is fine


@dataclasses.dataclass(slots=True)
class Trajectory:
    """What a reward sees of one rollout. ``relistens`` are the engine's records; ``answer_token_logprob`` is the
    log-prob of the first token inside ``<answer>`` (for the confidence-shaped term), when known; ``spans`` the
    record's ground-truth ``(start_s, end_s)`` spans, when its data has them (for the span IoU term)."""

    text: str
    choices: Sequence[str]
    answer: str
    relistens: Sequence = ()
    answer_token_logprob: float | None = None
    spans: Sequence[tuple[float, float]] = ()


def format_reward(t: Trajectory) -> float:
    """1 when the text has exactly one <think>…</think> and exactly one <answer>…</answer>, after the thinking."""
    thinks, answers = THINK_BLOCK.findall(t.text), list(ANSWER_BLOCK.finditer(t.text))
    if len(thinks) != 1 or len(answers) != 1 or t.text.count(ANSWER_OPEN) != 1 or t.text.count(THINK_OPEN) != 1:
        return 0.0
    return 1.0 if t.text.index(THINK_CLOSE) < answers[0].start() else 0.0


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def is_correct(t: Trajectory) -> bool:
    """The extracted answer (echo's extraction: tags, letters, choice text; never a guess) is the right choice.
    Without choices (open questions), the ``<answer>`` text equals the answer after lower-casing and dropping
    punctuation."""
    if not t.choices:
        answers = ANSWER_BLOCK.findall(t.text)
        return len(answers) == 1 and _normalise(answers[0]) == _normalise(str(t.answer))
    picked = extract_answer(t.text, t.choices)
    i = picked.choice_index
    return i is not None and str(t.choices[i]).strip().lower() == str(t.answer).strip().lower()


def accuracy_reward(t: Trajectory) -> float:
    return 1.0 if is_correct(t) else 0.0


def relisten_reward(t: Trajectory) -> float:
    """Paid only when audio was actually re-listened (a span inserted) and the answer is right; writing tags that
    were skipped earns nothing."""
    listened = any(r.inserted for r in t.relistens)
    return 1.0 if listened and is_correct(t) else 0.0


def consistency_reward(t: Trajectory) -> float:
    """-1 when a ``</seg>`` is followed directly by an uppercase letter or ``<`` (the reference's penalty)."""
    return -1.0 if _BAD_AFTER_SEG.search(t.text) else 0.0


def confidence_accuracy_reward(t: Trajectory) -> float:
    """Accuracy shaped by confidence: the probability of the decisive answer token when right, minus it when
    wrong (0 when that log-prob is unknown)."""
    if t.answer_token_logprob is None:
        return 0.0
    p = math.exp(t.answer_token_logprob)
    return p if is_correct(t) else -p


def span_iou_reward(t: Trajectory) -> float:
    """How well the cited spans land on the ground truth: each ``<seg>`` span's best IoU with a ground-truth span,
    averaged over the cited spans (the eval's span IoU, per trajectory), so a span far from every event lowers it.
    0 when nothing is cited or the record has no ground-truth spans."""
    ious = cited_span_ious(t.text, t.spans)
    return sum(ious) / len(ious) if ious else 0.0


Term = tuple[str, Callable[[Trajectory], float], float]
DEFAULT_TERMS: list[Term] = [("format", format_reward, 0.5), ("accuracy", accuracy_reward, 1.0),
                             ("relisten", relisten_reward, 0.5), ("consistency", consistency_reward, 0.5)]


class RewardFn:
    def __init__(self, terms: Sequence[Term] = DEFAULT_TERMS):
        names = [n for n, _, _ in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"reward term names must be unique, got {names}")
        self.terms = list(terms)

    @classmethod
    def from_specs(cls, specs: Sequence[str] | None) -> RewardFn:
        """The terms ``parse_terms`` reads from ``specs``; echo's default terms when there are none."""
        return cls(parse_terms(specs) if specs else DEFAULT_TERMS)

    def __call__(self, t: Trajectory) -> tuple[float, dict[str, float]]:
        """The weighted total and every term's unweighted value."""
        values = {name: float(fn(t)) for name, fn, _ in self.terms}
        return sum(w * values[name] for name, _, w in self.terms), values


BUILTIN = {"format": format_reward, "accuracy": accuracy_reward, "relisten": relisten_reward,
           "consistency": consistency_reward, "confidence": confidence_accuracy_reward, "span_iou": span_iou_reward}


def parse_terms(specs: Sequence[str]) -> list[Term]:
    """``["accuracy=1", "format=0.5", "mypkg.rewards:brevity=0.1"]`` -> terms: a built-in name or a
    ``module:function`` taking a Trajectory, each with its weight."""
    import importlib

    terms = []
    for spec in specs:
        name, sep, weight = spec.rpartition("=")
        try:
            w = float(weight)
        except ValueError:
            w = None
        if not sep or not name or w is None:
            raise ValueError(f"reward term {spec!r}: expected NAME=WEIGHT (NAME one of {sorted(BUILTIN)} or "
                             f"module:function)")
        if name in BUILTIN:
            terms.append((name, BUILTIN[name], w))
            continue
        module, colon, attr = name.partition(":")
        if not colon:
            raise ValueError(f"reward term {name!r}: not a built-in ({sorted(BUILTIN)}) nor module:function")
        fn = getattr(importlib.import_module(module), attr, None)
        if not callable(fn):
            raise ValueError(f"reward term {name!r}: {module} has no function {attr}")
        terms.append((attr, fn, w))
    return terms
