"""Qwen3-Omni's thinker (audio + text): windowed conv2d audio tower, Qwen3 mixture-of-experts decoder.

Read as ``Qwen3OmniMoeThinkerForConditionalGeneration``, or as the thinker of a full
``Qwen3OmniMoeForConditionalGeneration``, whose talker and code2wav tensors are never read. Experts are read in
the layout transformers saves and the released checkpoints use (``mlp.experts.{e}.gate_proj.weight`` …); a file
of fused ``mlp.experts.gate_up_proj`` tensors (transformers' in-memory layout) is refused by name.
"""

from __future__ import annotations

from dataclasses import asdict

from ...errors import CheckpointError
from ..checkpoint import KeyMap
from ..config import audio_from_hf, audio_to_hf, decoder_from_hf, text_to_hf
from ..moe import MoeDecoderConfig
from ..qwen3_omni import Qwen3AudioConfig, Qwen3OmniMoeThinker
from .spec import SKIP_ANYWHERE, ModelFamily, require

THINKER = "Qwen3OmniMoeThinkerForConditionalGeneration"
FULL = "Qwen3OmniMoeForConditionalGeneration"

# save_pretrained / released names (model.layers…, audio_tower…) and transformers' in-memory names
# (model.language_model.layers…, model.audio_tower…, after from_transformers splits the fused experts)
KEYS = KeyMap(SKIP_ANYWHERE + [
    (r"^(talker|code2wav)\.", None),                # a full Qwen3-Omni: speech output, not needed to think
    (r"^(model\.)?visual\.", None),                 # the vision tower: echo is audio + text
    (r"^(model\.)?audio_tower\.positional_embedding\.", None),  # computed, not loaded
    (r"^(?:model\.)?audio_tower\.", "audio_tower."),
    (r"^model\.language_model\.", "decoder."),
    (r"^model\.", "decoder."),
    (r"^lm_head\.weight$", "lm_head.weight"),
])

_MOE_KEYS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "decoder_sparse_step")


def from_hf(d: dict) -> dict:
    audio, text = d.get("audio_config") or {}, d.get("text_config") or {}
    if not text or not audio:
        raise CheckpointError(f"{d.get('architectures') or d.get('model_type') or 'this config'} has no thinker "
                              "text_config/audio_config (a talker-only checkpoint?); echo reads Qwen3-Omni's thinker")
    if text.get("num_experts", 128) <= 0:
        raise CheckpointError("a Qwen3-Omni thinker with num_experts=0 (a dense decoder) is not a layout echo reads")
    base = decoder_from_hf(text, bool(d.get("tie_word_embeddings", False)))
    decoder = MoeDecoderConfig(**asdict(base), **{k: text[k] for k in _MOE_KEYS if k in text},
                               mlp_only_layers=tuple(text.get("mlp_only_layers") or ()),
                               attention_bias=bool(text.get("attention_bias", False)))
    whisper = audio_from_hf(audio, n_window=audio.get("n_window", 50), output_dim=audio.get("output_dim", 3584))
    enc = Qwen3AudioConfig(**asdict(whisper), downsample_hidden_size=audio.get("downsample_hidden_size", 480),
                           n_window_infer=audio.get("n_window_infer", 800))
    # the thinker config names the run's start token only; the loader takes the end token from the tokenizer
    return dict(audio=enc, decoder=decoder, audio_token_id=int(d.get("audio_token_id", 151675)),
                audio_bos_token_id=d.get("audio_start_token_id"), audio_eos_token_id=d.get("audio_end_token_id"))


def to_hf(cfg) -> dict:
    a, t = cfg.audio, cfg.decoder
    audio = dict(audio_to_hf(a), n_window=a.n_window, n_window_infer=a.n_window_infer, output_dim=a.output_dim,
                 downsample_hidden_size=a.downsample_hidden_size, model_type="qwen3_omni_moe_audio_encoder")
    text = dict(text_to_hf(t), model_type="qwen3_omni_moe_text", attention_bias=t.attention_bias,
                mlp_only_layers=list(t.mlp_only_layers), **{k: getattr(t, k) for k in _MOE_KEYS})
    half = t.head_dim // 2  # M-RoPE sections must cover head_dim/2; any split is equivalent for audio+text
    text["rope_parameters"].update(mrope_section=[half - 2 * (half // 3), half // 3, half // 3], mrope_interleaved=True)
    # echo never builds the vision tower; a minimal one keeps the transformers twin small
    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=1, out_hidden_size=t.hidden_size,
                  deepstack_visual_indexes=[], model_type="qwen3_omni_moe_vision_encoder")
    return dict(architectures=[cfg.architecture], model_type=cfg.spec.model_type, audio_config=audio,
                text_config=text, vision_config=vision, audio_token_id=cfg.audio_token_id,
                audio_start_token_id=cfg.audio_bos_token_id, audio_end_token_id=cfg.audio_eos_token_id,
                tie_word_embeddings=t.tie_word_embeddings)


def check(cfg) -> None:
    require(isinstance(cfg.audio, Qwen3AudioConfig) and isinstance(cfg.decoder, MoeDecoderConfig),
            "a qwen3_omni_moe model needs a Qwen3AudioConfig audio and a MoeDecoderConfig decoder")
    require(cfg.audio.output_dim == cfg.decoder.hidden_size,
            f"audio.output_dim={cfg.audio.output_dim} != decoder hidden_size={cfg.decoder.hidden_size}")


def chat_template() -> str:
    return TEMPLATE


def hf_config_extras(ids: dict[str, int]) -> dict:
    return dict(image_token_id=ids["<|IMAGE|>"], video_token_id=ids["<|VIDEO|>"],
                vision_start_token_id=ids["<|vision_bos|>"])


# the released template's audio + text subset: a system turn only when given, audio as
# <|audio_start|><|audio_pad|><|audio_end|> (the processor expands the pad)
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "<|audio_start|><|audio_pad|><|audio_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

FAMILY = ModelFamily(
    name="qwen3_omni_moe", architecture=THINKER, model_type="qwen3_omni_moe_thinker", module=Qwen3OmniMoeThinker,
    key_map=KEYS, config_from_hf=from_hf, config_to_hf=to_hf, check=check,
    hf_config_class="Qwen3OmniMoeThinkerConfig", chat_template=chat_template,
    wrappers={FULL: "thinker"}, model_types={"qwen3_omni_moe_thinker": THINKER, "qwen3_omni_moe": FULL},
    strip_prefix="thinker.", feature_chunk_s=300, packed_features=True, extra_frames=0,
    hf_config_extras=hf_config_extras, audio_token="<|audio_pad|>", audio_bos_token="<|audio_start|>",
    audio_eos_token="<|audio_end|>", audio_tokens_per_s=13.0,
    time_marks=False,  # transformers' M-RoPE index for it reads each audio run as one unbroken block
)
