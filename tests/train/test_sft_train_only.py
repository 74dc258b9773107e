"""SFT of selected parameters only (stage 0 of echo-demo: the projector, with encoder and decoder frozen), and the
Qwen2-Audio projector actually receiving gradients in a full fine-tune; the resumable checkpoint of such a run
holds only the trained tensors, resumes to the same weights and refuses a changed base model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from echo.errors import CheckpointError, ConfigError
from echo.train import sft as sft_mod
from echo.train.sft import SFTConfig, train_sft
from tiny_checkpoints import write_sft_task


def _weights(d):
    return load_file(str(d / "model.safetensors"))


@pytest.mark.parametrize("train_only", [("projector",), ()], ids=["projector-only", "full"])
def test_projector_trains_and_only_it_when_asked(checkpoint, tmp_path, train_only):
    path, _ = checkpoint("qwen2audio-tiny-gqa2")
    data = write_sft_task(tmp_path, ["What do you hear?", "Count the beeps."], ["two beeps", "a dog"], seed=0)
    cfg = SFTConfig(format="grounded", lr=1e-2, grad_accum=2, progress=False, train_only=train_only)
    train_sft(str(path), str(data), str(tmp_path / "run"), cfg)
    before, after = _weights(path), _weights(tmp_path / "run" / "final")
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert "multi_modal_projector.linear.weight" in changed
    assert not any(n.startswith("audio_tower.") for n in changed)  # the encoder stays frozen either way
    decoder_changed = any(n.startswith("language_model.") for n in changed)
    assert decoder_changed == (train_only == ())


def test_train_last_rows_trains_only_those_rows_of_the_head(checkpoint, tmp_path):
    """The rows of tokens a checkpoint added (echo-demo's tags) can train alone: every other row stays bit-equal."""
    path, _ = checkpoint("qwen2audio-tiny-gqa2")
    data = write_sft_task(tmp_path, ["What do you hear?", "Count the beeps."], ["two beeps", "a dog"], seed=0)
    cfg = SFTConfig(format="grounded", lr=1e-2, grad_accum=2, progress=False, train_only=("lm_head",),
                    train_last_rows=3)
    train_sft(str(path), str(data), str(tmp_path / "run"), cfg)
    before, after = _weights(path), _weights(tmp_path / "run" / "final")
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"language_model.lm_head.weight"}
    head0, head1 = before["language_model.lm_head.weight"], after["language_model.lm_head.weight"]
    assert torch.equal(head0[:-3], head1[:-3]) and not torch.equal(head0[-3:], head1[-3:])
    with pytest.raises(ConfigError, match="train_last_rows needs train_only"):
        SFTConfig(train_last_rows=3)


def test_train_only_must_match_something_and_excludes_lora(checkpoint, tmp_path):
    path, _ = checkpoint("qwen2audio-tiny-gqa2")
    data = write_sft_task(tmp_path, ["Q?"], ["A"], seed=0)
    with pytest.raises(ConfigError, match="no parameter name starts with"):
        train_sft(str(path), str(data), str(tmp_path / "a"), SFTConfig(train_only=("nope",), progress=False))
    with pytest.raises(ConfigError, match="cannot be combined with LoRA"):
        train_sft(str(path), str(data), str(tmp_path / "b"), SFTConfig(train_only=("projector",), lora_rank=2,
                                                                       progress=False))


def _train_only_task(checkpoint, tmp_path):
    path, _ = checkpoint("qwen2audio-tiny-gqa2")
    data = write_sft_task(tmp_path, ["What do you hear?", "Count the beeps.", "Any speech?", "Which animal?"],
                          ["two beeps", "a dog", "no", "a bird"], seed=1)
    return path, data, SFTConfig(format="grounded", lr=1e-2, epochs=2, save_every=2, progress=False,
                                 train_only=("projector",))


def test_resumable_checkpoint_holds_only_the_trained_tensors_and_resumes_exactly(checkpoint, tmp_path, monkeypatch):
    path, data, cfg = _train_only_task(checkpoint, tmp_path)
    train_sft(str(path), str(data), str(tmp_path / "straight"), cfg)
    resumable = tmp_path / "straight" / "checkpoint"
    assert sorted(p.name for p in resumable.glob("*.safetensors")) == ["trainable.safetensors"]
    saved = load_file(str(resumable / "trainable.safetensors"))
    assert saved and all(n.startswith("projector.") for n in saved)
    assert (resumable / "trainable.safetensors").stat().st_size * 10 < (path / "model.safetensors").stat().st_size
    assert "multi_modal_projector.linear.weight" in _weights(tmp_path / "straight" / "final")  # final stays full

    real, calls = sft_mod.sequence_loss, {"n": 0}

    def dies_at_record_6(*args, **kwargs):  # step 6 of 8: after the checkpoint of step 4
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(sft_mod, "sequence_loss", dies_at_record_6)
    with pytest.raises(KeyboardInterrupt):
        train_sft(str(path), str(data), str(tmp_path / "resumed"), cfg)
    monkeypatch.setattr(sft_mod, "sequence_loss", real)
    assert torch.load(tmp_path / "resumed" / "checkpoint" / "trainer_state.pt", weights_only=True)["step"] == 4
    train_sft(str(path), str(data), str(tmp_path / "resumed"), cfg)
    a, b = _weights(tmp_path / "straight" / "final"), _weights(tmp_path / "resumed" / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_refuses_a_changed_base_model(checkpoint, tmp_path):
    src, data, cfg = _train_only_task(checkpoint, tmp_path)
    base = tmp_path / "base"
    shutil.copytree(src, base)
    train_sft(str(base), str(data), str(tmp_path / "run"), cfg)
    raw = json.loads((base / "config.json").read_text())
    raw["changed_for_the_test"] = True
    (base / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="model"):  # the run's record notices first
        train_sft(str(base), str(data), str(tmp_path / "run"), cfg)
    (tmp_path / "run" / "run.json").unlink()  # without it, the checkpoint's own fingerprint still refuses
    with pytest.raises(CheckpointError, match="differs"):
        train_sft(str(base), str(data), str(tmp_path / "run"), cfg)
