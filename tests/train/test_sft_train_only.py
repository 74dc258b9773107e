"""SFT of selected parameters only (stage 0 of echo-demo: the projector, with encoder and decoder frozen), and the
Qwen2-Audio projector actually receiving gradients in a full fine-tune."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from echo.errors import ConfigError
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


def test_train_only_must_match_something_and_excludes_lora(checkpoint, tmp_path):
    path, _ = checkpoint("qwen2audio-tiny-gqa2")
    data = write_sft_task(tmp_path, ["Q?"], ["A"], seed=0)
    with pytest.raises(ConfigError, match="no parameter name starts with"):
        train_sft(str(path), str(data), str(tmp_path / "a"), SFTConfig(train_only=("nope",), progress=False))
    with pytest.raises(ConfigError, match="cannot be combined with LoRA"):
        train_sft(str(path), str(data), str(tmp_path / "b"), SFTConfig(train_only=("projector",), lora_rank=2,
                                                                       progress=False))
