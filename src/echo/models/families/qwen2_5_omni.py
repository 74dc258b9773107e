"""Qwen2.5-Omni's thinker (audio + text): chunked audio tower with its own projection, Qwen2 decoder with M-RoPE.

Read as ``Qwen2_5OmniThinkerForConditionalGeneration``, or as the thinker of a full
``Qwen2_5OmniForConditionalGeneration`` (legacy name ``Qwen2_5OmniModel``), whose talker and token2wav tensors are
never read.
"""

from __future__ import annotations

from ..checkpoint import KeyMap
from ..config import audio_from_hf, audio_to_hf, decoder_from_hf, text_to_hf
from ..thinker import Qwen2_5OmniThinker
from .spec import SKIP_ANYWHERE, ModelFamily, require

THINKER = "Qwen2_5OmniThinkerForConditionalGeneration"
FULL = "Qwen2_5OmniForConditionalGeneration"
FULL_LEGACY = "Qwen2_5OmniModel"  # the name in the released Qwen2.5-Omni-7B config.json

# released checkpoints and save_pretrained (legacy names), and transformers>=5 module names. First match wins.
KEYS = KeyMap(SKIP_ANYWHERE + [
    (r"^(talker|token2wav)\.", None),               # a full Qwen2.5-Omni: speech output, not needed to think
    (r"^(model\.)?visual\.", None),                 # the vision tower: echo is audio + text
    (r"^(model\.)?audio_tower\.audio_bos_eos_token\.", None),  # present in checkpoints, unused by the forward
    (r"^(model\.)?audio_tower\.positional_embedding$", None),  # computed, not loaded
    (r"^(?:model\.)?audio_tower\.", "audio_tower."),
    (r"^model\.language_model\.", "decoder."),
    (r"^model\.", "decoder."),
    (r"^lm_head\.weight$", "lm_head.weight"),
])


def from_hf(d: dict) -> dict:
    audio, text = d.get("audio_config") or {}, d.get("text_config") or {}
    enc = audio_from_hf(audio, n_window=audio.get("n_window", 100), output_dim=audio.get("output_dim", 3584))
    return dict(audio=enc,
                decoder=decoder_from_hf(text, bool(d.get("tie_word_embeddings", False))),
                audio_token_id=int(d.get("audio_token_index", d.get("audio_token_id", 151646))),
                audio_bos_token_id=d.get("audio_start_token_id", 151647),
                audio_eos_token_id=d.get("audio_end_token_id", 151648))


def to_hf(cfg) -> dict:
    a, t = cfg.audio, cfg.decoder
    audio = dict(audio_to_hf(a), n_window=a.n_window, output_dim=a.output_dim, model_type="qwen2_5_omni_audio_encoder")
    text = text_to_hf(t)
    half = t.head_dim // 2  # M-RoPE sections must cover head_dim/2; any split is equivalent for audio+text
    text["rope_parameters"]["mrope_section"] = [half - 2 * (half // 3), half // 3, half // 3]
    text["model_type"] = "qwen2_5_omni_text"
    # echo never builds the vision tower; a minimal one keeps the transformers twin small
    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=1, out_hidden_size=t.hidden_size,
                  fullatt_block_indexes=[0], model_type="qwen2_5_omni_vision_encoder")
    return dict(architectures=[cfg.architecture], model_type=cfg.spec.model_type, audio_config=audio,
                text_config=text, vision_config=vision, audio_token_index=cfg.audio_token_id,
                audio_start_token_id=cfg.audio_bos_token_id, audio_end_token_id=cfg.audio_eos_token_id,
                tie_word_embeddings=t.tie_word_embeddings)


def check(cfg) -> None:
    require(cfg.audio.n_window > 0, "a qwen2_5_omni audio encoder needs n_window > 0 (its chunk is 2*n_window frames)")
    require(cfg.audio.output_dim == cfg.decoder.hidden_size,
            f"audio.output_dim={cfg.audio.output_dim} != decoder hidden_size={cfg.decoder.hidden_size}")


def chat_template() -> str:
    return OMNI_TEMPLATE


def hf_config_extras(ids: dict[str, int]) -> dict:
    # vision_start_token_id is read by transformers' rope index but absent from its config class; released
    # config.json files carry it as an extra key
    return dict(image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
                vision_start_token_id=ids["<|vision_bos|>"])


OMNI_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

FAMILY = ModelFamily(
    name="qwen2_5_omni", architecture=THINKER, model_type="qwen2_5_omni_thinker", module=Qwen2_5OmniThinker,
    key_map=KEYS, config_from_hf=from_hf, config_to_hf=to_hf, check=check,
    hf_config_class="Qwen2_5OmniThinkerConfig", chat_template=chat_template,
    wrappers={FULL: "thinker", FULL_LEGACY: "thinker"},
    model_types={"qwen2_5_omni_thinker": THINKER, "qwen2_5_omni": FULL}, strip_prefix="thinker.",
    feature_chunk_s=300, packed_features=True, extra_frames=0, hf_config_extras=hf_config_extras,
    time_marks=False,  # its M-RoPE index (TMRoPE) gives audio tokens time positions and assumes unbroken runs
)
