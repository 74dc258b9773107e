"""Qwen2-Audio: Whisper encoder over a 30 s window, average pool, linear projector, Qwen2 decoder."""

from __future__ import annotations

from ..checkpoint import KeyMap
from ..config import audio_from_hf, audio_to_hf, decoder_from_hf, text_to_hf
from ..qwen2_audio import Qwen2Audio
from .spec import SKIP_ANYWHERE, ModelFamily, require

ARCHITECTURE = "Qwen2AudioForConditionalGeneration"

KEYS = KeyMap(SKIP_ANYWHERE + [
    (r"^(?:model\.)?audio_tower\.", "audio_tower."),
    (r"^(?:model\.)?multi_modal_projector\.linear\.", "projector."),
    (r"^language_model\.model\.", "decoder."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^model\.language_model\.", "decoder."),
    (r"^lm_head\.weight$", "lm_head.weight"),
])


def from_hf(d: dict) -> dict:
    audio, text = d.get("audio_config") or {}, d.get("text_config") or {}
    tie = bool(d.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    # the audio bos/eos ids live in the tokenizer only; the loader fills them in
    return dict(audio=audio_from_hf(audio, n_window=0, output_dim=audio.get("d_model", 1280)),
                decoder=decoder_from_hf(text, tie),
                audio_token_id=int(d.get("audio_token_index", d.get("audio_token_id", 151646))),
                audio_bos_token_id=None, audio_eos_token_id=None)


def to_hf(cfg) -> dict:
    audio = dict(audio_to_hf(cfg.audio), model_type="qwen2_audio_encoder")
    text = dict(text_to_hf(cfg.decoder), model_type="qwen2")
    return dict(architectures=[cfg.architecture], model_type=cfg.spec.model_type, audio_config=audio, text_config=text,
                audio_token_index=cfg.audio_token_id, tie_word_embeddings=cfg.decoder.tie_word_embeddings)


def check(cfg) -> None:
    require(cfg.audio.n_window == 0, "a qwen2_audio encoder attends over the whole 30 s window: n_window must be 0")


def chat_template() -> str:
    from transformers import Qwen2AudioProcessor

    return Qwen2AudioProcessor.default_chat_template.fget(None)


FAMILY = ModelFamily(
    name="qwen2_audio", architecture=ARCHITECTURE, model_type="qwen2_audio", module=Qwen2Audio, key_map=KEYS,
    config_from_hf=from_hf, config_to_hf=to_hf, check=check, hf_config_class="Qwen2AudioConfig",
    chat_template=chat_template, model_types={"qwen2_audio": ARCHITECTURE},
    # the conv stem reads 2 frames past each audio's end, which must be the extractor's own padding
    feature_chunk_s=30, packed_features=False, extra_frames=2,
)
