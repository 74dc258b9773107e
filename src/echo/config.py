"""User-facing configuration: engine sizing, sampling, and the re-listen policy. Slotted dataclasses validated in
``__post_init__`` (a bad value raises ConfigError naming the field)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal, Sequence

from .errors import ConfigError


def _integer(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise ConfigError(f"{type(obj).__name__}.{name} must be an integer, got {value!r}")


def _finite(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigError(f"{type(obj).__name__}.{name} must be a finite number, got {value!r}")


def _positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be positive, got {value!r}")


@dataclasses.dataclass(slots=True)
class RelistenPolicy:
    """What the engine does at each ``</seg>`` a sequence writes; one that ends inside a token merged
    with what follows (``</seg>.``) is cut right after the tag first (engine/postprocess.py). The order in which
    the checks below apply: docs/architecture.md §6.

    The last ``<seg>a, b</seg>`` gives the span in seconds. Model output is never an exception: every case below
    maps to an action recorded in the result (``relisten``, ``skip`` = keep decoding with nothing inserted, or
    ``stop`` = finish the sequence).

    Attributes:
        min_span_s: spans shorter than this (after clamping) are skipped; the reference uses 0.2 s.
        max_turns: re-listen turns per sequence; a turn ends at each ``</seg>``, usable or not.
        after_max_turns: "continue" (echo's default: keep decoding to the answer, no more re-listens) or "stop"
            (the reference loop, which ends there, often before any answer; for exact comparisons).
        out_of_range: a span reaching outside [0, clip duration]: "clamp" it to the clip, "skip" or "stop".
        reversed_span: start > end: "skip", "swap" the ends, or "stop".
        malformed: text between the tags that is not two numbers: "skip" or "stop".
        max_span_s: longer spans are cut to this many seconds from their start (None: the clip and the feature
            extractor's max length are the only limits).
    """

    min_span_s: float = 0.2
    max_turns: int = 8
    after_max_turns: Literal["continue", "stop"] = "continue"
    out_of_range: Literal["clamp", "skip", "stop"] = "clamp"
    reversed_span: Literal["skip", "swap", "stop"] = "skip"
    malformed: Literal["skip", "stop"] = "skip"
    max_span_s: float | None = None

    def __post_init__(self):
        _finite(self, "min_span_s")
        if self.max_span_s is not None:
            _finite(self, "max_span_s")
        _integer(self, "max_turns")
        if self.min_span_s < 0:
            raise ConfigError(f"RelistenPolicy.min_span_s must be >= 0, got {self.min_span_s}")
        if self.max_turns < 0:
            raise ConfigError(f"RelistenPolicy.max_turns must be >= 0, got {self.max_turns}")
        _positive(self, "max_span_s")
        for name, allowed in (("after_max_turns", ("continue", "stop")), ("out_of_range", ("clamp", "skip", "stop")),
                              ("reversed_span", ("skip", "swap", "stop")), ("malformed", ("skip", "stop"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"RelistenPolicy.{name} must be one of {allowed}, got {getattr(self, name)!r}")


@dataclasses.dataclass(slots=True)
class SamplingParams:
    """Per-request sampling (vLLM's names). temperature 0 is greedy."""

    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k
    top_p: float = 1.0
    max_new_tokens: int = 1024
    n: int = 1  # samples per prompt; they share the prompt's KV blocks
    seed: int | None = None
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    logprobs: bool = False  # return the log-prob of every sampled token (GRPO consumes them)
    relisten: RelistenPolicy | None = None  # this request's re-listen policy (None: the engine's)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field (the engine re-checks at admission: a dataclass stays mutable after construction)."""
        _finite(self, "temperature", "top_p")
        _integer(self, "top_k", "max_new_tokens", "n", "seed")
        if self.relisten is not None and not isinstance(self.relisten, RelistenPolicy):
            raise ConfigError(f"SamplingParams.relisten must be a RelistenPolicy or None, got {self.relisten!r}")
        if self.temperature < 0:
            raise ConfigError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"SamplingParams.top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        _positive(self, "max_new_tokens", "n")
        # sample i is seeded seed + i, and a torch generator takes a 64-bit seed
        if self.seed is not None and not 0 <= self.seed <= 2**63 - self.n:
            raise ConfigError(f"SamplingParams.seed must be in [0, 2**63 - n], got {self.seed}")
        for name in ("ignore_eos", "logprobs"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"SamplingParams.{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        try:
            self.stop = tuple(self.stop)
        except TypeError:
            raise ConfigError(f"SamplingParams.stop must be a string or a sequence of strings, got {self.stop!r}") \
                from None
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"SamplingParams.stop must be non-empty strings, got {self.stop!r}")


@dataclasses.dataclass(slots=True)
class EngineConfig:
    """Engine sizing. The KV cache is preallocated: ``num_blocks`` blocks of ``block_size`` tokens per layer, or
    as many as ``kv_cache_bytes`` allows when ``num_blocks`` is None.

    ``long_audio``: what happens to a clip longer than the feature extractor's maximum (``chunk_length`` of the
    checkpoint's preprocessor config: 300 s for Qwen2.5-Omni, 30 s for Qwen2-Audio), which the encoder cannot see
    past. "truncate" (default, what the reference's processor does) keeps the first ``chunk_length`` seconds,
    re-listens only within them, and records a warning in the result; "error" refuses the request.

    ``enforce_eager``: on a CUDA device, decode steps replay from CUDA graphs captured per batch-size bucket
    (engine/cuda_graphs.py) unless this is True (vLLM's switch of the same name); the CPU always runs eagerly.
    """

    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_bytes: int = 2 << 30
    max_num_seqs: int = 64  # sequences decoding together
    max_num_batched_tokens: int = 2048  # tokens per step: decode tokens + prefill/splice chunks
    max_model_len: int = 32768
    encoder_cache_bytes: int = 256 << 20
    relisten: RelistenPolicy = dataclasses.field(default_factory=RelistenPolicy)
    long_audio: Literal["truncate", "error"] = "truncate"
    enforce_eager: bool = False

    def __post_init__(self):
        _integer(self, "block_size", "num_blocks", "kv_cache_bytes", "max_num_seqs", "max_num_batched_tokens",
                 "max_model_len", "encoder_cache_bytes")
        if not isinstance(self.relisten, RelistenPolicy):
            raise ConfigError(f"EngineConfig.relisten must be a RelistenPolicy, got {type(self.relisten).__name__}")
        if not isinstance(self.enforce_eager, bool):
            raise ConfigError(f"EngineConfig.enforce_eager must be True or False, got {self.enforce_eager!r}")
        if self.long_audio not in ("truncate", "error"):
            raise ConfigError(f"EngineConfig.long_audio must be 'truncate' or 'error', got {self.long_audio!r}")
        _positive(self, "block_size", "num_blocks", "kv_cache_bytes", "max_num_seqs", "max_num_batched_tokens",
                  "max_model_len")
        if self.encoder_cache_bytes < 0:
            raise ConfigError(f"EngineConfig.encoder_cache_bytes must be >= 0, got {self.encoder_cache_bytes}")
