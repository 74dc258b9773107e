"""``echo train sft``, GRPO and ``echo eval`` on Audio Flamingo 3: the interleaved SFT format splices bare ``<sound>``
runs for the spans, the projector's two layers train, and the checkpoint written reads back in transformers."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

import echo
import tiny_checkpoints as tc
from echo.train.data import SFTRecord, build_example
from helpers import eval_runs, sft_cli_read_back

TARGETS = ["two beeps <seg>0.5, 1.5</seg> then quiet", "a dog"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tc.train_workdir(tmp_path_factory, "sft-af3", preset="af3-tiny-gqa2")
    tc.write_sft_task(d, ["What do you hear?", "Count the beeps."], TARGETS, seed=0)
    return d


def test_interleaved_example_splices_a_bare_sound_run(workdir):
    model = echo.load(workdir / "base")
    proc, audio_id = model.processor, model.config.audio_token_id
    ex = build_example(SFTRecord("r0", str(workdir / "clip0.wav"), "What do you hear?", TARGETS[0]), proc,
                       features=model.feature_config)
    assert ex.audio_spans == [(0, 40_000), (8_000, 24_000)]
    assert ex.input_ids.count(audio_id) == 62 + 25  # the 2.5 s clip, then the 1 s span
    assert proc.decode(ex.input_ids).split("</seg>")[1].startswith("<sound>" * 25 + " then")  # nothing around it


def test_cli_train_sft_trains_the_projector_and_transformers_reads_the_result(workdir, capsys):
    from transformers import AudioFlamingo3ForConditionalGeneration

    changed = sft_cli_read_back(workdir, capsys, AudioFlamingo3ForConditionalGeneration)
    assert {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.weight"} <= changed


def test_cli_eval_runs_the_model(workdir, tmp_path):
    assert eval_runs(workdir / "base", tmp_path)["overall"]["total"] == 2


def test_grpo_step_trains_the_projector(workdir, tmp_path):
    from echo.config import EngineConfig
    from echo.train.grpo import GRPOConfig, train_grpo
    from echo.train.grpo_loss import PolicyLossConfig
    from echo.train.rewards import RewardFn

    data = tc.write_rl_task(tmp_path, ["How many beeps?", "Count the beeps."], seed=3)
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, steps=1, lr=1e-2, max_new_tokens=8, progress=False,
                     loss=PolicyLossConfig(kl_coef=0.0), engine=EngineConfig(num_blocks=64, block_size=16),
                     train_only=("projector",))
    train_grpo(str(workdir / "base"), str(data), str(tmp_path / "run"), cfg,
               RewardFn([("length", lambda t: float(len(t.text)), 1.0)]))  # varies within a group
    before, after = (load_file(str(d / "model.safetensors")) for d in (workdir / "base", tmp_path / "run" / "final"))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("multi_modal_projector.") for n in changed)
