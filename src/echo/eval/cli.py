"""``echo eval``: run a model on MMAR / MMAU / synthetic data, or score an existing predictions file."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
from typing import Any

from ..errors import EchoError
from .datasets import BENCHMARK_NAMES


class ModelUnavailable(EchoError):
    """``--model`` was given but this build has no model loader (``echo.load``)."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    source.add_argument("--predictions", help="score this predictions file (JSON list or JSONL) instead of running")
    source.add_argument("--merge-only", action="store_true", help="merge and score the prediction shards in --out")
    p.add_argument("--out", help="output directory (prediction shards, predictions.json, summary.json/.md)")
    p.add_argument("--batch-size", type=int, default=16, help="requests per generate call (default 16)")
    p.add_argument("--limit", type=int, help="only the first N items")
    p.add_argument("--max-tokens", type=int, default=2048, help="max new tokens per answer (default 2048)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-style", choices=("text", "messages"), default="text")
    p.add_argument("--check-audio", choices=("exists", "header", "decode"), default="header",
                   help="how hard to check audio files before generating (default: header)")
    p.add_argument("--allow-unknown-fields", action="store_true", help="accept fields outside the published layout")
    p.add_argument("--re-extract", action="store_true",
                   help="with --predictions: extract answers again from the full responses (response/model_response)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_eval_command)
    return p


def run_eval_command(args: argparse.Namespace) -> int:
    """Entry point of ``echo eval``; returns 0 on success, 2 on bad input (message on stderr)."""
    try:
        if args.predictions:
            return _score_file(args)
        return _run(args)
    except EchoError as exc:
        print(f"echo eval: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from .datasets import check_audio, load_benchmark
    from .runner import RunConfig, merge_and_score, pending_items, run_eval
    from .scoring import summary_markdown

    if not args.out:
        raise EchoError("--out DIR is required to run a model or merge shards")
    if not args.data and not args.meta:
        raise EchoError("--data DIR (the benchmark's audio) is required")
    bench = load_benchmark(args.benchmark, args.data or os.path.dirname(args.meta), args.meta,
                           strict=not args.allow_unknown_fields)
    if args.merge_only:
        _, score = merge_and_score(bench, args.out, items=bench.items[: args.limit] if args.limit else None)
        print(summary_markdown(score))
        return 0
    config = RunConfig(batch_size=args.batch_size, prompt_style=args.prompt_style, check_audio=args.check_audio,
                       limit=args.limit, progress=not args.no_progress)
    check_audio(pending_items(bench, args.out, config), args.check_audio)  # before any model time
    model = load_model(args.model)
    config.check_audio = "exists"  # the thorough check above already passed
    report = run_eval(bench, model, args.out, config, sampling_params(args))
    print(f"generated {report.generated}, already done {report.skipped}, in {report.elapsed_s:.1f} s -> "
          f"{report.shard_path}", file=sys.stderr)
    if report.score is not None:
        print(summary_markdown(report.score))
    else:
        print("other shards are still running; the last one to finish merges and scores "
              "(or run again with --merge-only)", file=sys.stderr)
    return 0


def _score_file(args: argparse.Namespace) -> int:
    from .answers import extract_answer
    from .runner import write_summary
    from .scoring import BENCHMARKS, score_records, summary_markdown

    records = _read_records(args.predictions)
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
    return 0


def _read_records(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise EchoError(f"{path}: predictions file not found")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise EchoError(f"{path}: not JSON or JSONL (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise EchoError(f"{path}: expected a list of JSON objects")
    if not records:
        raise EchoError(f"{path}: no predictions to score (the file is empty)")
    return records


def load_model(path: str) -> Any:
    """``echo.load(path)``, or a clear error when this build has no model loader or no engine behind it yet."""
    try:
        import echo

        loader = echo.load
    except (ImportError, AttributeError) as exc:
        raise ModelUnavailable(
            f"cannot run --model {path}: the model loader echo.load is not available in this build "
            f"({type(exc).__name__}: {exc}); score existing outputs with --predictions FILE"
        ) from None
    model = loader(path)
    if not callable(getattr(model, "generate", None)):
        raise ModelUnavailable(
            f"echo.load({path!r}) returned a {type(model).__name__} without generate(requests, sampling_params): "
            "this build has the model but not the decoding engine; score existing outputs with --predictions FILE"
        )
    return model


def sampling_params(args: argparse.Namespace) -> Any:
    """``echo.SamplingParams`` built from the flags it knows, or a plain dict when the engine has none."""
    wanted = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens,
              "max_new_tokens": args.max_tokens, "seed": args.seed}
    try:
        import echo

        cls = echo.SamplingParams
    except (ImportError, AttributeError):
        return {k: v for k, v in wanted.items() if k != "max_new_tokens"}
    names = ({f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls)
             else set(inspect.signature(cls).parameters))
    return cls(**{k: v for k, v in wanted.items() if k in names})
