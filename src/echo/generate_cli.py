"""``echo generate``: one clip and prompt streamed to the terminal, or a JSONL of requests (``generate_jsonl``)."""

from __future__ import annotations

import argparse

from .console import print_warnings
from .engine_flags import add_engine_flags, add_model_flags, add_sampling_flags, engine_config, model_dtype
from .errors import EchoError


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``generate`` on ``sub``."""
    g = sub.add_parser("generate", help="answer a prompt about an audio clip, re-listening to the spans it cites")
    g.add_argument("audio", nargs="?", help="audio file")
    g.add_argument("prompt", nargs="?", help="question about the audio")
    g.add_argument("--choices", nargs="+", metavar="CHOICE",
                   help="answer choices: the prompt becomes Echo's evaluation prompt (the question, the choices and "
                        "the instruction to think with timestamped segments), the format Echo models are trained on")
    g.add_argument("--model", required=True, help="local Hugging Face checkpoint directory, or echo-demo")
    g.add_argument("--input", help="JSONL of requests ({'audio', 'prompt', optional 'id' and sampling fields})")
    g.add_argument("--out", help="with --input: JSONL of results, one per request line, appended as each "
                                  "finishes; rerun the same command to resume")
    add_model_flags(g)
    add_sampling_flags(g)
    add_engine_flags(g)
    g.set_defaults(func=_generate)


def _relisten_mark(record) -> str:
    d = record.decision
    if d.action == "relisten":
        from .audio import SAMPLING_RATE

        a, b = (x / SAMPLING_RATE for x in d.applied_samples)
        hit = "cached" if record.cache_hit else "encoded"
        return f" [re-listened {a:.2f}-{b:.2f} s: {record.num_audio_tokens} audio tokens, {hit}] "
    return f" [no re-listen: {d.reason}] "


def _generate(args: argparse.Namespace) -> int:
    from . import generate_jsonl as batch
    from .engine_flags import sampling_params

    # every check that needs no model runs first: a bad argument costs no model load and no KV cache
    batch.check_device(args.device)
    if args.input and args.choices:
        raise EchoError("--choices applies to one AUDIO PROMPT; put the full prompt in each --input line")
    params = sampling_params(args)
    config = engine_config(args)
    if args.input:
        if not args.out:
            raise EchoError("--input needs --out")
        pending, done = batch.prepare(args.input, args.out, params)
        total = len(pending) + len(done)
    elif not (args.audio and args.prompt):
        raise EchoError("give AUDIO and PROMPT, or --input requests.jsonl --out results.jsonl")
    else:
        from .audio import load as load_audio

        wave = load_audio(args.audio)  # a missing or corrupt clip is reported before the model loads

    from .engine.llm import Engine
    from .models import load

    if args.input and not pending:
        batch.finish(args.out, total)
        print(f"all {total} results already in {args.out}")
        return 0
    engine = Engine(load(args.model, device=args.device, dtype=model_dtype(args)), config)
    if args.input:
        written, bad, warnings = batch.run(engine, pending, args.out, total)
        batch.finish(args.out, total)
        print_warnings("generate", warnings, where=f"the warnings field of the rows in {args.out}")
        print(f"wrote {written} results to {args.out}" + (f" ({bad} with errors)" if bad else "") +
              (f"; {len(warnings)} warnings" if warnings else "") +
              (f"; {len(done)} were already there" if done else ""))
        return 0
    prompt = args.prompt
    if args.choices:
        from .protocol import build_prompt

        prompt = build_prompt(args.prompt, args.choices)
    print_warnings("generate", engine.check_audio(wave))  # before the answer: it is about what the model heard
    for delta, record in engine.stream(args.audio, prompt, params):
        print(_relisten_mark(record) if record is not None else delta, end="", flush=True)
    print()
    return 0
