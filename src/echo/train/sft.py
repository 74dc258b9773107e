"""Supervised fine-tuning on echo's own model code: grounded or interleaved sequences (train/data.py), loss on
the assistant's tokens only, AdamW with linear warmup + cosine decay, gradient accumulation, audio encoder frozen
unless asked; full fine-tune or LoRA (train/lora.py), gradient checkpointing, bf16 autocast over float32 master
weights; checkpoints in the Hugging Face layout (peft's for adapters), resumable from the last checkpoint."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..audio import FeatureConfig
from ..audio import load as load_audio
from ..data.formats import MAX_BAD_SHARE, check_share, refuse_bad_share
from ..errors import ConfigError, EchoError
from ..models.loader import resolve_model
from . import distributed as dist
from .data import IGNORE, SFTExample, build_dataset, read_records
from .feature_cache import FeatureCache
from .lora import DEFAULT_TARGETS
from .loop import Run, Trainables, autocast, lora_settings
from .run_state import describe, prepare_run


@dataclasses.dataclass(slots=True)
class SFTConfig:
    format: str = "interleaved"
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    epochs: int = 1
    grad_accum: int = 1
    train_audio_encoder: bool = False
    max_len: int = 8192
    seed: int = 0
    save_every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    progress: bool = True
    lora_rank: int = 0  # 0: full fine-tune
    lora_alpha: float | None = None  # None: 2 * lora_rank
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS  # decoder linear layers (the audio tower stays frozen)
    gradient_checkpointing: bool = False
    dtype: str = "auto"  # compute dtype: "auto" (bf16 on CUDA that has it, else fp32), "fp32", "bf16"
    train_only: tuple[str, ...] = ()  # full fine-tune of just these parameter-name prefixes, e.g. ("projector",)
    train_last_rows: int = 0  # with train_only: of 2-D tensors (embeddings, head) train only the last N rows (0: all)
    max_bad_share: float = MAX_BAD_SHARE  # malformed data lines are skipped and reported; more than this share fails
    feature_cache: bool = True  # frozen tower: each clip's and span's audio rows computed once, kept in out_dir

    def __post_init__(self):
        check_share("SFTConfig.max_bad_share", self.max_bad_share)
        for name in ("epochs", "grad_accum", "max_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"SFTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.train_last_rows and not self.train_only:
            raise ConfigError("SFTConfig.train_last_rows needs train_only (the tensors whose last rows train)")
        for name in ("warmup_steps", "save_every", "lora_rank", "train_last_rows"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SFTConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"SFTConfig.lr must be a positive number, got {self.lr}")
        if self.format not in ("grounded", "interleaved"):
            raise ConfigError(f"SFTConfig.format must be grounded or interleaved, got {self.format!r}")


def _audio_rows(model, ex: SFTExample, features: FeatureConfig, grad: bool,
                cache: FeatureCache | None = None) -> torch.Tensor:
    wave = torch.from_numpy(load_audio(ex.audio)).to(model.device)
    if cache is not None and not grad:
        return torch.cat(cache.rows(model, wave, ex.audio_spans))
    return torch.cat(model.embed_spans(features, [wave], [(0, s, e) for s, e in ex.audio_spans], grad=grad))


def sequence_loss(model, ex: SFTExample, features: FeatureConfig, train_audio_encoder: bool = False,
                  cache: FeatureCache | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled tokens, and their count; with a frozen tower, ``cache``
    serves the audio rows."""
    ids = torch.tensor(ex.input_ids, device=model.device)
    embeds = model.embed(ids, _audio_rows(model, ex, features, train_audio_encoder, cache))
    labels = torch.tensor(ex.labels[1:], device=model.device)
    # logits only where a label is: the prompt and the audio (most of a sequence) never go through the output head
    rows = (labels != IGNORE).nonzero().squeeze(1)
    logits = model.logits_at(embeds[None], torch.ones_like(ids)[None], rows[None])[0]
    loss = F.cross_entropy(logits.float(), labels[rows], reduction="sum")
    return loss, int(rows.numel())


def _num_labels(ex: SFTExample) -> int:
    return sum(1 for t in ex.labels[1:] if t != IGNORE)


def train_sft(model_dir: str, data: str, out_dir: str, cfg: SFTConfig | None = None, overwrite: bool = False
              ) -> dict:
    """Fine-tune ``model_dir`` on ``data`` (messages-JSONL or synthetic JSONL); writes ``out_dir/final`` and
    ``out_dir/checkpoint`` (latest, with trainer state): full checkpoints, or with ``lora_rank > 0`` peft adapters
    whose base is ``model_dir`` (``merge_lora`` makes a full checkpoint); with ``train_only`` the resumable
    checkpoint holds just the trained tensors and ``model_dir``'s fingerprint (``train/partial.py``). Rerunning the
    same command resumes; a rerun with another model, data or settings is refused (``run_state``) unless
    ``overwrite`` starts over."""
    cfg, model_dir = cfg or SFTConfig(), resolve_model(model_dir)
    rank, world = dist.setup()
    out = Path(out_dir)
    compute = autocast(cfg.dtype, dist.device())  # invalid settings first, then whether they match the run in out
    lora = lora_settings(model_dir, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                         cfg.train_only, cfg.train_audio_encoder)
    prepare_run(out, describe("sft", model_dir, data, cfg), overwrite)
    bad: list[tuple[str, str]] = []
    records = read_records(data, bad)  # a missing or malformed file is reported before the model loads
    if not records and not bad:
        raise EchoError(f"{data}: no records")
    refuse_bad_share(data, bad, len(records) + len(bad), cfg.max_bad_share)
    run = Run(model_dir, out, Trainables(lora, cfg.train_only, cfg.train_last_rows, cfg.train_audio_encoder),
              cfg.seed, partial=True)
    model = run.model
    model.decoder.gradient_checkpointing = cfg.gradient_checkpointing
    model.train()
    # a frozen encoder's ops record nothing, as none of their inputs requires grad
    audio_grad = run.audio_grad
    features = model.resolve_feature_config(model_dir)
    # one process only: under FSDP a cache hit on one rank and a miss on another would leave the tower's gathers
    # unmatched
    cache = FeatureCache(model, features, out / "feature_cache") if cfg.feature_cache and not audio_grad and \
        world == 1 else None
    examples, skipped = build_dataset(records, model.processor, cfg.format, features=features, max_len=cfg.max_len)
    skipped = bad + skipped
    if not examples:
        raise EchoError(f"{data}: no usable records ({len(skipped)} skipped: {skipped[:3]})")
    model = run.shard()
    steps_per_epoch = math.ceil(len(examples) / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs

    def schedule(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    run.optimizer(cfg.lr, cfg.weight_decay, schedule)

    def step_fn() -> dict:
        started = time.perf_counter()
        epoch, k = divmod(run.step, steps_per_epoch)
        order = list(range(len(examples)))
        random.Random(cfg.seed + epoch).shuffle(order)  # data position = (epoch, k): resumable exactly
        batch = [examples[i] for i in order[k * cfg.grad_accum:(k + 1) * cfg.grad_accum]]
        # this process's records; every process runs as many forwards (FSDP2 gathers in lock-step), so a short
        # share is padded with a zero-weight copy of the batch's first record
        mine = [(ex, 1.0) for ex in batch[rank::world]]
        mine += [(batch[0], 0.0)] * (-(-len(batch) // world) - len(mine))
        n_tokens = int(dist.all_reduce_sum(float(sum(_num_labels(ex) for ex, w in mine if w))))
        run.opt.zero_grad(set_to_none=True)
        loss = 0.0
        for ex, w in mine:  # backward record by record: one record's activations in memory at a time
            with compute:
                part = w * sequence_loss(model, ex, features, audio_grad, cache=cache)[0] / max(1, n_tokens)
            # the global batch's token mean; FSDP averages gradients over processes, hence * world
            (part * world).backward()
            loss += float(part.detach())
        run.opt.step()
        run.sched.step()
        run.step += 1
        seconds = dist.all_reduce_max(time.perf_counter() - started)
        return {"step": run.step, "loss": dist.all_reduce_sum(loss), "tokens": n_tokens,
                "tokens_per_s": n_tokens / max(seconds, 1e-9), "lr": run.sched.get_last_lr()[0]}

    run.fit(total, step_fn, cfg.save_every, cfg.progress, desc="sft")
    model.eval()
    run.save(out / "final", resumable=False)
    return {"steps": run.step, "examples": len(examples), "skipped": skipped,
            "warnings": [f"{ex.id}: {w}" for ex in examples for w in ex.warnings]}
