"""GRPO reward terms: small named functions of one finished trajectory, combined with weights, each logged.

A term is any ``fn(trajectory) -> float``; ``RewardFn([("format", format_reward, 0.5), ...])`` sums them with
their weights and returns every term's value for the log. Users add their own terms the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

from ..eval.answers import extract_answer

_THINK = re.compile(r"<think>.*?</think>", re.S)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_BAD_AFTER_SEG = re.compile(r"</seg>(?=[A-Z<])")  # "</seg>The" or "</seg><seg>"; "</seg> The" is fine


@dataclasses.dataclass(slots=True)
class Trajectory:
    """What a reward sees of one rollout. ``relistens`` are the engine's records; ``answer_token_logprob`` is the
    log-prob of the first token inside ``<answer>`` (for the confidence-shaped term), when known."""

    text: str
    choices: Sequence[str]
    answer: str
    relistens: Sequence = ()
    answer_token_logprob: float | None = None


def format_reward(t: Trajectory) -> float:
    """1 when the text has exactly one <think>…</think> and exactly one <answer>…</answer>, after the thinking."""
    thinks, answers = _THINK.findall(t.text), list(_ANSWER.finditer(t.text))
    if len(thinks) != 1 or len(answers) != 1 or t.text.count("<answer>") != 1 or t.text.count("<think>") != 1:
        return 0.0
    return 1.0 if t.text.index("</think>") < answers[0].start() else 0.0


def is_correct(t: Trajectory) -> bool:
    """The extracted answer (echo's extraction: tags, letters, choice text; never a guess) is the right choice."""
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


Term = tuple[str, Callable[[Trajectory], float], float]
DEFAULT_TERMS: list[Term] = [("format", format_reward, 0.5), ("accuracy", accuracy_reward, 1.0),
                             ("relisten", relisten_reward, 0.5), ("consistency", consistency_reward, 0.5)]


class RewardFn:
    def __init__(self, terms: Sequence[Term] = DEFAULT_TERMS):
        names = [n for n, _, _ in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"reward term names must be unique, got {names}")
        self.terms = list(terms)

    def __call__(self, t: Trajectory) -> tuple[float, dict[str, float]]:
        """The weighted total and every term's unweighted value."""
        values = {name: float(fn(t)) for name, fn, _ in self.terms}
        return sum(w * values[name] for name, _, w in self.terms), values
