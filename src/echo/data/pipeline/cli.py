"""``echo data pipeline | caption | synthesize | filter | export``: argparse wiring only."""

from __future__ import annotations

import argparse
import json

from ...errors import EchoError

COMMANDS = ("pipeline", "caption", "synthesize", "filter", "export")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    helps = {
        "pipeline": "captions -> QA/CoT synthesis -> rule + LLM-judge filtering -> EAQA-SFT / EAQA-RL (resumable)",
        "caption": "stage 1: three text views of every clip (endpoint with audio input, or --caption-local)",
        "synthesize": "stage 2: multiple-choice questions with <seg>-citing chains of thought from the text views",
        "filter": "stage 3: rule checks, then the LLM judge; routes items to SFT, RL or a named drop reason",
        "export": "stage 4: merge every shard's items into eaqa_sft.jsonl, sft_messages.jsonl, eaqa_rl.jsonl/.parquet",
    }
    for name in COMMANDS:
        p = commands.add_parser(name, help=helps[name], description=helps[name] + ". Rerun the same command after a "
                                "kill: only missing answers are requested. API keys come from the environment "
                                "(--*-api-key-env). Shards by clip over RANK/WORLD_SIZE.")
        p.add_argument("--out", required=True, help="run folder: cache/, one folder per stage, export/, report")
        if name != "export":
            p.add_argument("--audio", required=True, help="folder of clips (wav/flac/mp3/ogg, recursive)")
            p.add_argument("--meta", help="strong labels: JSONL or AudioSet-Strong TSV/CSV")
            p.add_argument("--prompts", help="folder overriding the packaged prompt files by name")
            p.add_argument("--chunk-size", type=int, default=64, help="rows per atomically written chunk")
            p.add_argument("--dry-run", action="store_true", help="print what would be sent; send and write nothing")
            p.add_argument("--retry-failed", action="store_true", help="redo items dropped as request_failed")
            p.add_argument("--no-progress", action="store_true")
            p.add_argument("--seed", type=int, default=0, help="fixes rule-built questions (default 0)")
            _endpoint_args(p)
        if name in ("pipeline", "caption"):
            p.add_argument("--caption-local", metavar="DIR", help="caption with this echo checkpoint (no HTTP)")
            p.add_argument("--local-batch", type=int, default=16, help="requests per engine call (--caption-local)")
            p.add_argument("--local-max-new-tokens", type=int, default=256)
        if name in ("pipeline", "synthesize"):
            p.add_argument("--questions-per-clip", type=int, default=2)
            p.add_argument("--rule-questions", action="store_true",
                           help="add questions built from the strong labels (exact answers; they skip the judge)")
        if name in ("pipeline", "synthesize", "filter"):
            p.add_argument("--rules-only", action="store_true",
                           help="no LLM at all: questions from the strong labels, checked by the rules")
        p.set_defaults(func=run_command, pipeline_command=name)


def _endpoint_args(p: argparse.ArgumentParser) -> None:
    for role in ("caption", "llm", "judge"):
        p.add_argument(f"--{role}-endpoint", metavar="URL", help=f"OpenAI-compatible base URL for the {role} model"
                       + (" (default: the LLM's)" if role == "judge" else ""))
        p.add_argument(f"--{role}-model", metavar="NAME")
        p.add_argument(f"--{role}-api-key-env", default="OPENAI_API_KEY", metavar="VAR")
        p.add_argument(f"--{role}-price", nargs=2, type=float, default=(0.0, 0.0), metavar=("IN", "OUT"),
                       help="cost per million prompt / completion tokens, for the report")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight per endpoint")
    p.add_argument("--rpm", type=float, help="requests per minute per endpoint")
    p.add_argument("--tpm", type=float, help="tokens per minute per endpoint (estimated before sending)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-retries", type=int, default=6)
    p.add_argument("--backoff", type=float, default=1.0, help="base seconds of the exponential backoff")
    p.add_argument("--backoff-max", type=float, default=60.0)
    p.add_argument("--max-new-tokens", type=int, default=4096,
                   help="completion tokens per request (the requests' max_tokens)")


def _endpoint(args, role: str):
    from .config import EndpointConfig

    url, model = getattr(args, f"{role}_endpoint"), getattr(args, f"{role}_model")
    if not url and not model:
        return None
    if not (url and model):
        raise EchoError(f"--{role}-endpoint and --{role}-model go together")
    price_in, price_out = getattr(args, f"{role}_price")
    return EndpointConfig(url, model, api_key_env=getattr(args, f"{role}_api_key_env"), concurrency=args.concurrency,
                          rpm=args.rpm, tpm=args.tpm, timeout_s=args.timeout, max_retries=args.max_retries,
                          backoff_s=args.backoff, backoff_max_s=max(args.backoff, args.backoff_max),
                          max_tokens=args.max_new_tokens, price_in=price_in, price_out=price_out)


def config_from_args(args):
    from .config import PipelineConfig

    return PipelineConfig(
        audio_dir=args.audio, out_dir=args.out, meta=args.meta, caption=_endpoint(args, "caption"),
        caption_local=getattr(args, "caption_local", None), llm=_endpoint(args, "llm"),
        judge=_endpoint(args, "judge"), prompts_dir=args.prompts,
        questions_per_clip=getattr(args, "questions_per_clip", 2),
        rule_questions=getattr(args, "rule_questions", False), chunk_size=args.chunk_size,
        progress=not args.no_progress, dry_run=args.dry_run, retry_failed=args.retry_failed,
        local_batch=getattr(args, "local_batch", 16), local_max_new_tokens=getattr(args, "local_max_new_tokens", 256),
        seed=args.seed)


def run_command(args: argparse.Namespace) -> int:
    """Entry point of the five commands (``echo.cli.main`` reports bad input as one line on stderr)."""
    from .report import build_report
    from .run import endpoints, run_pipeline

    name = args.pipeline_command
    if name == "export":
        from .export import run_export

        exported = run_export(args.out)
        report = build_report(args.out, None, exported)
        print(json.dumps({"export": exported, "filter": report["filter"]}))
        return 0
    cfg = config_from_args(args)
    llm = not getattr(args, "rules_only", False)
    if name == "pipeline":
        report = run_pipeline(cfg, llm=llm)
    else:
        from .caption import run_caption
        from .judge import run_filter
        from .synthesize import run_synthesize

        if name == "caption":
            ctx = run_caption(cfg)
        elif name == "synthesize":
            ctx = run_synthesize(cfg, llm=llm)
        else:
            ctx = run_filter(cfg, llm=llm)
        report = {"usage_this_run": {name: _asdict(ctx.usage)}}
        if not cfg.dry_run:
            report.update(build_report(cfg.out_dir, endpoints(cfg)))
    if not cfg.dry_run:
        print(f"report in {cfg.out_dir / 'report.md'}" + ("" if name != "pipeline" or "export" in report else
              "; export waits for the other shards (echo data export --out ... once they finish)"))
    print(json.dumps(report, sort_keys=True))
    return 0


def _asdict(usage) -> dict:
    from dataclasses import asdict

    return asdict(usage)
