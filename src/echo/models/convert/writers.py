"""``echo convert whisper-ct2`` and ``echo convert gguf``: one foreign file → one Hugging Face directory.

whisper-ct2 writes Whisper's encoder as a standalone ``Qwen2AudioEncoder`` (config.json, model.safetensors,
preprocessor_config.json); gguf writes a ``Qwen2ForCausalLM`` (config, safetensors, tokenizer files, chat
template, generation config). Both are float32, written atomically with a checksum manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...audio.io import SAMPLING_RATE
from .ct2 import whisper_encoder
from .gguf_llama import build_tokenizer, read_gguf_llama
from .hf_dir import atomic_dir, save_tensors, save_tokenizer, sha256, write_json, write_manifest


def feature_extractor_config(num_mel_bins: int) -> dict:
    """Qwen2-Audio's Whisper front end (30 s window) for ``num_mel_bins`` mel bins, as preprocessor_config.json."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SAMPLING_RATE, hop_length=160, n_fft=400,
                                 chunk_length=30, padding_value=0.0, return_attention_mask=True)
    return fe.to_dict()


def convert_whisper_ct2(model_bin: str | os.PathLike, out: str | os.PathLike, force: bool = False) -> Path:
    """CTranslate2 Whisper model.bin → a ``Qwen2AudioEncoder`` directory (the encoder only)."""
    tensors, audio = whisper_encoder(model_bin)
    with atomic_dir(Path(out), force) as d:
        save_tensors({k.removeprefix("audio_tower."): v for k, v in tensors.items()}, d / "model.safetensors")
        write_json(d / "config.json", {**audio, "architectures": ["Qwen2AudioEncoder"], "dtype": "float32"})
        write_json(d / "preprocessor_config.json", feature_extractor_config(audio["num_mel_bins"]))
        write_manifest(d, {"whisper_ct2": {"file": Path(model_bin).name, "sha256": sha256(Path(model_bin))}})
    return Path(out)


def convert_gguf(gguf_file: str | os.PathLike, out: str | os.PathLike, force: bool = False,
                 progress: bool = True) -> Path:
    """Llama-layout GGUF → a ``Qwen2ForCausalLM`` directory (zero q/k/v biases; same logits)."""
    tensors, text, tok_meta = read_gguf_llama(gguf_file, progress=progress)
    tok = build_tokenizer(tok_meta, gguf_file)
    names = tok_meta["tokens"]
    with atomic_dir(Path(out), force) as d:
        save_tensors(tensors, d / "model.safetensors")
        write_json(d / "config.json", {**text, "architectures": ["Qwen2ForCausalLM"], "dtype": "float32"})
        save_tokenizer(tok, d, bos=_name(names, tok_meta["bos_token_id"]), eos=_name(names, tok_meta["eos_token_id"]),
                       pad=_name(names, tok_meta["pad_token_id"]), chat_template=tok_meta["chat_template"] or None)
        write_json(d / "generation_config.json", {"bos_token_id": tok_meta["bos_token_id"],
                                                  "eos_token_id": tok_meta["eos_token_id"]})
        write_manifest(d, {"gguf": {"file": Path(gguf_file).name, "sha256": sha256(Path(gguf_file))}})
    return Path(out)


def _name(tokens: list[str], i: int) -> str | None:
    return tokens[i] if 0 <= i < len(tokens) else None
