"""echo.stats against exact sums (fractions) and at sizes where a float sum of comb(n, i) terms overflows."""

import math
from fractions import Fraction

import pytest

from echo.stats import binomial_tail


def exact_tail(correct: int, total: int, p: Fraction) -> float:
    return float(sum(math.comb(total, i) * p ** i * (1 - p) ** (total - i) for i in range(max(correct, 0), total + 1)))


@pytest.mark.parametrize("correct,total,p", [(0, 10, "1/4"), (1, 1, "1/2"), (3, 10, "1/4"), (10, 10, "1/3"),
                                             (7, 20, "1/4"), (60, 200, "1/4"), (11, 10, "1/4")])
def test_binomial_tail_equals_the_exact_sum(correct, total, p):
    assert binomial_tail(correct, total, float(Fraction(p))) == pytest.approx(exact_tail(correct, total, Fraction(p)),
                                                                              rel=1e-9, abs=1e-300)


def test_binomial_tail_on_thousands_of_items():
    """An audit of a 2,400-item split asked this and overflowed; the exact value is a fraction's float."""
    assert binomial_tail(650, 2400, 0.25) == pytest.approx(exact_tail(650, 2400, Fraction(1, 4)), rel=1e-9)
    assert binomial_tail(1200, 5000, 0.25) == pytest.approx(exact_tail(1200, 5000, Fraction(1, 4)), rel=1e-9)
    assert binomial_tail(4000, 5000, 0.25) < 1e-300 or binomial_tail(4000, 5000, 0.25) == 0.0


@pytest.mark.parametrize("p,expected", [(0.0, 0.0), (1.0, 1.0)])
def test_binomial_tail_at_certain_rates(p, expected):
    assert binomial_tail(3, 10, p) == expected
    assert binomial_tail(0, 10, p) == 1.0
