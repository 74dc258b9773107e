"""``echo train sft`` and ``echo eval`` on a Qwen3-Omni thinker (mixture of experts): the experts receive
gradients through the grouped MoE path, and the checkpoint written reads back in echo and in transformers."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

import tiny_checkpoints as tc
from helpers import eval_runs, sft_cli_read_back


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tc.train_workdir(tmp_path_factory, "sft-qwen3", preset="qwen3omni-tiny-gqa2")
    tc.write_sft_task(d, ["What do you hear?", "Count the beeps."],
                      ["two beeps <seg>0.5, 1.5</seg> then quiet", "a dog"], seed=0)
    return d


def test_cli_train_sft_trains_experts_and_transformers_reads_the_result(workdir, capsys):
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    changed = sft_cli_read_back(workdir, capsys, Qwen3OmniMoeThinkerForConditionalGeneration)
    assert any(".mlp.experts." in n for n in changed) and any(n.endswith(".mlp.gate.weight") for n in changed)


def test_cli_eval_runs_the_model(workdir, tmp_path):
    assert eval_runs(workdir / "base", tmp_path)["overall"]["total"] == 2


def test_grpo_step_trains_the_experts(workdir, tmp_path):
    """One GRPO step on the MoE thinker: rollouts through echo's engine, and the experts and router are among the
    weights the step moves."""
    from echo.config import EngineConfig
    from echo.train.grpo import GRPOConfig, train_grpo
    from echo.train.grpo_loss import PolicyLossConfig
    from echo.train.rewards import RewardFn

    data = tc.write_rl_task(tmp_path, ["How many beeps?", "Count the beeps."], seed=3)
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, steps=1, lr=1e-2, max_new_tokens=8, progress=False,
                     loss=PolicyLossConfig(kl_coef=0.0), engine=EngineConfig(num_blocks=64, block_size=16))
    train_grpo(str(workdir / "base"), str(data), str(tmp_path / "run"), cfg,
               RewardFn([("length", lambda t: float(len(t.text)), 1.0)]))  # varies within a group
    before, after = (load_file(str(d / "model.safetensors")) for d in (workdir / "base", tmp_path / "run" / "final"))
    changed = {n for n in after if n in before and not torch.equal(before[n], after[n])}
    assert any(".mlp.experts." in n for n in changed) and any(n.endswith(".mlp.gate.weight") for n in changed)
