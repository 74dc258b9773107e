"""``echo train sft | merge-lora | grpo``: argparse wiring only; the flags that mirror ``SFTConfig``,
``GRPOConfig`` and ``PolicyLossConfig`` are derived from their fields (defaults included)."""

from __future__ import annotations

import argparse

from ..argtypes import non_negative_int, positive_float, positive_int, share
from ..console import print_warnings
from ..config_flags import Flag, add_config_flags, config_kwargs
from ..engine_flags import add_engine_flags, engine_config
from ..errors import ConfigError
from ..launch import dist_env

_OVERWRITE = "start over in --out, discarding a run there made with other data or settings"
_BAD_SHARE = "malformed --data lines are skipped and reported; fail when more than this share of them are"
_COMPUTE_DTYPES = ["auto", "fp32", "bf16"]  # what train/loop.autocast takes, for SFT and the GRPO update alike

SFT_FLAGS = {
    "format": Flag(choices=["grounded", "interleaved"]),
    "lr": Flag(type=positive_float),
    "weight_decay": Flag(),
    "warmup_steps": Flag(type=non_negative_int),
    "epochs": Flag(type=positive_int),
    "grad_accum": Flag("records per optimizer step", type=positive_int),
    "train_audio_encoder": Flag(),
    "max_len": Flag(type=positive_int),
    "seed": Flag(),
    "save_every": Flag("optimizer steps between resumable checkpoints", type=non_negative_int),
    "lora_rank": Flag("train a LoRA adapter of this rank (0: full)", type=non_negative_int, option="--lora",
                      metavar="RANK"),
    "lora_alpha": Flag("LoRA scale numerator (default 2 * RANK)"),
    "lora_dropout": Flag(),
    "gradient_checkpointing": Flag("recompute layer activations in backward"),
    "dtype": Flag("compute dtype over float32 weights (auto: bf16 on CUDA that supports it)",
                  choices=_COMPUTE_DTYPES),
    "max_bad_share": Flag(_BAD_SHARE, type=share),
    "feature_cache": Flag("with a frozen audio tower, compute each clip's and span's audio rows once and keep them "
                          "in OUT/feature_cache (--no-feature-cache: recompute them every time)"),
}

GRPO_FLAGS = {
    "group_size": Flag("rollouts per prompt", type=positive_int),
    "prompts_per_step": Flag("global, split over processes", type=positive_int),
    "steps": Flag("default: --epochs passes over the data", type=positive_int),
    "epochs": Flag(type=positive_int),
    "lr": Flag(type=positive_float),
    "weight_decay": Flag(),
    "warmup_steps": Flag(type=non_negative_int),
    "ppo_epochs": Flag(type=positive_int),
    "micro_batch": Flag("trajectories per trainer forward", type=positive_int),
    "dtype": Flag("the update's compute dtype over float32 weights (auto: bf16 on CUDA that supports it)",
                  choices=_COMPUTE_DTYPES),
    "temperature": Flag(),
    "top_p": Flag(),
    "max_new_tokens": Flag(type=positive_int),
    "train_audio_encoder": Flag(),
    "lora_rank": Flag("train only a LoRA adapter of this rank; the rollout engine decodes through it (0: full)",
                      type=non_negative_int, option="--lora", metavar="RANK"),
    "lora_alpha": Flag("LoRA scale numerator (default 2 * RANK)"),
    "lora_dropout": Flag(),
    "val_data": Flag(),
    "val_every": Flag(type=non_negative_int),
    "save_every": Flag("steps between resumable checkpoints", type=non_negative_int),
    "seed": Flag(),
    "tensorboard": Flag(),
    "max_bad_share": Flag(_BAD_SHARE, type=share),
}

LOSS_FLAGS = {
    "kl_coef": Flag(),
    "clip_ratio": Flag(),
    "dual_clip": Flag("0 turns it off", convert=lambda v: v or None),
    "loss_agg": Flag(choices=["token-mean", "seq-mean-token-mean"]),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` with ``sft``, ``merge-lora`` and ``grpo`` on ``subparsers``."""
    from .grpo import GRPOConfig
    from .grpo_loss import PolicyLossConfig
    from .sft import SFTConfig

    tr = subparsers.add_parser("train", help="fine-tune: sft (grounded or interleaved chains of thought), grpo "
                                             "(re-listening rollouts)")
    trs = tr.add_subparsers(dest="train_command", required=True)
    p = trs.add_parser("sft", help="supervised fine-tuning; rerun the same command to resume after a kill")
    p.add_argument("--model", required=True, help="local checkpoint directory (thinker-only Omni or Qwen2-Audio)")
    p.add_argument("--data", required=True, help="messages-JSONL or echo's synthetic JSONL")
    p.add_argument("--out", required=True)
    add_config_flags(p, SFTConfig, SFT_FLAGS)
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
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
    add_config_flags(q, GRPOConfig, GRPO_FLAGS)
    add_config_flags(q, PolicyLossConfig, LOSS_FLAGS)
    q.add_argument("--no-std-normalize", action="store_true", help="advantages = reward - group mean")
    q.add_argument("--reward", action="append", metavar="NAME=WEIGHT",
                   help="a reward term (format, accuracy, relisten, consistency, confidence, span_iou, or "
                        "module:function); repeat for several; "
                        "default format=0.5 accuracy=1 relisten=0.5 consistency=0.5")
    add_engine_flags(q, kv_cache_gb=1.0)  # the rollout engine's
    q.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
    q.set_defaults(func=_train_grpo)


def _train_sft(args: argparse.Namespace) -> int:
    from .sft import SFTConfig, train_sft

    cfg = SFTConfig(**config_kwargs(args, SFT_FLAGS))
    result = train_sft(args.model, args.data, args.out, cfg, overwrite=args.overwrite)
    if dist_env()[0] > 0:  # torchrun: one report
        return 0
    for rid, reason in result["skipped"]:
        print(f"skipped {rid}: {reason}")
    print_warnings("train sft", result["warnings"])
    what = "LoRA adapter" if cfg.lora_rank else "checkpoint"
    print(f"trained {result['steps']} steps on {result['examples']} records ({len(result['skipped'])} skipped); "
          f"{what} in {args.out}/final")
    return 0


def _merge_lora(args: argparse.Namespace) -> int:
    from .lora import merge_lora

    print(f"merged {args.adapter} into {args.base}: checkpoint in {merge_lora(args.base, args.adapter, args.out)}")
    return 0


def _train_grpo(args: argparse.Namespace) -> int:
    from .grpo import GRPOConfig, train_grpo
    from .grpo_loss import PolicyLossConfig
    from .rewards import RewardFn

    cfg = GRPOConfig(**config_kwargs(args, GRPO_FLAGS), std_normalize=not args.no_std_normalize,
                     loss=PolicyLossConfig(**config_kwargs(args, LOSS_FLAGS)), engine=engine_config(args))
    try:
        reward = RewardFn.from_specs(args.reward)
    except (ValueError, ImportError) as exc:  # an unknown term or a module that does not import
        raise ConfigError(f"--reward: {exc}") from None
    result = train_grpo(args.model, args.data, args.out, cfg, reward, overwrite=args.overwrite)
    if dist_env()[0] > 0:
        return 0
    for rid, reason in result["skipped"]:
        print(f"skipped {rid}: {reason}")
    print_warnings("train grpo", result["warnings"])
    last = result["history"][-1] if result["history"] else {}
    print(f"trained {result['steps']} steps on {result['records']} prompts ({len(result['skipped'])} skipped); "
          f"last mean reward {last.get('reward', float('nan')):.3f}; checkpoint in {args.out}/final")
    return 0
