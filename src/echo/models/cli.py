"""``echo make-tiny``: a tiny random checkpoint, built offline, to try everything on."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``make-tiny`` on ``sub``."""
    t = sub.add_parser("make-tiny", help="write a tiny random checkpoint (built offline) to try echo on")
    t.add_argument("out", help="directory to create")
    t.add_argument("--preset", default="omni-tiny-gqa2", help="a tiny preset of echo.models.presets")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true", help="write into a non-empty directory (replacing a checkpoint)")
    t.set_defaults(func=_make_tiny)


def _make_tiny(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .tiny import make_checkpoint_dir

    make_checkpoint_dir(Path(args.out), args.preset, seed=args.seed, force=args.overwrite)
    print(f"wrote a random {args.preset} checkpoint to {args.out} (untrained: its text is noise)")
    return 0
