"""GRPO's policy pass keeps a frozen encoder's audio rows in the graph when the projector trains (Qwen2-Audio's
projector sits outside the tower), and ``train_only`` trains just the named parameters."""

from __future__ import annotations

import pytest
import tiny_checkpoints as tc
import torch
from safetensors.torch import load_file

from echo.config import EngineConfig
from echo.errors import ConfigError
from echo.train.grpo import GRPOConfig, train_grpo
from echo.train.grpo_loss import PolicyLossConfig
from echo.train.rewards import RewardFn


def _length(t) -> float:
    """Varies within a group of random samples, so advantages (and gradients) are not zero."""
    return float(len(t.text))


def _cfg(**kw) -> GRPOConfig:
    return GRPOConfig(group_size=4, prompts_per_step=2, steps=1, lr=1e-2, max_new_tokens=8, progress=False,
                      loss=PolicyLossConfig(kl_coef=0.0), engine=EngineConfig(num_blocks=64, block_size=16), **kw)


@pytest.mark.parametrize("train_only", [("projector",), ()], ids=["projector-only", "full"])
def test_grpo_trains_the_projector_with_a_frozen_encoder(checkpoint, tmp_path, train_only):
    path, _ = checkpoint("qwen2audio-tiny-gqa2")
    data = tc.write_rl_task(tmp_path, ["How many beeps?", "Count the beeps."], seed=3)
    train_grpo(str(path), str(data), str(tmp_path / "run"), _cfg(train_only=train_only),
               RewardFn([("length", _length, 1.0)]))
    before, after = (load_file(str(d / "model.safetensors")) for d in (path, tmp_path / "run" / "final"))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert "multi_modal_projector.linear.weight" in changed
    assert not any(n.startswith("audio_tower.") for n in changed)
    assert any(n.startswith("language_model.") for n in changed) == (train_only == ())


def test_grpo_train_only_must_match_something(checkpoint, tmp_path):
    path, _ = checkpoint("qwen2audio-tiny-gqa2")
    data = tc.write_rl_task(tmp_path, ["Q?", "R?"], seed=0)
    with pytest.raises(ConfigError, match="no parameter name starts with"):
        train_grpo(str(path), str(data), str(tmp_path / "run"), _cfg(train_only=("nope",)))
