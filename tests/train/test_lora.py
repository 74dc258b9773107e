"""LoRA SFT: only the adapter trains, in peft's layout; a killed run resumes to the same adapter; merging gives a
full checkpoint with the LoRA model's logits in echo and transformers; bad adapters and settings are refused."""

from __future__ import annotations

import json

import pytest
import tiny_checkpoints as tc
import torch
from helpers import assert_close
from safetensors.torch import load_file

import echo
from echo.errors import CheckpointError, ConfigError
from echo.models.tiny import make_checkpoint
from echo.train import sft as sft_mod
from echo.train.lora import load_adapter, merge_lora
from echo.train.sft import SFTConfig, train_sft

TARGETS = ["<think><seg>0.5, 1.5</seg>two</think><answer>B</answer>", "<think>none</think><answer>A</answer>"]
CFG = SFTConfig(lr=1e-2, epochs=6, grad_accum=2, save_every=2, lora_rank=4, lora_dropout=0.1, progress=False)
IDS = torch.tensor([[10, 20, 30, 40, 50, 60]])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tc.train_workdir(tmp_path_factory, "lora")
    tc.write_sft_task(d, [f"Question {i}?" for i in range(len(TARGETS))], TARGETS, seed=50)
    train_sft(str(d / "base"), str(d / "data.jsonl"), str(d / "straight"), CFG)
    return d


def test_only_the_adapter_trains_and_is_saved_in_peft_layout(workdir):
    final = workdir / "straight" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == str((workdir / "base").resolve())
    names = list(load_file(final / "adapter_model.safetensors"))
    assert len(names) == 2 * 7 * 2  # lora_A and lora_B on 7 projections in each of the 2 decoder layers
    assert all(n.startswith("base_model.model.decoder.layers.") and ".lora_" in n for n in names)
    losses = [json.loads(line)["loss"] for line in (workdir / "straight" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and max(losses[1:]) < losses[0] and losses[-1] < losses[0] - 0.2


def test_killed_lora_run_resumes_to_the_same_adapter(workdir, monkeypatch):
    real = sft_mod.sequence_loss
    calls = {"n": 0}

    def dies_in_step_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # two records a step: dies in step 4, resumes from step 2's checkpoint
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(sft_mod, "sequence_loss", dies_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_sft(str(workdir / "base"), str(workdir / "data.jsonl"), str(workdir / "resumed"), CFG)
    assert (workdir / "resumed" / "checkpoint" / "trainer_state.pt").is_file()
    monkeypatch.setattr(sft_mod, "sequence_loss", real)
    train_sft(str(workdir / "base"), str(workdir / "data.jsonl"), str(workdir / "resumed"), CFG)
    a = load_file(workdir / "straight" / "final" / "adapter_model.safetensors")
    b = load_file(workdir / "resumed" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_merged_checkpoint_has_the_lora_models_logits(workdir):
    from peft import PeftModel
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    adapter = workdir / "straight" / "final"
    base = echo.load(workdir / "base")
    lora = echo.load(workdir / "base").module  # the trainers' LoRA works on the nn.Module
    load_adapter(lora, adapter)
    merge_lora(workdir / "base", adapter, workdir / "merged")
    merged = echo.load(workdir / "merged")
    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(workdir / "merged").eval()
    peft_model = PeftModel.from_pretrained(echo.load(workdir / "base").module, str(adapter)).eval()  # peft's own reader
    with torch.no_grad():
        want = lora(IDS)
        assert (want - base(IDS)).abs().max() > 1e-3  # the adapter really changes the model
        assert_close("merged (echo) vs LoRA", merged(IDS), want, atol=1e-5)
        assert_close("merged (transformers) vs LoRA", hf(input_ids=IDS).logits, want, atol=1e-5)
        assert_close("peft-loaded adapter vs LoRA", peft_model(IDS), want, atol=1e-5)


def test_merge_refuses_what_is_not_an_adapter_for_this_base(workdir, tmp_path):
    adapter = workdir / "straight" / "final"
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        merge_lora(workdir / "base", workdir / "base", tmp_path / "a")
    make_checkpoint(tmp_path / "gqa4", "omni-tiny-gqa4")  # one kv head: k/v projections of another shape
    with pytest.raises(CheckpointError, match=r"does not match this base model: .*k_proj\.lora_B"):
        merge_lora(tmp_path / "gqa4", adapter, tmp_path / "b")
    make_checkpoint(tmp_path / "q2a", "qwen2audio-tiny-gqa2")  # same decoder shapes, another model
    with pytest.raises(CheckpointError, match="is for a Qwen2_5OmniThinker, not a Qwen2Audio"):
        merge_lora(tmp_path / "q2a", adapter, tmp_path / "c")
    assert not any((tmp_path / x).exists() for x in "abc")


def test_resume_refuses_other_settings_and_bad_configs(workdir):
    args = (str(workdir / "base"), str(workdir / "data.jsonl"), str(workdir / "straight"))
    with pytest.raises(ConfigError, match=r"other settings: .*lora_rank \(4 -> 8\)"):  # run.json
        train_sft(*args, SFTConfig(lora_rank=8, lora_dropout=0.1, progress=False))
    with pytest.raises(ConfigError, match=r"other settings: .*lora_rank \(4 -> 0\)"):
        train_sft(*args, SFTConfig(progress=False))
    with pytest.raises(ConfigError, match="targets among"):
        train_sft(*args, SFTConfig(lora_rank=4, lora_targets=("fc1",)))
    with pytest.raises(ConfigError, match="train_audio_encoder needs a full fine-tune"):
        train_sft(*args, SFTConfig(lora_rank=4, train_audio_encoder=True))
    with pytest.raises(ConfigError, match="dtype must be auto, fp32 or bf16"):
        train_sft(*args, SFTConfig(dtype="fp16"))


def test_cli_lora_then_merge(workdir, capsys):
    from echo.cli import main

    base, out = str(workdir / "base"), workdir / "cli"
    assert main(["train", "sft", "--model", base, "--data", str(workdir / "data.jsonl"), "--out", str(out),
                 "--lora", "2", "--lora-alpha", "4", "--epochs", "1", "--dtype", "fp32"]) == 0
    assert "trained 2 steps on 2 records (0 skipped); LoRA adapter in" in capsys.readouterr().out
    assert json.loads((out / "final" / "adapter_config.json").read_text())["lora_alpha"] == 4
    assert main(["train", "merge-lora", "--base", base, "--adapter", str(out / "final"), "--out",
                 str(out / "merged")]) == 0
    assert "checkpoint in" in capsys.readouterr().out
    assert echo.load(out / "merged").processor is not None
    assert main(["train", "merge-lora", "--base", base, "--adapter", base, "--out", str(out / "bad")]) == 2
    assert "no adapter_config.json; not a peft adapter directory" in capsys.readouterr().err
