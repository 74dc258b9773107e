"""Flags derived from config dataclasses: every default is the field's own, and parsed flags build the config."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from echo.cli import build_parser
from echo.config_flags import Flag, add_config_flags, config_kwargs
from echo.data.cli import synth_flags
from echo.data.synthetic import SynthConfig
from echo.train.cli import GRPO_FLAGS, LOSS_FLAGS, SFT_FLAGS
from echo.train.grpo import GRPOConfig
from echo.train.grpo_loss import PolicyLossConfig
from echo.train.sft import SFTConfig

BASE = {"sft": ["train", "sft", "--model", "m", "--data", "d", "--out", "o"],
        "grpo": ["train", "grpo", "--model", "m", "--data", "d", "--out", "o"],
        "synth": ["data", "synth", "--n", "3", "--out", "o"]}


@pytest.mark.parametrize("command, cls, flags", [
    ("sft", SFTConfig, SFT_FLAGS), ("grpo", GRPOConfig, GRPO_FLAGS), ("grpo", PolicyLossConfig, LOSS_FLAGS),
    ("synth", SynthConfig, synth_flags()),
])
def test_untouched_flags_build_the_dataclass_defaults(command, cls, flags):
    args = build_parser().parse_args(BASE[command])
    built = cls(**config_kwargs(args, flags))
    default = cls(n=3) if cls is SynthConfig else cls()
    for name in flags:
        assert getattr(built, name) == getattr(default, name), name


def test_given_flags_reach_the_config():
    args = build_parser().parse_args(BASE["sft"] + ["--lora", "4", "--lr", "3e-4", "--dtype", "bf16",
                                                     "--gradient-checkpointing"])
    cfg = SFTConfig(**config_kwargs(args, SFT_FLAGS))
    assert (cfg.lora_rank, cfg.lr, cfg.dtype, cfg.gradient_checkpointing) == (4, 3e-4, "bf16", True)
    args = build_parser().parse_args(BASE["grpo"] + ["--dual-clip", "0", "--steps", "5", "--val-data", "v.jsonl"])
    assert PolicyLossConfig(**config_kwargs(args, LOSS_FLAGS)).dual_clip is None  # 0 turns it off
    grpo = GRPOConfig(**config_kwargs(args, GRPO_FLAGS))
    assert (grpo.steps, grpo.val_data) == (5, "v.jsonl")
    args = build_parser().parse_args(BASE["synth"] + ["--families", "beep_count", "--difficulty", "easy",
                                                       "--clip-s", "3", "4", "--clean"])
    cfg = SynthConfig(**config_kwargs(args, synth_flags()))
    assert (cfg.families, cfg.difficulties, cfg.clip_s, cfg.clean) == (("beep_count",), ("easy",), (3.0, 4.0), True)
    with pytest.raises(SystemExit):  # --snr-db and --clean exclude each other
        build_parser().parse_args(BASE["synth"] + ["--snr-db", "3", "--clean"])


def test_a_field_the_dataclass_lacks_is_refused():
    @dataclasses.dataclass
    class Tiny:
        size: int = 2

    with pytest.raises(ValueError, match=r"Tiny has no fields \['colour'\]"):
        add_config_flags(argparse.ArgumentParser(), Tiny, {"colour": Flag()})
