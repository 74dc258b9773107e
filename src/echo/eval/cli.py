"""``echo eval``: run a model on MMAR / MMAU / synthetic data, or score an existing predictions file."""

from __future__ import annotations

import argparse
import os
import sys

from ..argtypes import non_negative_int, share
from ..config import EngineConfig
from ..console import print_warnings
from ..config_flags import Flag, add_config_flags
from ..data.formats import MAX_BAD_SHARE
from ..engine_flags import add_sampling_flags
from ..errors import EchoError
from .datasets import BENCHMARK_NAMES

RUN_FLAGS = {
    "batch_size": Flag("requests per generate call (default 16)"),
    "limit": Flag("only the first N items"),
    "prompt_style": Flag(choices=("text", "messages")),
    "check_audio": Flag("how hard to check audio files before generating (default: header)",
                        choices=("exists", "header", "decode")),
    "audio": Flag("what the model hears: each item's clip (original, default); silence of the clip's length; or "
                  "another item's clip (shuffled: a derangement seeded by --seed). The controls show how much of "
                  "the accuracy needs the audio", choices=("original", "silence", "shuffled")),
}


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate on MMAR / MMAU / synthetic data, scored as the official scripts score",
        description="Run a model over a benchmark (batched, resumable, sharded under torchrun via RANK/WORLD_SIZE) "
        "and score it exactly as the official MMAU/MMAR scripts do; or score an existing predictions file.",
    )
    p.add_argument("--benchmark", required=True, choices=BENCHMARK_NAMES)
    p.add_argument("--data", help="directory with the benchmark's audio (and its metadata file, unless --meta)")
    p.add_argument("--meta", help="the metadata file (MMAR-meta.jsonl, mmau-test-mini.json, ...) if not in --data")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory, loaded with echo.load")
    source.add_argument("--predictions", help="score this predictions file (JSON list or JSONL, gzipped or not; or "
                        "an echo eval output directory) instead of running")
    source.add_argument("--merge-only", action="store_true", help="merge and score the prediction shards in --out")
    p.add_argument("--out", help="output directory (prediction shards, predictions.json, summary.json/.md)")
    p.add_argument("--compare", metavar="PREDICTIONS",
                   help="after scoring, compare with these predictions (a file, .json/.jsonl/.json.gz, or an echo eval "
                   "output directory) on the items both hold: both accuracies and the paired exact McNemar p, "
                   "overall and per task (written to OUT/compare.json and compare.md)")
    from .runner import RunConfig

    add_config_flags(p, RunConfig, RUN_FLAGS)
    add_sampling_flags(p)  # also seeds the shuffled-audio control
    p.add_argument("--max-relistens", type=non_negative_int, default=EngineConfig().relisten.max_turns,
                   help="re-listens per answer at most (0: none, the tags are written but no audio is inserted; "
                   "default %(default)s, the engine's)")
    p.add_argument("--allow-unknown-fields", action="store_true", help="accept fields outside the published layout")
    p.add_argument("--max-bad-share", type=share, default=MAX_BAD_SHARE,
                   help="malformed benchmark items are left out and reported; fail when more than this share of them "
                   f"are (default {MAX_BAD_SHARE:g})")
    p.add_argument("--re-extract", action="store_true",
                   help="with --predictions: extract answers again from the full responses (response/model_response)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_eval_command)
    return p


def run_eval_command(args: argparse.Namespace) -> int:
    """Entry point of ``echo eval`` (``echo.cli.main`` reports bad input as one line on stderr)."""
    from .compare import read_records

    other = read_records(args.compare) if args.compare else None  # a bad path fails before any model time
    if args.predictions:
        return _score_file(args, other)
    return _run(args, other)


def _run(args: argparse.Namespace, other: list[dict] | None = None) -> int:
    from .compare import read_records
    from .datasets import check_audio, load_benchmark
    from ..config_flags import config_kwargs
    from .runner import RunConfig, audio_plan, heard_items, merge_and_score, pending_items, run_eval
    from .scoring import summary_markdown

    if not args.out:
        raise EchoError("--out DIR is required to run a model or merge shards")
    if not args.data and not args.meta:
        raise EchoError("--data DIR (the benchmark's audio) is required")
    bench = load_benchmark(args.benchmark, args.data or os.path.dirname(args.meta), args.meta,
                           strict=not args.allow_unknown_fields, max_bad_share=args.max_bad_share)
    print_warnings("eval", [f"{bench.meta_path}: skipped {where}: {why}" for where, why in bench.skipped])
    if args.merge_only:
        merged, score = merge_and_score(bench, args.out, items=bench.items[: args.limit] if args.limit else None)
        print(summary_markdown(score))
        if other is not None:
            _compare(read_records(merged), other, args)
        return 0
    config = RunConfig(**config_kwargs(args, RUN_FLAGS), shuffle_seed=args.seed, progress=not args.no_progress)
    pending = pending_items(bench, args.out, config)  # refuses an --out holding another --audio mode's predictions
    check_audio(heard_items(pending, audio_plan(bench, config)), args.check_audio)  # before any model time
    model = load_model(args.model)
    config.check_audio = "exists"  # the thorough check above already passed
    report = run_eval(bench, model, args.out, config, sampling_params(args))
    print_warnings("eval", report.warnings, where=f"the warnings field of {report.shard_path} and summary.json")
    print(f"generated {report.generated}, already done {report.skipped}, in {report.elapsed_s:.1f} s -> "
          f"{report.shard_path}", file=sys.stderr)
    if report.score is not None:
        print(summary_markdown(report.score))
        if other is not None:
            _compare(read_records(report.merged_path), other, args)
    else:
        print("other shards are still running; the last one to finish merges and scores "
              "(or run again with --merge-only)", file=sys.stderr)
    return 0


def _score_file(args: argparse.Namespace, other: list[dict] | None = None) -> int:
    from ..answers import extract_answer
    from .compare import read_records
    from .runner import write_summary
    from .scoring import BENCHMARKS, score_records, summary_markdown

    records = read_records(args.predictions)
    if args.re_extract:
        key = BENCHMARKS[args.benchmark]["prediction_key"]
        for rec in records:
            response = rec.get("response", rec.get("model_response"))
            if response is None:
                raise EchoError(f"{args.predictions}: item {rec.get('id')!r} has no response/model_response to re-extract")
            ex = extract_answer(str(response), rec.get("choices") or [])
            rec[key], rec["no_answer"] = ex.prediction, ex.no_answer
    score = score_records(records, args.benchmark)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_summary(score, args.out)
    print(summary_markdown(score))
    if other is not None:
        _compare(records, other, args)
    return 0


def _compare(records: list[dict], other: list[dict], args: argparse.Namespace) -> None:
    """Print (and with --out, write) the comparison of the scored ``records`` with ``--compare``'s."""
    from .compare import compare, compare_markdown, write_compare

    this = args.predictions or args.out
    result = compare(records, other, args.benchmark, labels=(this, args.compare))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_compare(result, args.out)
    print(compare_markdown(result))


def load_model(path: str):
    """``echo.load(path)``: the model whose engine-backed ``generate`` the runner calls."""
    from ..api import load

    return load(path)


def sampling_params(args: argparse.Namespace):
    """The ``SamplingParams`` of eval's sampling flags, with ``--max-relistens`` as the request's re-listen policy."""
    from ..config import RelistenPolicy
    from ..engine_flags import sampling_params as shared

    return shared(args, relisten=RelistenPolicy(max_turns=args.max_relistens))
