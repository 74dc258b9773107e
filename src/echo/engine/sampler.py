"""Token sampling for one step: greedy, temperature, top-k, top-p, a generator per sequence, log-probs.

Log-probs are those of the policy the trainer recomputes: ``log_softmax(logits / temperature)`` of the model's
logits (temperature 1 when greedy), before logits processors and top-k/top-p truncation, so engine and trainer
agree on the sampled tokens' log-probs. ``never`` ids (the ``<|AUDIO|>`` placeholder: its rows come from the
encoder, so a sampled one would have no embedding) are removed from that policy itself, here and in the trainer.

A row that cannot be sampled from (NaN or +inf logits, nothing left with a finite logit, a logits processor that
raises or returns something other than a finite (vocab,) tensor) gets token None and its reason in ``errors``;
the other rows are sampled as usual, so one sequence's garbage never fails the step.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..config import SamplingParams

# A logits processor sees the sequence's token ids so far and its next-token logits (vocab,), returns new logits.
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


def sample(logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None],
           histories: Sequence[list[int]], processors: Sequence[LogitsProcessor] = (), never: Sequence[int] = (),
           errors: list[str | None] | None = None) -> tuple[list[int | None], list[float]]:
    """Sample one token per row of ``logits`` (rows, vocab). Returns the tokens and their log-probs; a row that
    cannot be sampled gets token None (log-prob NaN) and, when ``errors`` is given, its reason appended there
    (None for the rows that sampled)."""
    logits = logits.float()
    if never:
        logits = logits.index_fill(-1, torch.tensor(list(never), device=logits.device), float("-inf"))
    # one reduction (one device sync) checks every row of the model's logits: a row's max is NaN if any logit is
    # NaN, +inf if any is +inf, -inf if none is finite
    broken = ~torch.isfinite(logits.amax(-1))
    bad_rows = broken.tolist()
    greedy = _greedy_rows(logits, params, bad_rows) if not processors else {}
    tokens, logprobs = [], []
    for i, (row, p, gen, hist, bad) in enumerate(zip(logits, params, generators, histories, bad_rows)):
        try:
            if bad:
                _check(row, "the model's logits", row.numel())
            token, logprob = greedy[i] if i in greedy else _sample_row(row, p, gen, hist, processors, never)
            reason = None
        except _Unsampleable as exc:
            token, logprob, reason = None, float("nan"), str(exc)
        tokens.append(token)
        logprobs.append(logprob)
        if errors is not None:
            errors.append(reason)
    return tokens, logprobs


def _greedy_rows(logits: torch.Tensor, params: Sequence[SamplingParams], bad: list[bool]) -> dict[int, tuple]:
    """Row index -> (token, log-prob) for the sound greedy rows, in one argmax and one log_softmax over all of them
    (what ``_sample_row`` gives each alone, without a per-row loop of small ops)."""
    rows = [i for i, (p, b) in enumerate(zip(params, bad)) if p.temperature == 0 and not b]
    if not rows:
        return {}
    x = logits[torch.tensor(rows, device=logits.device)] if len(rows) < len(logits) else logits
    token = torch.argmax(x, dim=-1)
    logprob = torch.log_softmax(x, dim=-1).gather(-1, token[:, None])[:, 0]
    return dict(zip(rows, zip(token.tolist(), logprob.tolist())))


class _Unsampleable(Exception):
    pass


def _check(x, what: str, vocab: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.shape != (vocab,) or not x.dtype.is_floating_point:
        raise _Unsampleable(f"{what} must be a float tensor of shape ({vocab},), got "
                            f"{type(x).__name__ if not isinstance(x, torch.Tensor) else f'{x.dtype} {tuple(x.shape)}'}")
    if bool(torch.isnan(x).any()) or bool(torch.isposinf(x).any()):
        raise _Unsampleable(f"{what} hold NaN or +inf")
    if not bool(torch.isfinite(x).any()):
        raise _Unsampleable(f"{what} leave no token with a finite logit")
    return x


def _greedy(x, policy) -> tuple[int, float]:
    token = int(torch.argmax(x))
    return token, float(policy[token])


def _sample_row(row, p: SamplingParams, gen, hist, processors, never) -> tuple[int, float]:
    vocab = row.numel()
    temperature = p.temperature if p.temperature > 0 else 1.0
    policy = torch.log_softmax(row / temperature, dim=-1)
    x = row
    for proc in processors:
        try:
            x = proc(hist, x)
        except Exception as exc:  # a user's processor: its failure ends this sequence, not the step
            raise _Unsampleable(f"logits processor {getattr(proc, '__name__', type(proc).__name__)} raised "
                                f"{type(exc).__name__}: {exc}") from exc
        x = _check(x, "the logits processor's logits", vocab).float()
    if never and processors:  # a processor must not bring back a token that has no embedding
        x = x.index_fill(-1, torch.tensor(list(never), device=x.device), float("-inf"))
        _check(x, "the logits processor's logits", vocab)
    if p.temperature == 0:
        return _greedy(x, policy)
    x = x / p.temperature
    if bool(torch.isposinf(x).any()):  # a tiny temperature overflowed: its limit, greedy
        return _greedy(x, policy)
    if p.top_k > 0 and p.top_k < x.numel():
        kth = torch.topk(x, p.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        drop = probs.cumsum(-1) - probs > p.top_p  # keep the smallest prefix reaching top_p
        x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    token = int(torch.multinomial(torch.softmax(x, dim=-1), 1, generator=gen))
    return token, float(policy[token])
