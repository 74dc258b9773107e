"""The family registry: every lookup answers from one spec, and a new architecture is one registered spec."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

import echo
from echo.audio import FeatureConfig
from echo.errors import CheckpointError, ConfigError
from echo.models import families
from echo.models.config import ModelConfig
from echo.models.families import qwen2_audio
from echo.models.loader import config_dtype, model_config, tensor_names
from echo.models.presets import PRESETS, preset
from helpers import assert_close
from tiny_checkpoints import conversation


def test_registry_answers_by_name_architecture_and_model_type():
    assert set(families.FAMILIES) == {"qwen2_5_omni", "qwen2_audio", "audioflamingo3", "qwen3_omni_moe"}
    for spec in families.FAMILIES.values():
        for arch in spec.architectures:
            assert families.family_for_architecture(arch) is spec
            assert families.architecture_of({"architectures": ["Unrelated", arch]}) == arch
        for model_type, arch in spec.model_types.items():
            assert families.architecture_of({"model_type": model_type}) == arch
        assert isinstance(spec.feature_config(), FeatureConfig)
    assert families.family("qwen2_5_omni").feature_config().chunk_length == 300
    assert families.family("qwen2_audio").feature_config().chunk_length == 30
    assert families.family("audioflamingo3").feature_config().max_audio_s == 600  # 20 windows of 30 s
    with pytest.raises(ConfigError, match="'qwen2_5_omni', 'qwen2_audio'"):
        families.family("llama")
    with pytest.raises(CheckpointError, match="echo supports Qwen2_5OmniThinker"):
        families.architecture_of({"architectures": ["LlamaForCausalLM"]})


@pytest.mark.parametrize("name", [n for n in PRESETS if "tiny" in n])
def test_config_writes_the_family_names(name):
    cfg = preset(name)
    d = cfg.to_hf_dict()
    assert d["architectures"] == [cfg.spec.architecture] and d["model_type"] == cfg.spec.model_type
    assert isinstance(cfg.spec.module, type) and cfg.spec.module.__name__ in ("Qwen2_5OmniThinker", "Qwen2Audio",
                                                                         "AudioFlamingo3", "Qwen3OmniMoeThinker")


def test_double_registration_is_refused():
    with pytest.raises(ConfigError, match="registered already"):
        families.register(qwen2_audio.FAMILY)


def test_public_loader_names_for_trainers(checkpoint):
    path, _ = checkpoint("omni-tiny-gqa2")
    raw = json.loads((path / "config.json").read_text())
    assert config_dtype(raw) == torch.float32
    assert config_dtype({"architectures": ["Qwen2_5OmniModel"], "thinker_config": {"torch_dtype": "bfloat16"}}) \
        == torch.bfloat16
    cfg = model_config(path)
    assert cfg.family == "qwen2_5_omni"
    names = tensor_names(path)
    model = echo.load(path)
    assert set(names.values()) == {n for n, _ in model.named_parameters()}
    assert all(not n.startswith(("audio_tower.positional_embedding", "visual.")) for n in names)


def test_a_third_architecture_is_one_registered_spec(checkpoint, features, tmp_path, monkeypatch):
    """A spec under a new architecture name (Qwen2-Audio's modules and key map) loads a checkpoint written under
    that name, with nothing else changed: the same logits as the original."""
    spec = dataclasses.replace(qwen2_audio.FAMILY, name="my_audio_lm", architecture="MyAudioLMForConditionalGeneration",
                               model_type="my_audio_lm", model_types={})
    for table in ("FAMILIES", "_BY_ARCHITECTURE", "_BY_MODEL_TYPE"):
        monkeypatch.setattr(families, table, dict(getattr(families, table)))
    monkeypatch.setattr(families, "SUPPORTED_ARCHITECTURES", families.SUPPORTED_ARCHITECTURES)
    families.register(spec)
    assert "MyAudioLMForConditionalGeneration" in families.SUPPORTED_ARCHITECTURES
    src, _ = checkpoint("qwen2audio-tiny-gqa2")
    dst = shutil.copytree(src, tmp_path / "mine")
    raw = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(dict(raw, architectures=[spec.architecture])))
    # transformers does not know the new model_type; the spec reads config.json without it
    monkeypatch.setattr("echo.models.loader._full_config", lambda path, raw: raw)
    mine, ref = echo.load(dst), echo.load(src)
    assert mine.config.family == "my_audio_lm" and mine.config.to_hf_dict()["architectures"] == [spec.architecture]
    feats, frames = features("qwen2_audio", (1.7,))
    ids = torch.tensor([ref.processor(conversation(1, "What is it?"), frames.tolist())])
    with torch.no_grad():
        assert_close("third family logits", ref(ids, input_features=feats, num_frames=frames),
                     mine(ids, input_features=feats, num_frames=frames), atol=0.0)
    assert ModelConfig.from_hf(mine.config.to_hf_dict()).family == "my_audio_lm"
