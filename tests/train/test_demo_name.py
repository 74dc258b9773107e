"""``--model echo-demo`` in the training and evaluation commands: the name is resolved once, at the start, to the
directory the loader would use, so checkpoints, adapters and run fingerprints see a real directory. The resolver
is pointed at a tiny checkpoint, so no demo package is needed."""

from __future__ import annotations

import json

import pytest
import tiny_checkpoints as tc

import echo
from echo.cli import main
from echo.data.synthetic import SynthConfig, write_synthetic
from echo.models.convert import demo


@pytest.fixture
def demo_is_tiny(checkpoint, tmp_path, monkeypatch):
    path, _ = checkpoint("qwen2audio-tiny-gqa2")
    real = demo.resolve
    monkeypatch.setattr(demo, "resolve", lambda m: path if str(m) == demo.DEMO_NAME else real(m))
    monkeypatch.chdir(tmp_path)  # no directory named echo-demo here
    return path


def test_train_and_merge_commands_accept_echo_demo(demo_is_tiny, tmp_path, capsys):
    (tmp_path / "sft").mkdir()
    (tmp_path / "rl").mkdir()
    sft = tc.write_sft_task(tmp_path / "sft", ["What do you hear?", "Count."], ["a beep", "two"], seed=0)
    rl = tc.write_rl_task(tmp_path / "rl", ["How many?", "Which?"], seed=5)
    assert main(["train", "sft", "--model", "echo-demo", "--data", str(sft), "--out", "lora", "--lora", "2",
                 "--epochs", "1", "--dtype", "fp32"]) == 0
    adapter = json.loads((tmp_path / "lora" / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(demo_is_tiny.resolve())
    saved = json.loads(next((tmp_path / "lora").glob("run*.json")).read_text())
    assert saved["model"]["path"] == str(demo_is_tiny.resolve())
    assert main(["train", "merge-lora", "--base", "echo-demo", "--adapter", "lora/final", "--out", "merged"]) == 0
    assert echo.load(tmp_path / "merged").processor is not None
    assert main(["train", "grpo", "--model", "echo-demo", "--data", str(rl), "--out", "grpo", "--group-size", "2",
                 "--prompts-per-step", "2", "--steps", "1", "--max-new-tokens", "4", "--kv-cache-gb", "0.01"]) == 0
    assert (tmp_path / "grpo" / "final" / "model.safetensors").is_file()
    assert "error" not in capsys.readouterr().err


def test_eval_accepts_echo_demo(demo_is_tiny, tmp_path, capsys):
    write_synthetic(SynthConfig(n=2, seed=9, families=("pitch_at",), difficulties=("easy",)), tmp_path / "data")
    assert main(["eval", "--benchmark", "synthetic", "--data", "data", "--model", "echo-demo", "--out", "ev",
                 "--max-new-tokens", "4", "--no-progress"]) == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["overall"]["total"] == 2
