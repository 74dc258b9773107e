"""The few statistics every yardstick reports: a binomial interval, a paired test, and uniform chance.

Pure Python (no numpy, no scipy): the data audit, ``echo eval`` and the experiment scripts all read them from here.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of ``correct / total`` (95% by default); ``(0, 0)`` for no items."""
    if not total:
        return 0.0, 0.0
    p = correct / total
    mid = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, mid - half), min(1.0, mid + half)


def mcnemar(mine: Mapping[str, bool], other: Mapping[str, bool]) -> tuple[int, int, float]:
    """``(items only mine gets right, items only other does, exact two-sided p)`` over the ids both have.

    The exact (binomial) McNemar test: under no difference, each discordant item goes either way with p = 1/2.
    """
    shared = mine.keys() & other.keys()
    gain = sum(bool(mine[k]) and not other[k] for k in shared)
    loss = sum(bool(other[k]) and not mine[k] for k in shared)
    n = gain + loss
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(gain, loss) + 1)) / 2 ** n) if n else 1.0
    return gain, loss, p


def uniform_chance(choices: Iterable[Sequence]) -> float:
    """The expected accuracy of picking one choice uniformly at random: the mean of ``1 / len(choices)``."""
    shares = [1.0 / len(c) for c in choices if len(c)]
    return sum(shares) / len(shares) if shares else 0.0


def binomial_tail(correct: int, total: int, p: float) -> float:
    """``P(X >= correct)`` for ``X ~ Binomial(total, p)``: how often a guesser at rate ``p`` does this well."""
    if correct <= 0:
        return 1.0
    if correct > total:
        return 0.0
    if p <= 0.0 or p >= 1.0:
        return float(p >= 1.0)
    # in logs: comb(total, i) overflows a float from a few thousand items on
    logs = [math.lgamma(total + 1) - math.lgamma(i + 1) - math.lgamma(total - i + 1) + i * math.log(p)
            + (total - i) * math.log1p(-p) for i in range(correct, total + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(x - top) for x in logs))
