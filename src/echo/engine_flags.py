"""The engine's command-line flags, defined once for ``echo generate``, ``echo serve`` and ``echo train grpo`` (its
rollout engine), in the units a user thinks in (turns, GiB); ``engine_config`` turns them into an ``EngineConfig``."""

from __future__ import annotations

import argparse

from .argtypes import non_negative_int, positive_float, positive_int
from .config import EngineConfig, RelistenPolicy


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
