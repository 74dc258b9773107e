"""Tiny random checkpoints built offline with transformers' own classes: for tests, benchmarks and the README's
first command (`python -m echo make-tiny DIR`), until a trained demo model exists.

``make_checkpoint(dir, preset_name)`` writes a complete local Hugging Face directory (config.json, safetensors,
a byte-level BPE tokenizer carrying the Qwen special tokens, a chat template, the Whisper preprocessor config)
and returns the transformers model it saved, so tests can compare echo against it on the same weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from ..audio.io import SAMPLING_RATE
from .config import ModelConfig
from .families import family as get_family
from .presets import preset

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
            "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>", "<sound>",
            "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>"]
CORPUS = [
    "The audio contains a dog barking, then a car passes by. <seg>3.0, 5.5</seg> Listening again to the segment.",
    "Question: how many beeps are there between 2 and 4 seconds? Choices: (A) one (B) two (C) three.",
    "<think>The speaker says hello at <seg>0.4, 1.2</seg> and the music starts later.</think><answer>B</answer>",
    "You are a helpful assistant. Please refer to the specific audio segments and indicate the timestamps.",
] * 4

def special_ids() -> dict[str, int]:
    """Specials sit right after the byte alphabet and merges, at fixed ids (see build_tokenizer)."""
    return {tok: 340 + i for i, tok in enumerate(SPECIALS)}


def build_tokenizer():
    """A Qwen2Tokenizer (transformers) over a tiny byte-level BPE trained here; specials at ``special_ids()``."""
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=340, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    assert len(vocab) <= 340, len(vocab)
    vocab.update(special_ids())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    extra = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
             "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
             "vision_eos_token": "<|vision_eos|>"}
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=extra)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<sound>", "<|audio_start|>",
                                                            "<|audio_end|>", "<|audio_pad|>"]})
    return tok


def feature_extractor(family: str):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=SAMPLING_RATE, hop_length=160, n_fft=400,
                                   chunk_length=get_family(family).feature_chunk_s, padding_value=0.0,
                                   return_attention_mask=True)


def hf_config(cfg: ModelConfig):
    """The transformers config object of ``cfg`` (its family's config class, with the family's extra keys)."""
    import transformers

    d = cfg.to_hf_dict()
    d.pop("architectures"), d.pop("model_type")
    d.update(cfg.spec.hf_config_extras(special_ids()))
    return getattr(transformers, cfg.spec.hf_config_class)(**d)


def config_for(name: str) -> ModelConfig:
    """Preset ``name`` with the tiny tokenizer's ids of its family's audio tokens."""
    ids, cfg = special_ids(), preset(name)
    spec = cfg.spec
    return dataclasses.replace(cfg, audio_token_id=ids[spec.audio_token],
                               audio_bos_token_id=ids.get(spec.audio_bos_token),
                               audio_eos_token_id=ids.get(spec.audio_eos_token))


def hf_model_for(cfg: ModelConfig, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cfg.architecture)(hf_config(cfg)).eval()
    with torch.no_grad():  # random biases and norm weights too, so a mis-mapped tensor cannot hide behind 0 or 1
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_tokenizer_files(path: Path, family: str) -> None:
    tok = build_tokenizer()
    tok.save_pretrained(path)
    feature_extractor(family).save_pretrained(path)
    (path / "chat_template.jinja").write_text(get_family(family).chat_template())


def make_checkpoint(path: Path, name: str, seed: int = 0, max_shard_size: str | None = None):
    """Save a random transformers model of preset ``name`` plus tokenizer files to ``path``; return the model."""
    cfg = config_for(name)
    model = hf_model_for(cfg, seed)
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, **kw)
    save_tokenizer_files(path, cfg.family)
    return model


def make_checkpoint_dir(path: Path, name: str, seed: int = 0, force: bool = False) -> None:
    """``echo make-tiny``: ``make_checkpoint`` into ``path``, refusing an unknown preset, a file, or a non-empty
    directory (it may hold a trained checkpoint) unless ``force``, which replaces that directory whole. Written
    beside and swapped into place (``durable.atomic_dir``), so a kill leaves no half checkpoint, and the next run
    finishes or undoes a swap a kill interrupted."""
    from ..durable import atomic_dir, recover_dir
    from ..errors import ConfigError
    from .presets import PRESETS

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    recover_dir(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ConfigError(f"{path} is not empty (it may hold a trained checkpoint); pass --overwrite to replace it, "
                          "or choose another directory")
    with atomic_dir(path) as tmp:
        make_checkpoint(tmp, name, seed)
