"""No-audio baselines: how well a split's questions can be answered without hearing anything (``echo data audit``).

A model that scores above uniform chance has not shown that it listens unless it also beats what the text alone
gives away. Three guessers that never see the audio are fitted on one split and scored on another, per family:

- **position prior**: always the answer position most often right when fitted;
- **answer-text prior**: the choice whose text was right most often when offered (Laplace-smoothed; ties share
  their credit, so the figure is the expected accuracy of breaking them at random);
- **text classifier**: a conditional logistic regression over each item's choices, on hashed word features of the
  choice (unigrams, bigrams), where the choice's words fall in the question (named first, second, not named), its
  rank among numeric choices, and its position. It learns any mix of the above and more (a name that predicts
  "longer", a count that is the middle of the offered ones).

With a train split the guessers are fitted on it and scored on the audited split; without one they are scored by
``folds``-fold cross-validation within the split (every item predicted by a model that never saw it). The two see
different leaks: only the first sees what a model trained on train could carry over; only the second sees a prior
that holds within one split (distractors drawn from other splits' sounds are never right, which a guesser fitted
on train cannot know), so ``echo data synth`` audits each split it writes alone and ``echo data audit`` a pair. A family
leaks when its best baseline is more than ``margin`` above uniform chance *and* more than a uniform guesser reaches
by luck (one-sided binomial p < ``alpha``): on 72 items one standard deviation is 5 points, so the margin alone
would flag fair families by noise. Families with fewer than ``min_items`` items are reported but not judged.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from ..stats import binomial_tail, uniform_chance, wilson
from .item import QuestionItem

BASELINES = ("position prior", "answer-text prior", "text classifier")
MARGIN = 0.05  # a family leaks when its best baseline is more than this far above uniform chance...
ALPHA = 0.01  # ...and a uniform guesser does as well less often than this
MIN_ITEMS = 30  # fewer audited items in a family: reported, not judged
FOLDS = 5
_DIM = 1 << 12  # hashed feature width
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_STOP = {"a", "an", "the", "of", "at", "s", "is", "in", "them"}


class LeakWarning(UserWarning):
    """A split whose answers can be guessed without the audio (``echo data synth`` warns with it)."""


@dataclass(slots=True)
class FamilyAudit:
    """One family's baselines (fractions of its audited items)."""

    family: str
    items: int
    chance: float
    baselines: dict[str, float]
    best: str
    judged: bool
    passes: bool
    ci95: tuple[float, float] = (0.0, 0.0)  # the best baseline's Wilson interval
    p_above_chance: float = 1.0  # how often a uniform guesser would do as well as the best baseline

    @property
    def best_accuracy(self) -> float:
        return self.baselines[self.best]


@dataclass(slots=True)
class AuditReport:
    fitted_on: str  # "train split (N items)" or "5-fold cross-validation"
    margin: float
    alpha: float = ALPHA
    families: list[FamilyAudit] = field(default_factory=list)

    @property
    def failing(self) -> list[FamilyAudit]:
        return [f for f in self.families if f.judged and not f.passes]

    @property
    def passes(self) -> bool:
        return not self.failing

    @property
    def items(self) -> int:
        return sum(f.items for f in self.families)

    @property
    def chance(self) -> float:
        """Uniform chance over all audited items."""
        return sum(f.chance * f.items for f in self.families) / self.items if self.items else 0.0

    @property
    def best(self) -> float:
        """The best no-audio guesser over all items: each family answered by its own best baseline (the question's
        wording tells the family, so a guesser can choose)."""
        return sum(f.best_accuracy * f.items for f in self.families) / self.items if self.items else 0.0

    def as_dict(self) -> dict:
        return {"fitted_on": self.fitted_on, "margin": self.margin, "alpha": self.alpha, "passes": self.passes,
                "items": self.items, "chance": self.chance, "best_no_audio": self.best,
                "failing": [f.family for f in self.failing],
                "families": {f.family: {k: v for k, v in asdict(f).items() if k != "family"} for f in self.families}}

    def warning(self) -> str | None:
        """One line naming every failing family with its best baseline, or None when the split passes."""
        if self.passes:
            return None
        parts = [f"{f.family}: {f.best} {100 * f.best_accuracy:.1f}% vs chance {100 * f.chance:.1f}% "
                 f"(p = {f.p_above_chance:.1g})" for f in self.failing]
        return (f"answers can be guessed without the audio (best no-audio baseline more than "
                f"{100 * self.margin:.0f} points above uniform chance, p < {self.alpha:g}) in {len(parts)} famil"
                f"{'y' if len(parts) == 1 else 'ies'}: " + "; ".join(parts))

    def markdown(self) -> str:
        head = ("| family | items | uniform chance % | " + " | ".join(f"{b} %" for b in BASELINES)
                + " | best (95% CI) | p | verdict |")
        lines = [f"No-audio baselines, fitted on {self.fitted_on}. A family leaks when its best baseline is more than "
                 f"{100 * self.margin:.0f} points above uniform chance and a uniform guesser would do as well with "
                 f"p < {self.alpha:g} (p: one-sided binomial).", "", head,
                 "|" + "---|" * (head.count("|") - 1)]
        for f in self.families:
            verdict = ("pass" if f.passes else "**LEAK**") if f.judged else f"not judged (< {MIN_ITEMS} items)"
            lo, hi = f.ci95
            lines.append(f"| {f.family} | {f.items} | {100 * f.chance:.1f} | "
                         + " | ".join(f"{100 * f.baselines[b]:.1f}" for b in BASELINES)
                         + f" | {100 * f.best_accuracy:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | "
                         f"{f.p_above_chance:.2g} | {verdict} |")
        lines.append(f"| all (each family by its best) | {self.items} | {100 * self.chance:.1f} | | | | "
                     f"{100 * self.best:.1f} | | {'pass' if self.passes else '**LEAK**'} |")
        return "\n".join(lines)


def audit(items: Sequence[QuestionItem], train: Sequence[QuestionItem] | None = None, *,
          margin: float = MARGIN, alpha: float = ALPHA, min_items: int = MIN_ITEMS, folds: int = FOLDS) -> AuditReport:
    """The no-audio baselines of ``items`` per family (``task``), fitted on ``train`` or cross-validated."""
    scored = [it for it in items if it.answer is not None and it.answer in it.choices]
    fitted_on = f"the train split ({len(train)} items)" if train is not None else f"{folds}-fold cross-validation"
    report = AuditReport(fitted_on, margin, alpha)
    by_family: dict[str, list[QuestionItem]] = defaultdict(list)
    for it in scored:
        by_family[it.task or "all"].append(it)
    train_by_family: dict[str, list[QuestionItem]] = defaultdict(list)
    for it in train or ():
        if it.answer is not None and it.answer in it.choices:
            train_by_family[it.task or "all"].append(it)
    for family, test in sorted(by_family.items()):
        if train is not None:
            credit = _credit(train_by_family.get(family, []), test)
        else:
            credit = {b: np.zeros(len(test)) for b in BASELINES}
            for k in range(min(folds, len(test))):
                held = [i for i in range(len(test)) if i % folds == k]
                fit = [test[i] for i in range(len(test)) if i % folds != k]
                for b, c in _credit(fit, [test[i] for i in held]).items():
                    credit[b][held] = c
        accuracy = {b: float(np.mean(c)) for b, c in credit.items()}
        best = max(BASELINES, key=lambda b: accuracy[b])
        chance = uniform_chance([it.choices for it in test])
        correct = int(round(accuracy[best] * len(test)))
        judged, p = len(test) >= min_items, binomial_tail(correct, len(test), chance)
        leaks = accuracy[best] > chance + margin + 1e-9 and p < alpha
        report.families.append(FamilyAudit(family, len(test), chance, accuracy, best, judged, not leaks,
                                           wilson(correct, len(test)), p))
    return report


def _credit(fit: Sequence[QuestionItem], test: Sequence[QuestionItem]) -> dict[str, np.ndarray]:
    """Each baseline's credit (1, 0, or a share for ties) on each ``test`` item, fitted on ``fit``."""
    positions = Counter(it.choices.index(it.answer) for it in fit)
    top = max(positions.values(), default=0)
    likely = {p for p, n in positions.items() if n == top} if fit else set()
    right, offered = Counter(), Counter()
    for it in fit:
        right[_norm(it.answer)] += 1
        offered.update(_norm(c) for c in it.choices)
    clf = _Classifier.fit(fit)
    out = {b: np.zeros(len(test)) for b in BASELINES}
    for n, it in enumerate(test):
        k, truth = len(it.choices), it.choices.index(it.answer)
        guesses = {p for p in likely if p < k} or set(range(k))  # nothing fitted: a uniform guess
        out["position prior"][n] = (truth in guesses) / len(guesses)
        rate = [(right[_norm(c)] + 1) / (offered[_norm(c)] + k) for c in it.choices]
        ties = [i for i, r in enumerate(rate) if r == max(rate)]
        out["answer-text prior"][n] = (truth in ties) / len(ties)
        scores = clf.scores(it)
        ties = [i for i, s in enumerate(scores) if s >= max(scores) - 1e-9]
        out["text classifier"][n] = (truth in ties) / len(ties)
    return out


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(str(text).lower()))


def _number(text: str) -> float | None:
    found = re.findall(r"-?\d+(?:\.\d+)?", str(text))
    return float(found[0]) if len(found) == 1 else None


def _hash(feature: str) -> int:
    return zlib.crc32(feature.encode()) % _DIM  # stable across runs (Python's hash() is salted)


def _features(item: QuestionItem) -> np.ndarray:
    """``(choices, _DIM)``: hashed word, question-naming, numeric-rank and position features of each choice."""
    q_words = _WORD.findall(item.question.lower())
    numbers = [_number(c) for c in item.choices]
    numeric = all(v is not None for v in numbers)
    ranks = np.argsort(np.argsort(numbers)) if numeric else None
    words = [_WORD.findall(str(c).lower()) for c in item.choices]
    # where each choice is named in the question: its first content word's place there, if any
    named_at = [min((q_words.index(w) for w in ws if w not in _STOP and w in q_words), default=None) for ws in words]
    first_named = min((p for p in named_at if p is not None), default=None)
    x = np.zeros((len(item.choices), _DIM), dtype=np.float32)
    for i, ws in enumerate(words):
        feats = [f"w:{w}" for w in ws] + [f"b:{a}_{b}" for a, b in zip(ws, ws[1:])]
        feats.append("named:none" if named_at[i] is None else
                     "named:first" if named_at[i] == first_named else "named:later")
        feats.append(f"pos:{i}")
        feats.append(f"len:{min(len(ws), 8)}")
        if numeric:
            feats += [f"rank:{ranks[i]}", f"rank_from_top:{len(item.choices) - 1 - ranks[i]}"]
        for f in feats:
            x[i, _hash(f)] += 1.0
    return x


@dataclass(slots=True)
class _Classifier:
    """A conditional logit: softmax over an item's choices of ``features @ w``, fitted by Adam with L2."""

    w: np.ndarray | None

    @classmethod
    def fit(cls, items: Sequence[QuestionItem], steps: int = 150, lr: float = 0.1, l2: float = 1e-3) -> "_Classifier":
        if not items:
            return cls(None)
        feats = [_features(it) for it in items]
        k = max(f.shape[0] for f in feats)
        x = np.zeros((len(items), k, _DIM), dtype=np.float32)
        valid = np.zeros((len(items), k), dtype=bool)
        for n, f in enumerate(feats):
            x[n, : f.shape[0]], valid[n, : f.shape[0]] = f, True
        y = np.array([it.choices.index(it.answer) for it in items])
        w, m, v = (np.zeros(_DIM, dtype=np.float64) for _ in range(3))
        rows = np.arange(len(items))
        for t in range(1, steps + 1):
            logits = np.where(valid, x @ w, -np.inf)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[rows, y] -= 1.0  # d(-log softmax)/d logits
            grad = np.einsum("nk,nkd->d", p, x) / len(items) + l2 * w
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            w -= lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        return cls(w)

    def scores(self, item: QuestionItem) -> list[float]:
        if self.w is None:
            return [0.0] * len(item.choices)
        return [float(s) for s in _features(item) @ self.w]
