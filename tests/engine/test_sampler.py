"""The sampler: greedy/temperature/top-k/top-p pick from the processed logits, log-probs come from the policy
(temperature-scaled raw logits), and ``never`` ids are removed from both."""

from __future__ import annotations

import math

import pytest
import torch

from echo.config import SamplingParams
from echo.engine.sampler import sample


def test_never_ids_are_not_sampled_and_leave_the_policy():
    logits = torch.tensor([[0.0, 1.0, 9.0, 0.5]])  # id 2 (say <|AUDIO|>) dominates
    gens = [torch.Generator().manual_seed(i) for i in range(50)]
    for gen in gens:
        [token], [lp] = sample(logits, [SamplingParams(temperature=1.0)], [gen], [[]], never=[2])
        assert token != 2
        rest = torch.tensor([0.0, 1.0, 0.5])
        assert math.isclose(lp, float(rest[[0, 1, 3].index(token)] - torch.logsumexp(rest, 0)), abs_tol=1e-6)
    [token], _ = sample(logits, [SamplingParams(temperature=0.0)], [None], [[]], never=[2])
    assert token == 1


def test_logprobs_are_the_temperature_policy_before_processors_and_truncation():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    only_last = lambda hist, x: torch.where(torch.arange(4) == 3, x, torch.full_like(x, float("-inf")))  # noqa: E731
    [token], [lp] = sample(logits, [SamplingParams(temperature=0.5, top_k=2)], [torch.Generator().manual_seed(0)],
                           [[]], [only_last])
    assert token == 3  # the processor forces it (top-k then sees only it)
    assert math.isclose(lp, float(torch.log_softmax(logits[0] / 0.5, 0)[3]), abs_tol=1e-6)


@pytest.mark.parametrize("poison,reason", [
    (float("nan"), "the model's logits hold NaN or +inf"),
    (float("inf"), "the model's logits hold NaN or +inf"),
    (float("-inf"), "the model's logits leave no token with a finite logit"),
])
def test_an_unsampleable_row_ends_alone(poison, reason):
    """A row the model filled with NaN/inf gets no token (and its reason); the other rows sample as if alone."""
    logits = torch.randn(3, 16)
    logits[1] = poison
    params = [SamplingParams(temperature=1.0)] * 3
    errors = []
    tokens, logprobs = sample(logits, params, [torch.Generator().manual_seed(i) for i in range(3)], [[]] * 3,
                              errors=errors)
    assert tokens[1] is None and errors == [None, reason, None]
    for i in (0, 2):
        [alone], [lp] = sample(logits[i : i + 1], params[:1], [torch.Generator().manual_seed(i)], [[]])
        assert tokens[i] == alone and logprobs[i] == lp


def test_greedy_rows_of_a_batch_equal_each_row_sampled_alone():
    torch.manual_seed(1)
    logits = torch.randn(7, 50) * 3
    logits[2, 5] = float("nan")  # an unsampleable row among them stays alone
    params = [SamplingParams(temperature=0.0 if i % 3 else 0.8, seed=i) for i in range(7)]
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(7)]  # noqa: E731
    errors: list = []
    tokens, lps = sample(logits, params, gens(), [[]] * 7, never=[4], errors=errors)
    for i, gen in enumerate(gens()):
        alone_errors: list = []
        [token], [lp] = sample(logits[i:i + 1], params[i:i + 1], [gen], [[]], never=[4], errors=alone_errors)
        assert (tokens[i], errors[i]) == (token, alone_errors[0]) and token != 4
        assert (math.isnan(lp) and math.isnan(lps[i])) or math.isclose(lps[i], lp, rel_tol=0, abs_tol=1e-6)
    assert tokens[2] is None and "NaN" in errors[2] and tokens[1] == int(torch.argmax(logits[1]))


def test_sampled_rows_with_mixed_settings_equal_each_row_sampled_alone():
    """The batched pick (one pass over all rows, with per-row temperature, top-k and top-p) gives each row the
    token and log-prob it gets alone from the same generator state."""
    torch.manual_seed(2)
    logits = torch.randn(9, 300) * 2
    settings = [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.3, 7, 1.0), (1.0, 0, 0.6), (0.8, 20, 0.9), (2.0, 299, 0.99),
                (1.0, 1, 1.0), (0.05, 0, 0.5), (1.0, 300, 1.0)]
    params = [SamplingParams(temperature=t, top_k=k, top_p=p) for t, k, p in settings]
    for seed in range(5):
        gens = lambda: [torch.Generator().manual_seed(seed * 100 + i) for i in range(9)]  # noqa: E731
        tokens, lps = sample(logits, params, gens(), [[]] * 9)
        for i, gen in enumerate(gens()):
            [token], [lp] = sample(logits[i:i + 1], params[i:i + 1], [gen], [[]])
            assert tokens[i] == token and math.isclose(lps[i], lp, rel_tol=0, abs_tol=1e-6)
        assert tokens[6] == int(torch.argmax(logits[6]))  # top-k 1 is greedy
        top7 = set(torch.topk(logits[2], 7).indices.tolist())
        assert tokens[2] in top7
