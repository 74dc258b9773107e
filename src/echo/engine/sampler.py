"""Token sampling for one step: greedy, temperature, top-k, top-p, a generator per sequence, log-probs.

Log-probs are those of the policy the trainer recomputes: ``log_softmax(logits / temperature)`` of the model's
logits (temperature 1 when greedy), before logits processors and top-k/top-p truncation, so engine and trainer
agree on the sampled tokens' log-probs. ``never`` ids (the ``<|AUDIO|>`` placeholder: its rows come from the
encoder, so a sampled one would have no embedding) are removed from that policy itself, here and in the trainer.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..config import SamplingParams

# A logits processor sees the sequence's token ids so far and its next-token logits (vocab,), returns new logits.
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


def sample(logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None],
           histories: Sequence[list[int]], processors: Sequence[LogitsProcessor] = (), never: Sequence[int] = ()
           ) -> tuple[list[int], list[float]]:
    """Sample one token per row of ``logits`` (rows, vocab). Returns the tokens and their log-probs."""
    logits = logits.float()
    if never:
        logits = logits.index_fill(-1, torch.tensor(list(never), device=logits.device), float("-inf"))
    tokens, logprobs = [], []
    for row, p, gen, hist in zip(logits, params, generators, histories):
        temperature = p.temperature if p.temperature > 0 else 1.0
        policy = torch.log_softmax(row / temperature, dim=-1)
        x = row
        for proc in processors:
            x = proc(hist, x)
        if p.temperature == 0:
            token = int(torch.argmax(x))
        else:
            x = x / p.temperature
            if p.top_k > 0 and p.top_k < x.numel():
                kth = torch.topk(x, p.top_k).values[-1]
                x = x.masked_fill(x < kth, float("-inf"))
            if p.top_p < 1.0:
                sorted_x, order = torch.sort(x, descending=True)
                probs = torch.softmax(sorted_x, dim=-1)
                drop = probs.cumsum(-1) - probs > p.top_p  # keep the smallest prefix reaching top_p
                x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
            token = int(torch.multinomial(torch.softmax(x, dim=-1), 1, generator=gen))
        tokens.append(token)
        logprobs.append(float(policy[token]))
    return tokens, logprobs
