"""The engine's command-line flags, defined once for ``echo generate``, ``echo serve`` and ``echo train grpo`` (its
rollout engine), in the units a user thinks in (turns, GiB); ``engine_config`` turns them into an ``EngineConfig``.
The sampling flags (``add_sampling_flags``: one default for every command, ``CLI_SAMPLING``) and the model's
device and dtype (``add_model_flags``) are defined here once too."""

from __future__ import annotations

import argparse

from .argtypes import non_negative_int, positive_float, positive_int
from .config import EngineConfig, RelistenPolicy, SamplingParams

# the sampling defaults of every command: SamplingParams' own, except greedy and a fixed seed (a rerun gives the
# same answers, and a resumed run continues the same one)
CLI_SAMPLING = SamplingParams(temperature=0.0, seed=0)
SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "max_new_tokens", "seed")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_engine_flags(parser: argparse.ArgumentParser, *, kv_cache_gb: float = 2.0,
                     relisten_help: str = "re-listen turns per answer") -> None:
    defaults = EngineConfig()
    g = parser.add_argument_group("engine")
    g.add_argument("--max-relistens", type=non_negative_int, default=defaults.relisten.max_turns, help=relisten_help)
    g.add_argument("--max-num-seqs", type=positive_int, default=defaults.max_num_seqs,
                   help="sequences decoded together")
    g.add_argument("--max-model-len", type=positive_int, default=defaults.max_model_len,
                   help="longest sequence in tokens: prompt, audio, re-listened audio and output")
    g.add_argument("--kv-cache-gb", type=positive_float, default=kv_cache_gb, help="memory of the paged KV cache")
    g.add_argument("--enforce-eager", action="store_true",
                   help="decode every step eagerly on CUDA (no CUDA graphs; the CPU never uses them)")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The ``EngineConfig`` of the flags ``add_engine_flags`` added to ``args``' parser."""
    return EngineConfig(max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                        kv_cache_bytes=int(args.kv_cache_gb * (1 << 30)),
                        relisten=RelistenPolicy(max_turns=args.max_relistens), enforce_eager=args.enforce_eager)


def add_sampling_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] = SAMPLING_FLAGS,
                       max_new_tokens_help: str = "new tokens per answer at most") -> None:
    """The sampling flags in ``names`` (``SamplingParams`` field names), defaults from ``CLI_SAMPLING``."""
    d = CLI_SAMPLING
    g = parser.add_argument_group("sampling")
    spec = {
        "temperature": (float, d.temperature, "0 = greedy"),
        "top_p": (float, d.top_p, "nucleus sampling: keep the smallest set of tokens holding this probability"),
        "top_k": (non_negative_int, d.top_k, "keep the k most likely tokens (0: all)"),
        "max_new_tokens": (positive_int, d.max_new_tokens, max_new_tokens_help),
        "seed": (int, d.seed, "sample i of a request is seeded SEED + i"),
    }
    for name in names:
        kind, default, text = spec[name]
        g.add_argument("--" + name.replace("_", "-"), type=kind, default=default, help=f"{text} (default {default})")


def sampling_params(args: argparse.Namespace, **overrides) -> SamplingParams:
    """The ``SamplingParams`` of the sampling flags ``add_sampling_flags`` added (the rest ``CLI_SAMPLING``'s)."""
    values = {name: getattr(args, name, getattr(CLI_SAMPLING, name)) for name in SAMPLING_FLAGS}
    return SamplingParams(**{**values, **overrides})


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Where the checkpoint is loaded and in which dtype (``model_dtype`` reads the choice)."""
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="weights' dtype (auto: the checkpoint's, float32 on a CPU without bf16 instructions)")


def model_dtype(args: argparse.Namespace):
    """The torch dtype of ``--dtype`` (None for auto: ``echo.load`` decides)."""
    import torch

    return None if args.dtype == "auto" else getattr(torch, args.dtype)
