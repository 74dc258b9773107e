"""GRPO rollouts through echo's engine, and the trainer's recomputation of their log-probs.

``rollout`` sends every prompt of a step to the engine at once with ``n = group_size``: the n samples share the
prompt's KV blocks (copy-on-write), re-listen at every ``</seg>`` under the engine's span policy, and come back
with the exact sampled ids, their log-probs, and the mask that marks sampled tokens (inserted audio tokens and
the prompt are 0). ``response_logprobs`` runs the trainer's dense forward over the very same interleaved ids
(prompt + response, audio rows for the clip and every inserted span): no text is ever re-tokenized, and the
samples of one prompt share its pass through the model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..audio import FeatureConfig
from ..audio import load as load_audio
from ..config import SamplingParams
from ..engine.llm import Engine, Request
from ..models.attention import SharedPrefixAttention
from .rewards import Trajectory
from .rl_data import RLRecord


@dataclasses.dataclass(slots=True)
class Rollout:
    record: RLRecord
    group: int                 # index of its prompt in the step's batch
    prompt_ids: list[int]
    token_ids: list[int]       # everything after the prompt: sampled tokens and inserted audio tokens
    mask: list[int]            # 1 = sampled
    logprobs: list[float]      # one per sampled token, from the engine
    relistens: list
    text: str
    finish_reason: str
    num_samples: int           # length of the clip, in samples

    @property
    def spans(self) -> list[tuple[int, int]]:
        """(start, end) samples of every audio in the sequence: the clip, then each inserted re-listen."""
        return [(0, self.num_samples)] + [tuple(r.decision.applied_samples) for r in self.relistens if r.inserted]

    def trajectory(self, decode=None) -> Trajectory:
        return Trajectory(self.text, self.record.choices, self.record.answer, self.relistens,
                          self._answer_logprob(decode) if decode is not None else None, self.record.spans)

    def _answer_logprob(self, decode) -> float | None:
        """Log-prob of the first sampled token after ``<answer>`` (binary search over decoded prefixes)."""
        if "<answer>" not in self.text:
            return None
        lo, hi = 0, len(self.token_ids)
        while lo < hi:  # smallest j whose prefix already contains "<answer>"
            mid = (lo + hi) // 2
            if "<answer>" in decode(self.token_ids[:mid]):
                hi = mid
            else:
                lo = mid + 1
        sampled = np.cumsum(self.mask) - 1  # index into logprobs of each sampled token
        for j in range(lo, len(self.token_ids)):
            if self.mask[j]:
                return self.logprobs[int(sampled[j])]
        return None


def rollout(engine: Engine, records: list[RLRecord], group_size: int, params: SamplingParams,
            seeds: list[int], progress: bool = False) -> list[Rollout]:
    """``group_size`` samples of every record, group after group; sample i of record j is seeded ``seeds[j] + i``
    so a step's rollouts do not depend on how prompts are split over processes or on anything sampled before."""
    requests = [Request(r.audio, r.conversation(), dataclasses.replace(params, n=group_size, seed=seed, logprobs=True))
                for r, seed in zip(records, seeds)]
    out = []
    for j, (rec, res) in enumerate(zip(records, engine.generate(requests, progress=progress))):
        if res.error is not None:
            # GRPOTrainer.usable dropped every clip the engine refuses: a request error here is a bug
            raise RuntimeError(f"rollout of {rec.id}: {res.error}")
        for s in res.samples:
            out.append(Rollout(rec, j, res.prompt_token_ids, s.token_ids, s.mask, s.logprobs or [], s.relistens,
                               s.text, s.finish_reason, res.audio_samples))
    return out


def response_logprobs(model, rollouts: list[Rollout], features: FeatureConfig, waves: dict[str, torch.Tensor],
                      temperature: float = 1.0, grad_audio: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs ``(B, R)`` under ``model`` of every response token of each rollout (right-padded to the longest
    response R), and the mask ``(B, R)`` (1 on sampled tokens). ``log_softmax(logits / temperature)``, the policy
    the engine sampled from. ``waves`` caches each audio file's samples on the model's device.

    The rollouts of one prompt share it: it goes through the model once, each response attending to it as if
    appended to it alone (``SharedPrefixAttention``), so the log-probs are those of each sequence by itself."""
    device = model.device
    groups: dict[tuple, list[int]] = {}  # (clip, prompt ids) -> the rollouts that continue that prompt
    for b, r in enumerate(rollouts):
        groups.setdefault((r.record.audio, tuple(r.prompt_ids)), []).append(b)
    ids, lengths, parents, keys = [], [], [], []  # keys: (audio, start, end) of every audio, in reading order
    start = [0] * len(rollouts)  # where each response begins in the flat layout
    last_prompt = [0] * len(rollouts)  # the prompt's last token, which predicts the response's first
    for members in groups.values():
        first = rollouts[members[0]]
        root = len(lengths)
        lengths.append(len(first.prompt_ids))
        parents.append(None)
        keys.append((first.record.audio, *first.spans[0]))  # the clip: the prompt's one audio
        ids += first.prompt_ids
        prompt_end = len(ids) - 1
        for b in members:
            r = rollouts[b]
            last_prompt[b], start[b] = prompt_end, len(ids)
            lengths.append(len(r.token_ids))
            parents.append(root)
            keys += [(r.record.audio, s, e) for s, e in r.spans[1:]]  # its re-listens, spliced in the response
            ids += r.token_ids
        if first.record.audio not in waves:
            waves[first.record.audio] = torch.from_numpy(load_audio(first.record.audio)).to(device)
    # a group shares its clip and often its spans: encode each distinct span once, in one call
    distinct = list(dict.fromkeys(keys))
    audios = list(dict.fromkeys(a for a, _, _ in distinct))
    rows = dict(zip(distinct, model.embed_spans(features, [waves[a] for a in audios],
                                                [(audios.index(a), s, e) for a, s, e in distinct], grad=grad_audio)))
    embeds = model.embed(torch.tensor(ids, device=device), torch.cat([rows[k] for k in keys]))
    attention = SharedPrefixAttention(lengths, parents, device)
    hidden = model.forward_flat(embeds, attention.positions, attention)
    # logits only where a response token is predicted: the token before each one
    r_max = max(len(r.token_ids) for r in rollouts)
    index = torch.zeros(len(rollouts), r_max, dtype=torch.long, device=device)
    mask = torch.zeros(len(rollouts), r_max, device=device)
    targets = torch.zeros(len(rollouts), r_max, dtype=torch.long, device=device)
    for b, r in enumerate(rollouts):
        n = len(r.token_ids)
        index[b, :n] = torch.tensor([last_prompt[b]] + list(range(start[b], start[b] + n - 1)), device=device)[:n]
        mask[b, :n] = torch.tensor(r.mask, dtype=mask.dtype, device=device)
        targets[b, :n] = torch.tensor(r.token_ids, device=device)
    logits = model.compute_logits(hidden[index]).float() / temperature
    logits[..., model.config.audio_token_id] = float("-inf")  # never sampled (engine/sampler.py)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
    return torch.where(mask.bool(), logp, torch.zeros_like(logp)), mask  # spliced targets are -inf: not 0*inf


def old_logprobs(rollouts: list[Rollout], shape: tuple[int, int], device) -> torch.Tensor:
    """The engine's sampling log-probs laid out like ``response_logprobs`` (0 where the mask is 0)."""
    out = torch.zeros(shape, device=device)
    for b, r in enumerate(rollouts):
        where = torch.tensor(r.mask, dtype=torch.bool, device=device).nonzero()[:, 0]
        out[b, where] = torch.tensor(r.logprobs, dtype=out.dtype, device=device)
    return out
