"""Named model shapes shared by tests and benchmarks (``preset(name)`` → ``ModelConfig``).

The tiny ones keep parity tests fast while still exercising grouped-query ratios 1/2/4, tied and untied heads (transformers ties only the thinker's) and
both audio towers; ``*-bench`` is the ~108M-parameter decoder the CPU benchmarks use (hidden 1024, 12 layers,
16 heads, 4 KV heads); ``*-7b`` are the released shapes, for GPU roofline runs on random weights.
Token ids are placeholders a test overrides with ``dataclasses.replace`` once its tokenizer assigns them.
"""

from __future__ import annotations

import dataclasses

from .config import AudioEncoderConfig, DecoderConfig, ModelConfig

_TINY_AUDIO = dict(num_mel_bins=128, d_model=32, num_layers=2, num_heads=2, ffn_dim=64, max_source_positions=1500)


def _tiny_decoder(kv_heads: int, tie: bool) -> DecoderConfig:
    return DecoderConfig(vocab_size=384, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                         num_kv_heads=kv_heads, head_dim=16, rope_theta=10000.0, tie_word_embeddings=tie,
                         max_position_embeddings=4096)


def _omni(decoder: DecoderConfig, audio: dict, n_window: int = 100) -> ModelConfig:
    return ModelConfig(family="qwen2_5_omni", decoder=decoder,
                       audio=AudioEncoderConfig(**audio, n_window=n_window, output_dim=decoder.hidden_size),
                       audio_token_id=3, audio_bos_token_id=4, audio_eos_token_id=5)


def _qwen2_audio(decoder: DecoderConfig, audio: dict) -> ModelConfig:
    return ModelConfig(family="qwen2_audio", decoder=decoder,
                       audio=AudioEncoderConfig(**audio, n_window=0, output_dim=audio["d_model"]),
                       audio_token_id=3, audio_bos_token_id=4, audio_eos_token_id=5)


def _audioflamingo3(decoder: DecoderConfig, audio: dict) -> ModelConfig:
    return ModelConfig(family="audioflamingo3", decoder=decoder,
                       audio=AudioEncoderConfig(**audio, n_window=0, output_dim=audio["d_model"]),
                       audio_token_id=3, audio_bos_token_id=None, audio_eos_token_id=None)


def _qwen3_omni(kv_heads: int, norm_topk: bool, layers: int = 3, **moe) -> ModelConfig:
    """Tiny Qwen3-Omni thinker: 1 s chunks (n_window 50), 2 s attention windows, 8 experts of width 24."""
    from .moe import MoeDecoderConfig
    from .qwen3_omni import Qwen3AudioConfig

    base = dataclasses.asdict(_tiny_decoder(kv_heads, False))
    decoder = MoeDecoderConfig(**dict(base, num_layers=layers), num_experts=8, num_experts_per_tok=2,
                               moe_intermediate_size=24, norm_topk_prob=norm_topk, **moe)
    audio = Qwen3AudioConfig(**_TINY_AUDIO, n_window=50, output_dim=64, downsample_hidden_size=8, n_window_infer=200)
    return ModelConfig(family="qwen3_omni_moe", decoder=decoder, audio=audio, audio_token_id=3, audio_bos_token_id=4,
                       audio_eos_token_id=5)


def _qwen3_omni_bench() -> ModelConfig:
    """A mid-size MoE decoder for the decode benchmark: 64 experts of width 256, 8 per token, 6 layers."""
    from .moe import MoeDecoderConfig
    from .qwen3_omni import Qwen3AudioConfig

    decoder = MoeDecoderConfig(**dict(dataclasses.asdict(_BENCH_DECODER), num_layers=6), num_experts=64,
                               num_experts_per_tok=8, moe_intermediate_size=256)
    audio = Qwen3AudioConfig(**_BENCH_AUDIO, n_window=50, output_dim=1024, downsample_hidden_size=64)
    return ModelConfig(family="qwen3_omni_moe", decoder=decoder, audio=audio, audio_token_id=3, audio_bos_token_id=4,
                       audio_eos_token_id=5)


_BENCH_DECODER = DecoderConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_layers=12,
                               num_heads=16, num_kv_heads=4, head_dim=64, rope_theta=1_000_000.0)
_BENCH_AUDIO = dict(num_mel_bins=128, d_model=512, num_layers=6, num_heads=8, ffn_dim=2048, max_source_positions=1500)
_7B_DECODER = DecoderConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                            num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=1_000_000.0)
_7B_AUDIO = dict(num_mel_bins=128, d_model=1280, num_layers=32, num_heads=20, ffn_dim=5120, max_source_positions=1500)

PRESETS = {
    "omni-tiny-gqa1": lambda: _omni(_tiny_decoder(4, False), _TINY_AUDIO),
    "omni-tiny-gqa2": lambda: _omni(_tiny_decoder(2, False), _TINY_AUDIO),
    "omni-tiny-gqa4": lambda: _omni(_tiny_decoder(1, False), _TINY_AUDIO),
    "omni-tiny-tied": lambda: _omni(_tiny_decoder(2, True), _TINY_AUDIO),
    "qwen2audio-tiny-gqa2": lambda: _qwen2_audio(_tiny_decoder(2, False), _TINY_AUDIO),
    "qwen2audio-tiny-gqa4": lambda: _qwen2_audio(_tiny_decoder(1, False), _TINY_AUDIO),
    "af3-tiny-gqa2": lambda: _audioflamingo3(_tiny_decoder(2, False), _TINY_AUDIO),
    "af3-tiny-gqa4": lambda: _audioflamingo3(_tiny_decoder(1, False), _TINY_AUDIO),
    # layer 1 dense; then kv heads 1, raw top-k weights, every 2nd layer sparse, attention biases
    "qwen3omni-tiny-gqa2": lambda: _qwen3_omni(2, True, mlp_only_layers=(1,)),
    "qwen3omni-tiny-gqa4": lambda: _qwen3_omni(1, False, decoder_sparse_step=2, attention_bias=True),
    "qwen3omni-moe-bench": _qwen3_omni_bench,
    "omni-bench": lambda: _omni(_BENCH_DECODER, _BENCH_AUDIO),
    "qwen2audio-bench": lambda: _qwen2_audio(_BENCH_DECODER, _BENCH_AUDIO),
    "omni-7b": lambda: _omni(_7B_DECODER, _7B_AUDIO),
    "qwen2audio-7b": lambda: _qwen2_audio(DecoderConfig(vocab_size=156032, hidden_size=4096, intermediate_size=11008,
                                                        num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                                                        rope_theta=10000.0), _7B_AUDIO),
}


def preset(name: str) -> ModelConfig:
    """A fresh ``ModelConfig`` for a named shape; raises ``KeyError`` listing the names on a typo."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
