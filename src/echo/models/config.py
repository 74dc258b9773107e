"""Model configs: small slotted dataclasses validated in ``__post_init__``, read from a Hugging Face config.

``ModelConfig.from_hf`` accepts the config of any supported architecture (a ``transformers`` config object or the
parsed config.json dict) and keeps only what echo's modules need; ``to_hf_dict`` writes it back as a config.json
dict, so tests and benchmarks can build the transformers twin of any preset.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError

# the architecture names, kept importable from here; the registry (``families``) is what knows them
OMNI_THINKER = "Qwen2_5OmniThinkerForConditionalGeneration"
OMNI_FULL = "Qwen2_5OmniForConditionalGeneration"
OMNI_FULL_LEGACY = "Qwen2_5OmniModel"  # the name in the released Qwen2.5-Omni-7B config.json
QWEN2_AUDIO = "Qwen2AudioForConditionalGeneration"
TIME_MARKS_KEY = "echo_time_marks_s"  # config.json key of ModelConfig.time_marks_s


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")


@dataclass(slots=True)
class AudioEncoderConfig:
    """Whisper-style audio encoder. ``n_window`` > 0 means Qwen2.5-Omni's chunked encoder (chunks of
    ``2 * n_window`` mel frames attend only within themselves); 0 means Qwen2-Audio's full 30 s window."""

    num_mel_bins: int = 128
    d_model: int = 1280
    num_layers: int = 32
    num_heads: int = 20
    ffn_dim: int = 5120
    max_source_positions: int = 1500
    n_window: int = 100
    output_dim: int = 3584  # Qwen2.5-Omni's in-tower projection; unused by Qwen2-Audio (its projector is outside)

    def __post_init__(self):
        for name in ("num_mel_bins", "d_model", "num_layers", "num_heads", "ffn_dim", "max_source_positions",
                     "output_dim"):
            _positive(f"audio.{name}", getattr(self, name))
        if not isinstance(self.n_window, int) or self.n_window < 0:
            raise ConfigError(f"audio.n_window must be an int >= 0, got {self.n_window!r}")
        if self.d_model % self.num_heads:
            raise ConfigError(f"audio.d_model={self.d_model} is not divisible by audio.num_heads={self.num_heads}")


@dataclass(slots=True)
class DecoderConfig:
    """Qwen2-style decoder: RMSNorm, grouped-query attention with q/k/v bias, SwiGLU, rotary positions."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "max_position_embeddings"):
            _positive(name, getattr(self, name))
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not self.rope_theta > 0 or not self.rms_norm_eps > 0:
            raise ConfigError(f"rope_theta and rms_norm_eps must be > 0, got {self.rope_theta}, {self.rms_norm_eps}")


@dataclass(slots=True)
class ModelConfig:
    """One audio language model: which family, its encoder and decoder shapes, and its audio special tokens."""

    family: str = "qwen2_5_omni"  # a name registered in echo.models.families ("qwen2_5_omni", "qwen2_audio")
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    audio_token_id: int = 151646
    audio_bos_token_id: int | None = 151647
    audio_eos_token_id: int | None = 151648
    # seconds between the time marks written into each audio run (``echo.protocol.TimeMarks``); 0: none, as in
    # every released checkpoint. Kept in config.json as ``echo_time_marks_s`` (transformers ignores the key).
    time_marks_s: float = 0.0

    def __post_init__(self):
        self.spec.check(self)
        if not 0 <= self.audio_token_id < self.decoder.vocab_size:
            raise ConfigError(f"audio_token_id={self.audio_token_id} outside the vocabulary of "
                              f"{self.decoder.vocab_size}")
        if isinstance(self.time_marks_s, bool) or not isinstance(self.time_marks_s, (int, float)) \
                or not math.isfinite(self.time_marks_s) or self.time_marks_s < 0:
            raise ConfigError(f"time_marks_s must be a number of seconds >= 0, got {self.time_marks_s!r}")
        if self.time_marks_s and not (self.spec.time_marks and self.spec.audio_bos_token):
            raise ConfigError(f"family {self.family!r} cannot take time marks (time_marks_s={self.time_marks_s}): "
                              "its positions carry audio time (TMRoPE) over unbroken audio runs, or no tokens "
                              "delimit its audio runs")

    @property
    def spec(self):
        """This config's ``ModelFamily`` (raises ``ConfigError`` for an unregistered family)."""
        from .families import family

        return family(self.family)

    @property
    def architecture(self) -> str:
        return self.spec.architecture

    # ---- Hugging Face config <-> ModelConfig ---------------------------------------------------------------------

    @classmethod
    def from_hf(cls, hf) -> "ModelConfig":
        """Build from a ``transformers`` config object or a config.json dict of a supported architecture.

        A full Qwen2.5-Omni config (thinker + talker + token2wav) yields its thinker. Raises ``CheckpointError``
        naming the supported architectures for anything else, ``ConfigError`` for unsupported options.
        """
        from .families import architecture_of, family_for_architecture

        d = hf if isinstance(hf, dict) else hf.to_dict()
        arch = architecture_of(d)
        spec = family_for_architecture(arch)
        return cls(family=spec.name, **spec.config_from_hf(spec.unwrap_config(d, arch)),
                   time_marks_s=d.get(TIME_MARKS_KEY, 0.0))

    def to_hf_dict(self) -> dict:
        """The config.json dict of the transformers class this config mirrors (thinker or Qwen2-Audio)."""
        d = self.spec.config_to_hf(self)
        if self.time_marks_s:
            d[TIME_MARKS_KEY] = self.time_marks_s
        return d

    def to_dict(self) -> dict:
        return asdict(self)


def audio_to_hf(a: AudioEncoderConfig) -> dict:
    """The Whisper-style ``audio_config`` keys every family writes (a family adds its own)."""
    return dict(num_mel_bins=a.num_mel_bins, d_model=a.d_model, encoder_layers=a.num_layers,
                encoder_attention_heads=a.num_heads, encoder_ffn_dim=a.ffn_dim,
                max_source_positions=a.max_source_positions, activation_function="gelu")


def text_to_hf(t: DecoderConfig) -> dict:
    """The Qwen2 ``text_config`` keys every family writes (a family adds its model_type and rope extras)."""
    return dict(vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
                head_dim=t.head_dim, rms_norm_eps=t.rms_norm_eps, max_position_embeddings=t.max_position_embeddings,
                tie_word_embeddings=t.tie_word_embeddings,
                rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta})


def audio_from_hf(a: dict, n_window: int, output_dim: int) -> AudioEncoderConfig:
    act = a.get("activation_function", "gelu")
    if act != "gelu":
        raise ConfigError(f"audio encoder activation {act!r} is not supported (only 'gelu')")
    if a.get("scale_embedding", False):
        raise ConfigError("audio encoder scale_embedding=True is not supported")
    return AudioEncoderConfig(num_mel_bins=a.get("num_mel_bins", 128), d_model=a.get("d_model", 1280),
                              num_layers=a.get("encoder_layers", 32), num_heads=a.get("encoder_attention_heads", 20),
                              ffn_dim=a.get("encoder_ffn_dim", 5120),
                              max_source_positions=a.get("max_source_positions", 1500), n_window=n_window,
                              output_dim=output_dim)


def decoder_from_hf(t: dict, tie: bool) -> DecoderConfig:
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"rope type {rope_type!r} is not supported (only 'default' rotary / M-RoPE)")
    if t.get("use_sliding_window", False):
        raise ConfigError("use_sliding_window=True is not supported")
    if t.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"decoder activation {t.get('hidden_act')!r} is not supported (only 'silu')")
    hidden, heads = t.get("hidden_size", 3584), t.get("num_attention_heads", 28)
    return DecoderConfig(vocab_size=t.get("vocab_size", 152064), hidden_size=hidden,
                         intermediate_size=t.get("intermediate_size", 18944),
                         num_layers=t.get("num_hidden_layers", 28), num_heads=heads,
                         num_kv_heads=t.get("num_key_value_heads") or heads,
                         head_dim=t.get("head_dim") or hidden // heads,
                         rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 1_000_000.0))),
                         rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)), tie_word_embeddings=tie,
                         max_position_embeddings=t.get("max_position_embeddings", 32768))
