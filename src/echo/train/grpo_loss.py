"""GRPO's arithmetic, as plain functions of tensors: group-normalised advantages and the clipped policy loss with
a KL penalty, aggregated over generated tokens only.

Shapes: ``(num_trajectories, response_len)`` for per-token tensors; ``mask`` is 1 on sampled tokens and 0 on
inserted audio tokens and padding (the prompt is never part of the response tensors), so neither the policy loss
nor the KL nor the denominator sees a token the policy did not choose.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

LossAgg = Literal["token-mean", "seq-mean-token-mean"]


def group_advantages(rewards: torch.Tensor, group_size: int, std_normalize: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """``(r - mean(group)) / (std(group) + eps)`` per trajectory; rewards are laid out group after group.
    std is the unbiased one (verl's GRPO); a group of one has advantage 0."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)
    if group_size == 1:
        return torch.zeros_like(rewards, dtype=torch.float32)
    adv = r - r.mean(dim=1, keepdim=True)
    if std_normalize:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The low-variance KL estimator ``exp(ref - logp) - (ref - logp) - 1`` (>= 0), clamped to [-10, 10]."""
    d = (ref_logp - logp).clamp(-20, 20)
    return (torch.exp(d) - d - 1).clamp(-10, 10)


@dataclasses.dataclass(slots=True)
class PolicyLossConfig:
    clip_ratio: float = 0.2     # PPO's epsilon: the ratio is clipped to [1 - eps, 1 + eps]
    dual_clip: float = 3.0      # for negative advantages the loss is capped at -A * dual_clip (None: off)
    kl_coef: float = 0.04       # weight of the k3 KL to the reference model (0: no reference model needed)
    loss_agg: LossAgg = "token-mean"


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cfg: PolicyLossConfig | None = None, ref_logp: torch.Tensor | None = None,
                num_tokens: float | None = None, num_seqs: float | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped (and dual-clipped) importance-weighted policy loss plus ``kl_coef`` * k3 KL.

    ``num_tokens`` / ``num_seqs`` are the aggregation denominators of the whole mini-batch (all micro-batches, all
    processes) so that micro-batching and data parallelism give the loss of one big batch; they default to this
    call's own counts. Returns the loss and float metrics (pg_loss, kl, clip_frac, ratio_mean, tokens)."""
    cfg = cfg or PolicyLossConfig()
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)[:, None]
    ratio = torch.exp((logp - old_logp).clamp(-20, 20))
    unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio)
    pg = torch.maximum(unclipped, clipped)
    if cfg.dual_clip is not None:
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * cfg.dual_clip), pg)
    per_token = pg
    kl = None
    if cfg.kl_coef and ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        per_token = pg + cfg.kl_coef * kl
    n_tok = float(mask.sum()) if num_tokens is None else float(num_tokens)
    if cfg.loss_agg == "token-mean":
        loss = (per_token * mask).sum() / max(n_tok, 1.0)
    elif cfg.loss_agg == "seq-mean-token-mean":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        loss = per_seq.sum() / (float(mask.shape[0]) if num_seqs is None else float(num_seqs))
    else:
        raise ValueError(f"loss_agg must be 'token-mean' or 'seq-mean-token-mean', got {cfg.loss_agg!r}")
    with torch.no_grad():
        denom = float(mask.sum().clamp_min(1.0))
        metrics = {"pg_loss": float((pg * mask).sum()) / denom,
                   "clip_frac": float((((ratio - 1).abs() > cfg.clip_ratio).to(mask.dtype) * mask).sum()) / denom,
                   "ratio_mean": float((ratio * mask).sum()) / denom, "tokens": float(mask.sum())}
        if kl is not None:
            metrics["kl"] = float((kl * mask).sum()) / denom
    return loss, metrics
