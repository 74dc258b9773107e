"""One GRPO step on the ~108M-parameter CPU config (omni-bench), one 10 s question, a group of 8.

The step's time split (rollout through echo's engine, the reference model's log-probs, the policy update), then
the same 8 trajectories rolled out the way the reference does it: one sample at a time, every turn re-submitted
through transformers' ``generate`` with the span audio appended and the whole prompt re-prefilled (the run checks
the tokens are identical before comparing times). Also: encoder-cache hits and prompt blocks shared by the group.
Run: python -m pytest benchmarks/bench_grpo.py -s   (a few minutes on 2 cores)
"""

from __future__ import annotations

import time

import numpy as np
import soundfile as sf
import torch

from bench_engine import SR, Bench
from echo.config import EngineConfig
from echo.train.grpo import GRPOConfig, GRPOTrainer
from echo.train.grpo_loss import PolicyLossConfig
from echo.train.rewards import RewardFn, format_reward
from echo.train.rl_data import RLRecord

GROUP, NEW_TOKENS, SEGS = 8, 120, {20: " <seg>1.0, 3.5</seg>", 60: " <seg>5.0, 8.0</seg>"}


class Script:
    """Forces the two <seg> tags (same spans for every sample: a group re-listening alike) and <|im_end|> at
    NEW_TOKENS; every other token is sampled (temperature 1) among plain text ids, so samples differ."""

    def __init__(self, bench: Bench, prompt_len: int):
        tok = bench.proc.tokenizer
        self.plan = {k: tok.encode(v, add_special_tokens=False).ids for k, v in SEGS.items()}
        self.plan[NEW_TOKENS - 1] = [bench.eos]
        self.prompt_len, self.audio_ids = prompt_len, bench.audio_ids
        self.allowed = torch.tensor(bench.text_ids)

    def __call__(self, history, logits):
        step = sum(1 for t in history[self.prompt_len:] if t not in self.audio_ids)
        for first, ids in self.plan.items():
            if first <= step < first + len(ids):
                out = torch.full_like(logits, float("-inf"))
                out[ids[step - first]] = 0.0
                return out
        out = torch.full_like(logits, float("-inf"))
        out[self.allowed] = logits[self.allowed]
        return out


def test_grpo_step_split_and_rollout_vs_reference_loop(tmp_path):
    torch.manual_seed(0)
    bench = Bench(tmp_path / "model")
    rng = np.random.default_rng(0)
    t = np.arange(10 * SR) / SR
    clip = (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    sf.write(tmp_path / "clip.wav", clip, SR, subtype="FLOAT")
    record = RLRecord("q0", str(tmp_path / "clip.wav"), "Q?", ["a", "b"], "a")
    prompt_len = len(bench.prompt(clip))
    cfg = GRPOConfig(group_size=GROUP, prompts_per_step=1, steps=2, lr=1e-6, max_new_tokens=NEW_TOKENS,
                     micro_batch=4, progress=False, loss=PolicyLossConfig(kl_coef=0.04),
                     engine=EngineConfig(kv_cache_bytes=1 << 30, block_size=16))
    trainer = GRPOTrainer(str(tmp_path / "model"), str(tmp_path / "run"), cfg, RewardFn([("format", format_reward,
                                                                                         1.0)]),
                          [Script(bench, prompt_len)])
    # shared prompt blocks: after each engine step, blocks common to every live sample of the group
    real_step, shared = trainer.engine.step, []

    def step():
        out = real_step()
        for seqs in [trainer.engine.request(i).samples for i in trainer.engine.pending()]:
            tables = [set(s.block_table) for s in seqs if s.block_table and not s.is_finished]
            if len(tables) == GROUP:
                shared.append(len(set.intersection(*tables)))
        return out

    trainer.engine.step = step
    trainer.train_step([record])  # warm-up
    m = trainer.train_step([record])
    rolls = trainer.last_rollouts
    assert len(rolls) == GROUP and all(sum(r.mask) == NEW_TOKENS for r in rolls)
    assert all(sum(x.inserted for x in r.relistens) == 2 for r in rolls)
    assert len({tuple(r.token_ids) for r in rolls}) == GROUP  # 8 different trajectories

    # the reference-style rollout of the same 8 trajectories, one sample and one turn at a time
    t0 = time.perf_counter()
    for r in rolls:
        sampled = [tok for tok, keep in zip(r.token_ids, r.mask) if keep]

        def step_token(history, sampled=sampled):
            n = sum(1 for tok in history[prompt_len:] if tok not in bench.audio_ids)
            return sampled[min(n, len(sampled) - 1)]

        assert bench.reference(clip, step_token) == r.token_ids  # same tokens, spliced audio included
    ref_s = time.perf_counter() - t0
    total = m["time/rollout"] + m["time/logprob"] + m["time/update"]
    blocks = -(-prompt_len // cfg.engine.block_size)
    line = (f"GRPO step, group {GROUP}, {NEW_TOKENS} sampled tokens each, 2 re-listens each: rollout "
            f"{m['time/rollout']:.2f} s, ref log-probs {m['time/logprob']:.2f} s, update {m['time/update']:.2f} s "
            f"(total {total:.2f} s). Reference-style rollout of the same trajectories {ref_s:.2f} s = "
            f"{ref_s / m['time/rollout']:.2f}x echo's rollout. Encoder-cache hit rate {m['encoder_cache_hit_rate']:.0%}"
            f"; prompt of {prompt_len} tokens = {blocks} blocks, shared by all {GROUP} samples: {max(shared)}")
    print("\n" + line)
    assert max(shared) >= prompt_len // cfg.engine.block_size
