"""Sampling frequencies against the probabilities: temperature, top-k and top-p keep exactly the tokens they
should, and draw each in proportion to its renormalised probability (a chi-square bound far in the tail; the
seed is fixed, so the test is deterministic and the bound only guards against a real bias)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from echo.config import SamplingParams
from echo.engine.sampler import sample

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.6, 0.3, 0.0, -0.4, -1.0])
DRAWS = 20_000
# chi-square quantile 1 - 1e-6 for up to 7 degrees of freedom is ~40.5: a fair sampler exceeds it once in a
# million seeds; one that moves 2.5 points of probability between the top two tokens averages ~89
CHI2_BOUND = 41.0


def _expected(temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The distribution the parameters define, computed from the definitions (vLLM's): softmax of logits /
    temperature, keep the k largest, then the smallest most-probable prefix whose mass reaches top_p."""
    x = LOGITS.double().numpy() / temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, dtype=bool)
    keep[order[: top_k or len(p)]] = True
    p = np.where(keep, p, 0.0) / p[keep].sum()
    mass_before = np.cumsum(p[order]) - p[order]
    keep[order[mass_before >= top_p]] = False
    return np.where(keep, p, 0.0) / p[keep].sum()


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0),   # plain softmax
    (0.7, 3, 1.0),   # top-k alone, sharpened
    (1.3, 0, 0.8),   # top-p alone, flattened
    (1.0, 5, 0.9),   # both: k first, then p over what is left
])
def test_sampled_frequencies_match_the_probabilities(temperature, top_k, top_p):
    expected = _expected(temperature, top_k, top_p)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    gen = torch.Generator().manual_seed(1234)
    rows = LOGITS.expand(DRAWS, -1)
    tokens, logprobs = sample(rows, [params] * DRAWS, [gen] * DRAWS, [[]] * DRAWS)
    counts = np.bincount(np.array(tokens), minlength=len(LOGITS))

    kept = expected > 0
    assert counts[~kept].sum() == 0, f"tokens outside top-k/top-p were drawn: {np.flatnonzero(counts * ~kept)}"
    assert kept.sum() < len(LOGITS) or (top_k == 0 and top_p == 1.0)  # the truncating cases do truncate
    e = expected[kept] * DRAWS
    chi2 = float(((counts[kept] - e) ** 2 / e).sum())
    assert chi2 < CHI2_BOUND, f"chi-square {chi2:.1f} over {kept.sum()} tokens: counts {counts}, expected {e.round()}"
    # log-probs are the temperature policy's, untouched by truncation
    policy = torch.log_softmax(LOGITS / temperature, -1)
    assert np.allclose(logprobs, policy[torch.tensor(tokens)].numpy(), atol=1e-6)


def test_the_bound_catches_a_biased_sampler():
    """The same statistic on draws from a distribution with 2.5 points moved between two tokens fails the bound."""
    expected = _expected(1.0, 0, 1.0)
    biased = expected.copy()
    biased[0] -= 0.025
    biased[1] += 0.025
    counts = np.bincount(np.random.default_rng(0).choice(len(expected), DRAWS, p=biased), minlength=len(expected))
    e = expected * DRAWS
    assert float(((counts - e) ** 2 / e).sum()) > CHI2_BOUND
