"""Whisper encoder (CTranslate2) + a new projector + a Llama-layout decoder (GGUF) → one Qwen2-Audio checkpoint.

The result is a standard Hugging Face ``Qwen2AudioForConditionalGeneration`` directory that ``echo.load`` and
transformers both read: the Whisper encoder as the audio tower (Qwen2-Audio pools and then applies the encoder's
final LayerNorm), a linear projector ``d_model → hidden`` initialised small and random with a fixed seed, and the
decoder in Qwen2's layout with zero q/k/v biases. The tokenizer gains the audio tokens (special) and the Echo tags
``<seg> </seg> <think> </think> <answer> </answer>`` as single added tokens: byte-level BPE would otherwise merge
a tag with its neighbours (``</seg><think>`` tokenizes as ``</ seg >< think``), so the text could end in
``</seg>`` mid-token and the engine's stop on ``</seg>`` would depend on what follows. Each new token's embedding
row starts as the mean of the rows of the pieces its text was split into before. transformers' Qwen2-Audio class
does not tie the output head to the embeddings, so the head is written out as a copy of the (extended) matrix.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ...errors import CheckpointError
from ...protocol import TAGS
from ..config import TIME_MARKS_KEY
from .ct2 import whisper_encoder
from .gguf_llama import build_tokenizer, read_gguf_llama
from .hf_dir import atomic_dir, save_tensors, save_tokenizer, write_json, write_manifest
from .writers import feature_extractor_config

AUDIO_TOKENS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
TAG_TOKENS = list(TAGS)
QWEN2_AUDIO_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}Audio {{ audio_count.value }}: "
    "<|audio_bos|><|AUDIO|><|audio_eos|>\n{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _extend_tokenizer(tok, embed: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
    """Add the audio and tag tokens; return the embedding matrix with their rows (mean of their old pieces)."""
    from tokenizers import AddedToken

    pieces = {t: tok.encode(t, add_special_tokens=False).ids for t in AUDIO_TOKENS + TAG_TOKENS}
    present = [t for t in pieces if tok.token_to_id(t) is not None]
    if present:
        raise CheckpointError(f"the decoder's tokenizer already has {present}; it cannot be extended as echo-demo")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in AUDIO_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    ids = {t: tok.token_to_id(t) for t in pieces}
    if sorted(ids.values()) != list(range(embed.shape[0], embed.shape[0] + len(ids))):
        raise CheckpointError(f"the tokenizer has {tok.get_vocab_size()} entries but the embedding {embed.shape[0]} "
                              "rows; the added tokens would not get their own rows")
    rows = torch.stack([embed[pieces[t]].mean(0) for t in sorted(ids, key=ids.get)])
    return torch.cat([embed, rows]), ids


def _projector(d_in: int, d_out: int, text_rms: float, seed: int) -> dict[str, torch.Tensor]:
    """Linear d_in → d_out whose outputs start at about the RMS of the text embeddings (the encoder's LayerNormed
    states have unit variance per channel): weights N(0, text_rms²/d_in) from ``seed``, zero bias."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g) * (text_rms / d_in ** 0.5)
    return {"multi_modal_projector.linear.weight": w, "multi_modal_projector.linear.bias": torch.zeros(d_out)}


LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
ROWS = re.compile(r"^(.+)\[(\d+):\]$")  # "<tensor>[k:]": replaces that tensor's rows from k on


def apply_parts(tensors: dict[str, torch.Tensor], parts: str | os.PathLike | None) -> list[str]:
    """Apply the trained ``parts/*.safetensors``: a tensor named as in the checkpoint replaces it (same shape); a
    low-rank pair ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` adds ``lora_scale * B @ A`` (the file's
    metadata) to ``<module>.weight``, as peft merges a LoRA adapter; ``<tensor>[k:]`` replaces the rows from ``k`` on
    (e.g. the trained rows of the tokens the assembly added). Returns the files applied."""
    if parts is None:
        return []
    from safetensors import safe_open
    from safetensors.torch import load_file

    parts = Path(parts)
    files = sorted(parts.glob("*.safetensors")) if parts.is_dir() else []
    if not files and not (parts / "config.json").is_file():  # settings alone (parts_config) are parts too
        raise CheckpointError(f"{parts}: no *.safetensors parts to apply")
    for f in files:
        loaded = load_file(str(f))
        with safe_open(str(f), "pt") as sf:
            scale = (sf.metadata() or {}).get("lora_scale")
        for name, t in loaded.items():
            if name.endswith(LORA_B):
                if name.removesuffix(LORA_B) + LORA_A not in loaded:
                    raise CheckpointError(f"{f}: {name} has no {LORA_A.lstrip('.')} beside it")
                continue
            if name.endswith(LORA_A):
                module = name.removesuffix(LORA_A)
                if scale is None or module + LORA_B not in loaded:
                    raise CheckpointError(f"{f}: the low-rank part {module} needs {LORA_B.lstrip('.')} and the "
                                          "file's lora_scale metadata")
                name, t = module + ".weight", float(scale) * (loaded[module + LORA_B].float() @ t.float())
                if name in tensors and tuple(t.shape) == tuple(tensors[name].shape):
                    t = tensors[name].float() + t
            rows = ROWS.match(name)
            if rows and rows[1] in tensors:
                name, start, full = rows[1], int(rows[2]), tensors[rows[1]]
                if tuple(t.shape) != (full.shape[0] - start, *full.shape[1:]):
                    raise CheckpointError(f"{f}: part {rows[0]} has shape {list(t.shape)}, the checkpoint's rows "
                                          f"{start}: are {[full.shape[0] - start, *full.shape[1:]]}")
                t = torch.cat([full[:start].float(), t.float()])
            if name not in tensors:
                raise CheckpointError(f"{f}: part {name!r} is not a tensor of the assembled checkpoint")
            if tuple(t.shape) != tuple(tensors[name].shape):
                raise CheckpointError(f"{f}: part {name} has shape {list(t.shape)}, the checkpoint's is "
                                      f"{list(tensors[name].shape)}")
            tensors[name] = t.float()
    return [f.name for f in files]


def parts_config(parts: str | os.PathLike | None) -> dict:
    """The config keys trained parts were trained under (``config.json`` beside them: the time marks); {} if none.
    The parts only fit a model laid out the same way, so an assembly with them takes these."""
    path = None if parts is None else Path(parts) / "config.json"
    if path is None or not path.is_file():
        return {}
    d = json.loads(path.read_text())
    unknown = set(d) - {TIME_MARKS_KEY}
    if unknown:
        raise CheckpointError(f"{path}: keys {sorted(unknown)} are not parts settings (only {TIME_MARKS_KEY})")
    return d


def assemble(model_bin: str | os.PathLike, gguf_file: str | os.PathLike, out: str | os.PathLike,
             parts: str | os.PathLike | None = None, seed: int = 0, force: bool = False, progress: bool = True,
             sources: dict | None = None, time_marks_s: float | None = None) -> Path:
    """Build the Qwen2-Audio directory ``out`` from a CTranslate2 Whisper model.bin and a Llama GGUF decoder,
    then apply trained ``parts`` (a directory of safetensors named as in the checkpoint). ``sources`` is recorded
    in the manifest (what the directory was built from). ``time_marks_s``: the audio layout the model is (to be)
    trained with (``ModelConfig.time_marks_s``); None takes the parts' own (their ``config.json``), else none."""
    from tqdm.auto import tqdm

    steps = tqdm(total=5, desc="assembling", disable=not progress, unit="step")
    audio_tensors, audio_cfg = whisper_encoder(model_bin)
    steps.update()
    dec, text_cfg, tok_meta = read_gguf_llama(gguf_file, progress=progress)
    steps.update()
    tok = build_tokenizer(tok_meta, gguf_file)
    embed, new_ids = _extend_tokenizer(tok, dec.pop("model.embed_tokens.weight"))
    dec.pop("lm_head.weight", None)  # an untied head would need its own rows; echo-demo's decoder is tied
    tensors = {f"language_model.{k}": v for k, v in dec.items()}
    tensors["language_model.model.embed_tokens.weight"] = embed
    tensors["language_model.lm_head.weight"] = embed.clone()
    tensors.update(audio_tensors)
    text_rms = float(embed[: -len(new_ids)].pow(2).mean().sqrt())
    tensors.update(_projector(audio_cfg["d_model"], text_cfg["hidden_size"], text_rms, seed))
    applied = apply_parts(tensors, parts)
    steps.update()
    text_cfg = {**text_cfg, "vocab_size": embed.shape[0], "tie_word_embeddings": False}
    config = {"architectures": ["Qwen2AudioForConditionalGeneration"], "model_type": "qwen2_audio",
              "audio_config": audio_cfg, "text_config": text_cfg, "audio_token_index": new_ids["<|AUDIO|>"],
              "tie_word_embeddings": False, "dtype": "float32"}
    if time_marks_s is None:
        time_marks_s = parts_config(parts).get(TIME_MARKS_KEY, 0.0)
    if time_marks_s:
        config[TIME_MARKS_KEY] = float(time_marks_s)
    names = tok_meta["tokens"]
    with atomic_dir(Path(out), force) as d:
        save_tensors(tensors, d / "model.safetensors")
        steps.update()
        write_json(d / "config.json", config)
        save_tokenizer(tok, d, bos=names[tok_meta["bos_token_id"]], eos="<|im_end|>",
                       pad=names[tok_meta["pad_token_id"]], chat_template=QWEN2_AUDIO_TEMPLATE)
        write_json(d / "preprocessor_config.json", feature_extractor_config(audio_cfg["num_mel_bins"]))
        eos = [i for i in (tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")) if i is not None]
        write_json(d / "generation_config.json", {"bos_token_id": tok_meta["bos_token_id"], "eos_token_id": eos,
                                                  "pad_token_id": tok_meta["pad_token_id"]})
        write_manifest(d, sources if sources is not None else {"seed": seed, "parts": applied})
        steps.update()
    steps.close()
    return Path(out)
