"""The `echo` command line (also `echo-lalm` and `python -m echo`, since shells run their builtin `echo` first).

Subcommands: ``generate`` (interleaved decoding with re-listening), ``features`` (audio -> log-mel, the front
end on its own), ``data`` (synthetic tasks), ``eval`` (MMAU / MMAR / synthetic benchmarks), ``make-tiny`` (a
tiny random checkpoint, built offline, to try everything on).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .argtypes import non_negative_int, positive_float, positive_int
from .errors import ConfigError, EchoError


def _features(args: argparse.Namespace) -> int:
    import numpy as np

    from .audio import FeatureConfig, load, log_mel
    from .audio.features import seconds_to_sample

    cfg = FeatureConfig.from_pretrained(args.config) if args.config else FeatureConfig(chunk_length=args.chunk_length)
    wave = load(args.audio, max_seconds=args.max_seconds)
    spans = None
    if args.span:
        spans = [(0, seconds_to_sample(a), seconds_to_sample(b)) for a, b in args.span]
    feats = log_mel(wave, spans, config=cfg, backend=args.backend)
    print(f"{args.audio}: {len(wave) / cfg.sampling_rate:.3f} s, {len(wave)} samples at {cfg.sampling_rate} Hz")
    labels = ["whole clip"] if spans is None else [f"span {a:g}-{b:g} s" for a, b in args.span]
    for label, piece in zip(labels, feats.split()):
        print(f"  {label}: features {tuple(piece.shape)} (n_mels, frames)")
    if args.out:
        if spans is None:
            np.save(args.out, feats.features.cpu().numpy())
        else:  # several spans: one .npz with an array per span
            np.savez(args.out, **{f"span{i}": p.cpu().numpy() for i, p in enumerate(feats.split())})
        print(f"  wrote {args.out}")
    return 0


def _relisten_mark(record) -> str:
    d = record.decision
    if d.action == "relisten":
        a, b = (x / 16_000 for x in d.applied_samples)
        hit = "cached" if record.cache_hit else "encoded"
        return f" [re-listened {a:.2f}-{b:.2f} s: {record.num_audio_tokens} audio tokens, {hit}] "
    return f" [no re-listen: {d.reason}] "


def _sampling(args: argparse.Namespace):
    from .config import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          max_new_tokens=args.max_new_tokens, seed=args.seed)


def _generate(args: argparse.Namespace) -> int:
    import torch

    from . import generate_jsonl as batch
    from .config import EngineConfig, RelistenPolicy

    # every check that needs no model runs first: a bad argument costs no model load and no KV cache
    batch.check_device(args.device)
    params = _sampling(args)
    config = EngineConfig(max_num_seqs=args.max_num_seqs, kv_cache_bytes=int(args.kv_cache_gb * (1 << 30)),
                          relisten=RelistenPolicy(max_turns=args.max_relistens))
    if args.input:
        if not args.output:
            raise EchoError("--input needs --output")
        pending, done = batch.prepare(args.input, args.output, params)
        total = len(pending) + len(done)
    elif not (args.audio and args.prompt):
        raise EchoError("give AUDIO and PROMPT, or --input requests.jsonl --output results.jsonl")
    else:
        from .audio import load as load_audio

        load_audio(args.audio)  # a missing or corrupt clip is reported before the model loads

    from .engine.llm import Engine
    from .models import load

    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.input and not pending:
        batch.finish(args.output, total)
        print(f"all {total} results already in {args.output}")
        return 0
    engine = Engine(load(args.model, device=args.device, dtype=dtype), config)
    if args.input:
        written, bad = batch.run(engine, pending, args.output, total)
        batch.finish(args.output, total)
        print(f"wrote {written} results to {args.output}" + (f" ({bad} with errors)" if bad else "") +
              (f"; {len(done)} were already there" if done else ""))
        return 0
    for delta, record in engine.stream(args.audio, args.prompt, params):
        print(_relisten_mark(record) if record is not None else delta, end="", flush=True)
    print()
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def _train_sft(args: argparse.Namespace) -> int:
    from .train.sft import SFTConfig, train_sft

    cfg = SFTConfig(format=args.format, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                    epochs=args.epochs, grad_accum=args.grad_accum, train_audio_encoder=args.train_audio_encoder,
                    max_len=args.max_len, seed=args.seed, save_every=args.save_every, lora_rank=args.lora,
                    lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                    gradient_checkpointing=args.gradient_checkpointing, dtype=args.dtype)
    result = train_sft(args.model, args.data, args.out, cfg, overwrite=args.overwrite)
    if _rank() > 0:  # torchrun: one report
        return 0
    for rid, reason in result["skipped"]:
        print(f"skipped {rid}: {reason}")
    what = "LoRA adapter" if args.lora else "checkpoint"
    print(f"trained {result['steps']} steps on {result['examples']} records ({len(result['skipped'])} skipped); "
          f"{what} in {args.out}/final")
    return 0


def _merge_lora(args: argparse.Namespace) -> int:
    from .train.lora import merge_lora

    print(f"merged {args.adapter} into {args.base}: checkpoint in {merge_lora(args.base, args.adapter, args.out)}")
    return 0


def _train_grpo(args: argparse.Namespace) -> int:
    from .config import EngineConfig, RelistenPolicy
    from .train.grpo import GRPOConfig, train_grpo
    from .train.grpo_loss import PolicyLossConfig
    from .train.rewards import DEFAULT_TERMS, RewardFn, parse_terms

    loss = PolicyLossConfig(clip_ratio=args.clip_ratio, dual_clip=args.dual_clip or None, kl_coef=args.kl_coef,
                            loss_agg=args.loss_agg)
    engine = EngineConfig(kv_cache_bytes=int(args.kv_cache_gb * (1 << 30)), max_num_seqs=args.max_num_seqs,
                          relisten=RelistenPolicy(max_turns=args.max_relistens))
    cfg = GRPOConfig(group_size=args.group_size, prompts_per_step=args.prompts_per_step, steps=args.steps,
                     epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                     ppo_epochs=args.ppo_epochs, micro_batch=args.micro_batch, temperature=args.temperature,
                     top_p=args.top_p, max_new_tokens=args.max_new_tokens, std_normalize=not args.no_std_normalize,
                     loss=loss, train_audio_encoder=args.train_audio_encoder, val_data=args.val_data,
                     val_every=args.val_every, save_every=args.save_every, seed=args.seed, engine=engine,
                     tensorboard=args.tensorboard)
    try:
        reward = RewardFn(parse_terms(args.reward) if args.reward else DEFAULT_TERMS)
    except (ValueError, ImportError) as exc:  # an unknown term or a module that does not import
        raise ConfigError(f"--reward: {exc}") from None
    result = train_grpo(args.model, args.data, args.out, cfg, reward, overwrite=args.overwrite)
    if _rank() > 0:
        return 0
    for rid, reason in result["skipped"]:
        print(f"skipped {rid}: {reason}")
    last = result["history"][-1] if result["history"] else {}
    print(f"trained {result['steps']} steps on {result['records']} prompts ({len(result['skipped'])} skipped); "
          f"last mean reward {last.get('reward', float('nan')):.3f}; checkpoint in {args.out}/final")
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .models.tiny import make_checkpoint_dir

    make_checkpoint_dir(Path(args.out), args.preset, seed=args.seed, force=args.force)
    print(f"wrote a random {args.preset} checkpoint to {args.out} (untrained: its text is noise)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echo", description="Audio-interleaved reasoning for audio LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="answer a prompt about an audio clip, re-listening to the spans it cites")
    g.add_argument("audio", nargs="?", help="audio file")
    g.add_argument("prompt", nargs="?", help="question about the audio")
    g.add_argument("--model", required=True, help="local Hugging Face checkpoint directory, or echo-demo")
    g.add_argument("--input", help="JSONL of requests ({'audio', 'prompt', optional 'id' and sampling fields})")
    g.add_argument("--output", help="JSONL of results, one per request line, appended as each finishes; "
                                     "rerun the same command to resume")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=non_negative_int, default=0)
    g.add_argument("--max-new-tokens", type=positive_int, default=1024)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--max-relistens", type=non_negative_int, default=8, help="re-listen turns per answer")
    g.add_argument("--max-num-seqs", type=positive_int, default=64)
    g.add_argument("--kv-cache-gb", type=positive_float, default=2.0)
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.set_defaults(func=_generate)

    tr = sub.add_parser("train", help="fine-tune: sft (grounded or interleaved chains of thought), grpo (re-listening rollouts)")
    trs = tr.add_subparsers(dest="train_command", required=True)
    p = trs.add_parser("sft", help="supervised fine-tuning; rerun the same command to resume after a kill")
    p.add_argument("--model", required=True, help="local checkpoint directory (thinker-only Omni or Qwen2-Audio)")
    p.add_argument("--data", required=True, help="messages-JSONL or echo's synthetic JSONL")
    p.add_argument("--out", required=True)
    p.add_argument("--format", default="interleaved", choices=["grounded", "interleaved"])
    p.add_argument("--lr", type=positive_float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-steps", type=non_negative_int, default=0)
    p.add_argument("--epochs", type=positive_int, default=1)
    p.add_argument("--grad-accum", type=positive_int, default=1, help="records per optimizer step")
    p.add_argument("--train-audio-encoder", action="store_true")
    p.add_argument("--max-len", type=positive_int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=non_negative_int, default=0, help="optimizer steps between resumable checkpoints")
    p.add_argument("--lora", type=non_negative_int, default=0, metavar="RANK", help="train a LoRA adapter of this rank (0: full)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (default 2 * RANK)")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute layer activations in backward")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="compute dtype over float32 weights (auto: bf16 on CUDA that supports it)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in --out, discarding a run there made with other data or settings")
    p.set_defaults(func=_train_sft)
    p = trs.add_parser("merge-lora", help="fold a LoRA adapter into its base: a full checkpoint echo.load reads")
    p.add_argument("--base", required=True, help="the base checkpoint directory the adapter was trained on")
    p.add_argument("--adapter", required=True, help="adapter directory (adapter_config.json + safetensors)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_merge_lora)

    q = trs.add_parser("grpo", help="GRPO with re-listening rollouts; torchrun for several processes; rerun to resume")
    q.add_argument("--model", required=True, help="local checkpoint directory (thinker-only Omni or Qwen2-Audio)")
    q.add_argument("--data", required=True, help="verl-layout .parquet or echo's EAQA .jsonl")
    q.add_argument("--out", required=True)
    q.add_argument("--group-size", type=positive_int, default=8, help="rollouts per prompt")
    q.add_argument("--prompts-per-step", type=positive_int, default=4, help="global, split over processes")
    q.add_argument("--steps", type=positive_int, default=None, help="default: --epochs passes over the data")
    q.add_argument("--epochs", type=positive_int, default=1)
    q.add_argument("--lr", type=positive_float, default=1e-6)
    q.add_argument("--weight-decay", type=float, default=0.0)
    q.add_argument("--warmup-steps", type=non_negative_int, default=0)
    q.add_argument("--ppo-epochs", type=positive_int, default=1)
    q.add_argument("--micro-batch", type=positive_int, default=8, help="trajectories per trainer forward")
    q.add_argument("--temperature", type=float, default=1.0)
    q.add_argument("--top-p", type=float, default=1.0)
    q.add_argument("--max-new-tokens", type=positive_int, default=1024)
    q.add_argument("--max-relistens", type=non_negative_int, default=8)
    q.add_argument("--kl-coef", type=float, default=0.04)
    q.add_argument("--clip-ratio", type=float, default=0.2)
    q.add_argument("--dual-clip", type=float, default=3.0, help="0 turns it off")
    q.add_argument("--loss-agg", default="token-mean", choices=["token-mean", "seq-mean-token-mean"])
    q.add_argument("--no-std-normalize", action="store_true", help="advantages = reward - group mean")
    q.add_argument("--reward", action="append", metavar="NAME=WEIGHT",
                   help="a reward term (format, accuracy, relisten, consistency, confidence, or module:function); "
                        "repeat for several; default format=0.5 accuracy=1 relisten=0.5 consistency=0.5")
    q.add_argument("--train-audio-encoder", action="store_true")
    q.add_argument("--val-data")
    q.add_argument("--val-every", type=non_negative_int, default=0)
    q.add_argument("--save-every", type=non_negative_int, default=0, help="steps between resumable checkpoints")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--kv-cache-gb", type=positive_float, default=1.0)
    q.add_argument("--max-num-seqs", type=positive_int, default=64)
    q.add_argument("--tensorboard", action="store_true")
    q.add_argument("--overwrite", action="store_true",
                   help="start over in --out, discarding a run there made with other data or settings")
    q.set_defaults(func=_train_grpo)

    t = sub.add_parser("make-tiny", help="write a tiny random checkpoint (built offline) to try echo on")
    t.add_argument("out", help="directory to create")
    t.add_argument("--preset", default="omni-tiny-gqa2", help="a tiny preset of echo.models.presets")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true", help="write into a non-empty directory (replacing a checkpoint)")
    t.set_defaults(func=_make_tiny)

    p = sub.add_parser("features", help="print a clip's duration and log-mel feature shape; optionally save them")
    p.add_argument("audio", help="audio file (any format soundfile reads)")
    p.add_argument("--out", help="write the features: .npy for the whole clip, .npz (one array per span) for spans")
    p.add_argument("--span", nargs=2, type=float, action="append", metavar=("START_S", "END_S"),
                   help="featurise this span (seconds) as a re-listen would; repeatable")
    p.add_argument("--config", help="checkpoint directory or preprocessor_config.json to take the feature config from")
    p.add_argument("--chunk-length", type=positive_int, default=300,
                   help="max seconds when no --config (300: Qwen2.5-Omni)")
    p.add_argument("--max-seconds", type=float, default=1200.0, help="refuse longer audio")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "cpu", "torch"])
    p.set_defaults(func=_features)

    from .data.cli import add_parser as add_data_parser
    from .eval.cli import add_parser as add_eval_parser
    from .serve.cli import add_parser as add_serve_parser

    add_data_parser(sub)
    add_eval_parser(sub)
    add_serve_parser(sub)
    from .models.convert.cli import add_convert_parser

    add_convert_parser(sub)
    return parser


def _command(args: argparse.Namespace) -> str:
    """``generate``, ``train sft``, ``data synth``: how the error line names the subcommand."""
    parts = [args.command] + [getattr(args, k) for k in ("train_command", "data_command") if getattr(args, k, None)]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (EchoError, OSError) as exc:  # bad input, or a file that cannot be read or written: one line, no traceback
        print(f"echo {_command(args)}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
