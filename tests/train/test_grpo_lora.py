"""LoRA GRPO: only the adapter trains; the rollout engine decodes through the trainer's own adapter modules over the
same base tensors (the sampling log-probs equal the trainer's at every step); the KL's reference is the model with
its adapters off; a killed run resumes to the same adapter bit for bit (dropout on: the RNG is restored); the result
is a peft adapter that ``adapter_parts`` turns into the demo's assembly part, equal to the merged model."""

from __future__ import annotations

import json

import pytest
import tiny_checkpoints as tc
import torch
from helpers import assert_close, kill_on_call
from safetensors.torch import load_file
from test_grpo import _script

import echo
from echo.config import EngineConfig
from echo.errors import ConfigError
from echo.models.convert.assembly import apply_parts
from echo.train import grpo as grpo_mod
from echo.train.grpo import GRPOConfig, GRPOTrainer, train_grpo
from echo.train.grpo_loss import PolicyLossConfig
from echo.train.lora import adapter_parts, merge_lora
from echo.train.rewards import RewardFn, accuracy_reward

REWARD = RewardFn([("accuracy", accuracy_reward, 1.0)])


def _cfg(**kw) -> GRPOConfig:
    base = dict(group_size=4, prompts_per_step=2, steps=3, lr=1e-2, max_new_tokens=60, lora_rank=4, progress=False,
                save_every=1, loss=PolicyLossConfig(kl_coef=0.04), engine=EngineConfig(num_blocks=256, block_size=16))
    return GRPOConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tc.train_workdir(tmp_path_factory, "grpo_lora")
    tc.write_rl_task(d, [f"How many beeps, {i}?" for i in range(4)], seed=40)
    return d


@pytest.fixture(scope="module")
def straight(workdir):
    tok = echo.load(workdir / "base").processor.tokenizer
    result = train_grpo(str(workdir / "base"), str(workdir / "rl.jsonl"), str(workdir / "straight"), _cfg(), REWARD,
                        [_script(tok)])
    return result


def test_only_the_adapter_trains_and_the_engine_decodes_through_it(workdir, straight):
    final = workdir / "straight" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((final / "adapter_config.json").read_text())["r"] == 4
    names = list(load_file(final / "adapter_model.safetensors"))
    assert len(names) == 2 * 7 * 2 and all(".lora_" in n for n in names)  # A and B, 7 projections, 2 layers
    history = straight["history"]
    assert [h["step"] for h in history] == [1, 2, 3]
    # the engine samples from the adapted model of the step before: with one PPO epoch, the trainer's log-probs
    # equal the engine's, so no ratio moves away from 1 (a stale engine would sample from another policy)
    for h in history:
        assert h["ratio_mean"] == pytest.approx(1.0, abs=1e-3) and h["clip_frac"] == 0.0, h
    # the reference is the model with its adapters off: equal to the policy before the first update (B = 0)
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-7) and history[-1]["kl"] > 1e-6


def test_engine_shares_the_trainers_modules_and_base_tensors(workdir):
    tok = echo.load(workdir / "base").processor.tokenizer
    trainer = GRPOTrainer(str(workdir / "base"), str(workdir / "shared"), _cfg(steps=1), REWARD, [_script(tok)])
    assert trainer.engine.model is trainer.model and trainer.ref is None  # no copy, no second model
    before = {n: p.data_ptr() for n, p in trainer.model.named_parameters()}
    base = {n: p.clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert all(".lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    trainer.fit(str(workdir / "rl.jsonl"))
    after = dict(trainer.model.named_parameters())
    assert {n: p.data_ptr() for n, p in after.items()} == before
    assert all(torch.equal(after[n], t) for n, t in base.items())  # the base is never written
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in after.items() if ".lora_B" in n)


def test_killed_run_resumes_to_the_same_adapter(workdir, monkeypatch):
    cfg = _cfg(steps=4, lora_dropout=0.2, loss=PolicyLossConfig(kl_coef=0.0))  # dropout draws from the torch RNG
    tok = echo.load(workdir / "base").processor.tokenizer
    train_grpo(str(workdir / "base"), str(workdir / "rl.jsonl"), str(workdir / "drop_straight"), cfg, REWARD,
               [_script(tok)])
    restore = kill_on_call(monkeypatch, grpo_mod, "response_logprobs", 3)  # one policy forward per step (no KL)
    with pytest.raises(KeyboardInterrupt):
        train_grpo(str(workdir / "base"), str(workdir / "rl.jsonl"), str(workdir / "drop_resumed"), cfg, REWARD,
                   [_script(tok)])
    restore()
    result = train_grpo(str(workdir / "base"), str(workdir / "rl.jsonl"), str(workdir / "drop_resumed"), cfg, REWARD,
                        [_script(tok)])
    assert [h["step"] for h in result["history"]] == [3, 4]
    a = load_file(workdir / "drop_straight" / "final" / "adapter_model.safetensors")
    b = load_file(workdir / "drop_resumed" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [[json.loads(x)["loss"] for x in (workdir / d / "log.jsonl").read_text().splitlines()]
            for d in ("drop_straight", "drop_resumed")]
    assert rows[0] == rows[1]


def test_the_adapter_exports_as_the_demos_part(workdir, straight, tmp_path):
    base, final = workdir / "base", workdir / "straight" / "final"
    part = adapter_parts(final, base, tmp_path / "parts" / "lora_grpo.safetensors")
    merged = merge_lora(base, final, tmp_path / "merged")
    tensors = {k: v.float() for k, v in load_file(base / "model.safetensors").items()}
    applied = apply_parts(tensors, part.parent)
    assert applied == ["lora_grpo.safetensors"]
    want = load_file(merged / "model.safetensors")
    changed = [k for k in want if not torch.equal(want[k].float(), load_file(base / "model.safetensors")[k].float())]
    assert len(changed) == 2 * 7  # every adapted projection of both layers moved
    for k in want:
        assert_close(k, want[k].float(), tensors[k], atol=1e-6)


def test_lora_settings_are_checked_and_a_run_recorded_before_them_resumes(workdir):
    with pytest.raises(ConfigError, match="cannot be combined with LoRA"):
        GRPOTrainer(str(workdir / "base"), str(workdir / "bad"), _cfg(train_only=("projector",)), REWARD)
    with pytest.raises(ConfigError, match="lora_rank must be >= 0"):
        _cfg(lora_rank=-1)
    from echo.train.run_state import describe, differences

    now = describe("grpo", str(workdir / "base"), str(workdir / "rl.jsonl"), _cfg(lora_rank=0))
    older = json.loads(json.dumps(now))
    for key in ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "dtype"):
        del older["config"][key]
    assert differences(older, now) == []
    lora = describe("grpo", str(workdir / "base"), str(workdir / "rl.jsonl"), _cfg())
    assert differences(older, lora) == ["lora_rank (None -> 4)"]
