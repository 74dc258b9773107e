"""Loading: sharded safetensors, a full Qwen2.5-Omni (talker never read), the no-copy drop-in, bad checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import echo
from echo.errors import CheckpointError
from echo.models import checkpoint as ckpt
from helpers import assert_close
from tiny_checkpoints import config_for, conversation, hf_config, hf_forward, make_checkpoint, save_tokenizer_files


def _logits(model, features, hf=None):
    feats, num_frames = features(model.config.family, (2.6,))
    ids = torch.tensor([model.processor(conversation(1, "What is it?"), num_frames.tolist())])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, input_features=feats, num_frames=num_frames)
    return ours, (hf_forward(hf, ids, mask, feats, num_frames)[0] if hf is not None else None)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _full_omni(tmp_path):
    """A complete Qwen2_5OmniForConditionalGeneration (thinker + talker + token2wav) saved in small shards."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    thinker = hf_config(config_for("omni-tiny-gqa2"))
    talker = dict(vocab_size=64, embedding_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    token2wav = dict(
        dit_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16, emb_dim=16,
                        enc_emb_dim=8, enc_dim=8, enc_channels=[16, 16, 16, 16, 48], enc_attention_channels=8,
                        enc_se_channels=8, num_embeds=64, mel_dim=16),
        bigvgan_config=dict(mel_dim=16, upsample_initial_channel=16, upsample_rates=[2, 2],
                            upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3],
                            resblock_dilation_sizes=[[1, 3, 5]]))
    torch.manual_seed(1)
    full = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig(
        thinker_config=thinker.to_dict(), talker_config=talker, token2wav_config=token2wav)).eval()
    full.save_pretrained(tmp_path, max_shard_size="200KB")
    save_tokenizer_files(tmp_path, "qwen2_5_omni")
    return full


def test_sharded_checkpoint_loads(tmp_path, features):
    hf = make_checkpoint(tmp_path, "qwen2audio-tiny-gqa2", max_shard_size="100KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 3 and (tmp_path / "model.safetensors.index.json").is_file()
    ours, ref = _logits(echo.load(tmp_path), features, hf)
    assert_close("sharded qwen2-audio logits", ref, ours)


def test_full_omni_loads_thinker_without_reading_talker(tmp_path, features, monkeypatch):
    full = _full_omni(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    speech_only = {f for f in set(index.values())
                   if all(not k.startswith("thinker.") for k, v in index.items() if v == f)}
    assert speech_only, "the fixture should put talker/token2wav tensors in shards of their own"
    opened, real_safe_open = [], ckpt.safe_open

    def spy(path, framework, device="cpu"):
        opened.append(path.name)
        return real_safe_open(path, framework=framework, device=device)

    monkeypatch.setattr(ckpt, "safe_open", spy)
    model = echo.load(tmp_path)
    assert opened and not speech_only & set(opened), "a talker/token2wav-only shard was opened"
    assert type(model.module).__name__ == "Qwen2_5OmniThinker"
    ours, ref = _logits(model, features, full.thinker)
    assert_close("full omni thinker logits", ref, ours)


def test_from_transformers_shares_storage(tmp_path, features):
    from transformers import AutoTokenizer

    path, hf = tmp_path, make_checkpoint(tmp_path, "omni-tiny-tied")  # its own model: this test edits weights
    model = echo.from_transformers(hf, AutoTokenizer.from_pretrained(path))
    theirs = {p.data_ptr() for p in hf.parameters()}
    assert all(p.data_ptr() in theirs for p in model.parameters())
    assert model.lm_head.weight is model.decoder.embed_tokens.weight  # tied, like the transformers model
    ours, ref = _logits(model, features, hf)
    assert_close("from_transformers logits", ref, ours)
    with torch.no_grad():  # a weight pushed into the transformers model is seen by echo: same storage
        hf.model.language_model.norm.weight.mul_(2.0)
    ours2, ref2 = _logits(model, features, hf)
    assert_close("after in-place update", ref2, ours2)
    assert (ours2 - ours).abs().max() > 1e-3


def test_from_transformers_full_omni_and_qwen2_audio_processor(tmp_path, checkpoint):
    from transformers import AutoTokenizer, Qwen2AudioProcessor, WhisperFeatureExtractor

    full = _full_omni(tmp_path)
    assert type(echo.from_transformers(full).module).__name__ == "Qwen2_5OmniThinker"
    path, hf = checkpoint("qwen2audio-tiny-gqa2")
    proc = Qwen2AudioProcessor(WhisperFeatureExtractor.from_pretrained(path), AutoTokenizer.from_pretrained(path))
    model = echo.from_transformers(hf, proc)
    assert model.processor.audio_token_id == model.config.audio_token_id
    assert model.config.audio_bos_token_id == model.processor.audio_bos_token_id
    with pytest.raises(CheckpointError, match="supports"):
        echo.from_transformers(torch.nn.Linear(2, 2))


def test_bf16_load_and_tied_embeddings(checkpoint):
    path, _ = checkpoint("omni-tiny-tied")
    assert "lm_head.weight" not in ckpt.weight_map(path)  # tied: transformers saves the embedding only
    model = echo.load(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.lm_head.weight is model.decoder.embed_tokens.weight
    assert not any(p.is_meta for p in model.parameters()) and not model.training


# ---- bad checkpoints --------------------------------------------------------------------------------------------


def test_pickle_only_checkpoint_is_refused(checkpoint, tmp_path):
    path, hf = checkpoint("omni-tiny-gqa2")
    bad = _copy(path, tmp_path / "bin")
    (bad / "model.safetensors").unlink()
    torch.save({"lm_head.weight": torch.zeros(1)}, bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors only"):
        echo.load(bad)


def test_missing_shard_is_named(tmp_path):
    make_checkpoint(tmp_path, "omni-tiny-gqa1", max_shard_size="100KB")
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"missing: {victim.name}"):
        echo.load(tmp_path)


def _rewrite(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_wrong_shape_missing_and_unexpected_tensors_are_named(checkpoint, tmp_path):
    path, _ = checkpoint("omni-tiny-gqa2")
    cases = {
        "shape": (lambda t: t.__setitem__("model.layers.1.mlp.up_proj.weight", torch.zeros(3, 64)),
                  r"mis-shaped tensors: model\.layers\.1\.mlp\.up_proj\.weight \(3, 64\) \(expected \(96, 64\)\)"),
        "missing": (lambda t: t.pop("audio_tower.layers.0.fc2.bias"),
                    r"missing tensors for echo parameters: audio_tower\.layers\.0\.fc2\.bias"),
        "unexpected": (lambda t: t.__setitem__("model.layers.0.extra.weight", torch.zeros(2)),
                       r"unexpected tensors.*model\.layers\.0\.extra\.weight"),
    }
    for name, (edit, message) in cases.items():
        bad = _copy(path, tmp_path / name)
        _rewrite(bad, edit)
        with pytest.raises(CheckpointError, match=message):
            echo.load(bad)


def test_unknown_architecture_lists_supported(checkpoint, tmp_path):
    path, _ = checkpoint("omni-tiny-gqa2")
    bad = _copy(path, tmp_path / "llama")
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="LlamaForCausalLM.*Qwen2_5OmniThinkerForConditionalGeneration.*"
                                              "Qwen2AudioForConditionalGeneration"):
        echo.load(bad)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        echo.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no config.json"):
        echo.load(tmp_path)
