"""Audio Flamingo 3: Whisper encoder over 30 s windows (average pool), two-layer GELU projector, Qwen2 decoder.

The encoder and decoder are Qwen2-Audio's (``AudioFlamingo3`` subclasses ``Qwen2Audio`` for the projector only).
Its processor cuts audio into consecutive 30 s windows, up to 20 (600 s), each featurised and encoded as its own
clip, and writes the windows' tokens as one run of ``<sound>`` with no tokens around it; a re-listened span is
laid out the same way after ``</seg>``. A full window is 3000 mel frames, 750 tokens, so the tokens of the windows
add up to ``num_audio_tokens`` of the audio's frames.
"""

from __future__ import annotations

from ...errors import CheckpointError
from ..audioflamingo3 import AudioFlamingo3
from ..checkpoint import KeyMap
from ..config import audio_from_hf, audio_to_hf, decoder_from_hf, text_to_hf
from .spec import SKIP_ANYWHERE, ModelFamily, require

ARCHITECTURE = "AudioFlamingo3ForConditionalGeneration"

# released checkpoints (save_pretrained's legacy names) and transformers>=5 module names
KEYS = KeyMap(SKIP_ANYWHERE + [
    (r"^(?:model\.)?audio_tower\.", "audio_tower."),
    (r"^(?:model\.)?multi_modal_projector\.(linear_[12])\.", r"projector.\1."),
    (r"^language_model\.model\.", "decoder."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^model\.language_model\.", "decoder."),
    (r"^lm_head\.weight$", "lm_head.weight"),
])

# AudioFlamingo3EncoderConfig's own names for the Whisper keys echo reads
_ENCODER_NAMES = {"d_model": "hidden_size", "encoder_layers": "num_hidden_layers",
                  "encoder_attention_heads": "num_attention_heads", "encoder_ffn_dim": "intermediate_size"}


def from_hf(d: dict) -> dict:
    audio, text = dict(d.get("audio_config") or {}), d.get("text_config") or {}
    for whisper, own in _ENCODER_NAMES.items():
        if own in audio:
            audio.setdefault(whisper, audio[own])
    act, bias = d.get("projector_hidden_act", "gelu"), d.get("projector_bias", True)
    if act != "gelu" or bias is not True:
        raise CheckpointError(f"{ARCHITECTURE} with projector_hidden_act={act!r}, projector_bias={bias!r}: echo "
                              "reads the released projector only (gelu, biased)")
    # transformers never ties this model's head to its embeddings (_tied_weights_keys is None)
    return dict(audio=audio_from_hf(audio, n_window=0, output_dim=audio.get("d_model", 1280)),
                decoder=decoder_from_hf(text, False), audio_token_id=int(d.get("audio_token_id", 151669)),
                audio_bos_token_id=None, audio_eos_token_id=None)


def to_hf(cfg) -> dict:
    a = audio_to_hf(cfg.audio)
    audio = {_ENCODER_NAMES.get(k, k): v for k, v in a.items()} | {"model_type": "audioflamingo3_encoder"}
    text = dict(text_to_hf(cfg.decoder), model_type="qwen2")
    return dict(architectures=[cfg.architecture], model_type=cfg.spec.model_type, audio_config=audio,
                text_config=text, audio_token_id=cfg.audio_token_id, projector_hidden_act="gelu",
                projector_bias=True)


def check(cfg) -> None:
    require(cfg.audio.n_window == 0, "an audioflamingo3 encoder attends over the whole 30 s window: n_window must be 0")
    require(not cfg.decoder.tie_word_embeddings, "audioflamingo3's head is never tied to its embeddings")
    require(cfg.audio_bos_token_id is None and cfg.audio_eos_token_id is None,
            "audioflamingo3 lays audio out with no bos/eos tokens around it: both must be None")


def chat_template() -> str:
    return AF3_TEMPLATE


# the released processor's template: a system turn unless one is given; in a turn with audio, one <sound> (the
# processor expands it) before the turn's text parts joined
AF3_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages if message['content'] is not none %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% set heard = namespace(audio=False, text='') %}{% for part in message['content'] %}"
    "{% if part.get('type') == 'audio' or 'audio' in part %}{% set heard.audio = True %}"
    "{% elif part.get('type') == 'text' or 'text' in part %}{% set heard.text = heard.text + part['text'] %}"
    "{% endif %}{% endfor %}{% if heard.audio %}<sound>{% endif %}{{ heard.text }}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

FAMILY = ModelFamily(
    name="audioflamingo3", architecture=ARCHITECTURE, model_type="audioflamingo3", module=AudioFlamingo3,
    key_map=KEYS, config_from_hf=from_hf, config_to_hf=to_hf, check=check, hf_config_class="AudioFlamingo3Config",
    chat_template=chat_template, model_types={"audioflamingo3": ARCHITECTURE},
    # padded features with the extractor's 2 frames past each window's end, as Qwen2-Audio's; 20 windows of 30 s
    feature_chunk_s=30, packed_features=False, extra_frames=2, feature_windows=20,
    audio_token="<sound>", audio_bos_token=None, audio_eos_token=None,
)
