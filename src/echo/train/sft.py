"""Supervised fine-tuning on echo's own model code: grounded or interleaved sequences (train/data.py), loss on
the assistant's tokens only, AdamW with linear warmup + cosine decay, gradient accumulation, audio encoder frozen
unless asked; full fine-tune or LoRA (train/lora.py), gradient checkpointing, bf16 autocast over float32 master
weights; checkpoints in the Hugging Face layout (peft's for adapters), resumable from the last checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..audio import FeatureConfig
from ..audio import load as load_audio
from ..data.formats import MAX_BAD_SHARE, check_share, refuse_bad_share
from ..engine.audio_embed import feature_config_for, span_embeddings
from ..errors import ConfigError, EchoError
from ..models.loader import load, resolve_model
from . import distributed as dist
from .checkpoint import load_trainer_state, save_checkpoint
from .data import IGNORE, SFTExample, build_dataset, read_records
from .feature_cache import FeatureCache
from .lora import CONFIG as ADAPTER_CONFIG
from .lora import DEFAULT_TARGETS, adapter_state, add_lora, load_adapter, lora_config, save_adapter
from .partial import is_partial, load_partial, save_partial
from .run_state import describe, prepare_run, trim_log


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
    return torch.cat(span_embeddings(model, features, [wave], [(0, s, e) for s, e in ex.audio_spans], grad=grad))


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


def _autocast(cfg: SFTConfig, device: torch.device):
    """bf16 autocast (weights stay float32) or none."""
    if cfg.dtype not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"dtype must be auto, fp32 or bf16, not {cfg.dtype!r}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if cfg.dtype == "bf16" and device.type == "cuda" and not cuda_bf16:
        raise ConfigError(f"dtype bf16: {torch.cuda.get_device_name(device)} does not support bfloat16")
    if cfg.dtype == "bf16" or (cfg.dtype == "auto" and cuda_bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _lora(model_dir: str, cfg: SFTConfig):
    """The LoRA config ``cfg`` asks for (None: full fine-tune); raises ConfigError on an invalid one."""
    if cfg.lora_rank < 0:
        raise ConfigError(f"lora_rank must be >= 0 (0: full fine-tune), got {cfg.lora_rank}")
    if not cfg.lora_rank:
        return None
    if cfg.train_only:
        raise ConfigError("train_only selects parameters for a full fine-tune; it cannot be combined with LoRA")
    if cfg.train_audio_encoder:
        raise ConfigError("LoRA adapts the decoder only; train_audio_encoder needs a full fine-tune")
    return lora_config(model_dir, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)


def _model(model_dir: str, resume: Path, resumed: bool, cfg: SFTConfig, lora):
    """(model in float32, trainable parameters), from ``resume`` when ``resumed``; ``lora`` from ``_lora``."""
    is_adapter = (resume / ADAPTER_CONFIG).is_file()
    if resumed and is_adapter != (lora is not None):
        kinds = ("a full fine-tune", "a LoRA adapter")
        raise ConfigError(f"{resume} holds {kinds[is_adapter]} but this run asks for {kinds[lora is not None]}; "
                          "rerun with the original settings or use another output directory")
    if lora is not None:
        model = load(model_dir, device=dist.device(), dtype=torch.float32)
        return model, load_adapter(model, resume, expect=lora) if resumed else add_lora(model, lora)
    # a train_only run's resumable checkpoint holds just the trained tensors: load the base, then overlay them
    partial = resumed and is_partial(resume)
    model = load(resume if resumed and not partial else model_dir, device=dist.device(), dtype=torch.float32)
    if partial:
        load_partial(model, model_dir, resume)
    model.requires_grad_(False)
    trainable = [p for n, p in model.named_parameters() if n.startswith(tuple(cfg.train_only))] if cfg.train_only else \
        [p for n, p in model.named_parameters() if cfg.train_audio_encoder or not n.startswith("audio_tower")]
    if cfg.train_only and not trainable:
        raise ConfigError(f"train_only={cfg.train_only}: no parameter name starts with these prefixes")
    for p in trainable:
        p.requires_grad_(True)
        if cfg.train_last_rows and p.dim() == 2:  # e.g. the rows of tokens a checkpoint added; with a zero gradient
            keep = torch.zeros(p.shape[0], 1, device=p.device)  # (and no weight decay) AdamW leaves a row unchanged
            keep[-cfg.train_last_rows:] = 1
            p.register_hook(lambda g, keep=keep: g * keep)
    return model, trainable


def train_sft(model_dir: str, data: str, out_dir: str, cfg: SFTConfig | None = None, overwrite: bool = False
              ) -> dict:
    """Fine-tune ``model_dir`` on ``data`` (messages-JSONL or synthetic JSONL); writes ``out_dir/final`` and
    ``out_dir/checkpoint`` (latest, with trainer state): full checkpoints, or with ``lora_rank > 0`` peft adapters
    whose base is ``model_dir`` (``merge_lora`` makes a full checkpoint); with ``train_only`` the resumable
    checkpoint holds just the trained tensors and ``model_dir``'s fingerprint (``train/partial.py``). Rerunning the same command resumes; a
    rerun with another model, data or settings is refused (``run_state``) unless ``overwrite`` starts over."""
    cfg, model_dir = cfg or SFTConfig(), resolve_model(model_dir)
    rank, world = dist.setup()
    out = Path(out_dir)
    autocast = _autocast(cfg, dist.device())  # invalid settings first, then whether they match the run in out
    lora = _lora(model_dir, cfg)
    prepare_run(out, describe("sft", model_dir, data, cfg), overwrite)
    bad: list[tuple[str, str]] = []
    records = read_records(data, bad)  # a missing or malformed file is reported before the model loads
    if not records and not bad:
        raise EchoError(f"{data}: no records")
    refuse_bad_share(data, bad, len(records) + len(bad), cfg.max_bad_share)
    resume = out / "checkpoint"
    state = load_trainer_state(resume)
    if state is None:
        torch.manual_seed(cfg.seed)  # LoRA's initial weights and dropout masks; a resumed run restores the RNG
    model, trainable = _model(model_dir, resume, state is not None, cfg, lora)
    model.decoder.gradient_checkpointing = cfg.gradient_checkpointing
    model.train()
    # a trainable projector (Qwen2-Audio's sits outside the tower) needs the audio rows in the graph; a frozen
    # encoder's ops record nothing, as none of their inputs requires grad
    audio_grad = any(p.requires_grad for n, p in model.named_parameters() if n.startswith(("audio_tower", "projector")))
    features = feature_config_for(model, model_dir)
    processor = model.processor
    # one process only: under FSDP a cache hit on one rank and a miss on another would leave the tower's gathers
    # unmatched
    cache = FeatureCache(model, features, out / "feature_cache") if cfg.feature_cache and not audio_grad and \
        world == 1 else None
    if world > 1:
        model = dist.shard(model)
        trainable = [p for p in model.parameters() if p.requires_grad]

    def save(path: Path, trainer_state: dict | None = None) -> None:
        if cfg.train_only and lora is None and trainer_state is not None:  # resumable: the trained tensors only
            named = dist.full_parameters(model) if world > 1 else model.named_parameters()
            params = {n: p for n, p in named if n.startswith(tuple(cfg.train_only))}
            if rank == 0:
                save_partial(params, model_dir, path, trainer_state)
            dist.barrier()
        elif world > 1:  # every rank gathers the full weights (or adapter); rank 0 writes
            full = dict(dist.full_parameters(model)) if lora is None else adapter_state(model)
            if rank == 0 and lora is None:
                save_checkpoint(model, model_dir, path, trainer_state, params=full)
            elif rank == 0:
                save_adapter(model, lora, path, trainer_state, state=full)
            dist.barrier()
        elif lora is None:
            save_checkpoint(model, model_dir, path, trainer_state)
        else:
            save_adapter(model, lora, path, trainer_state)

    examples, skipped = build_dataset(records, processor, cfg.format, features=features,
                                      max_len=cfg.max_len)
    skipped = bad + skipped
    if not examples:
        raise EchoError(f"{data}: no usable records ({len(skipped)} skipped: {skipped[:3]})")
    steps_per_epoch = math.ceil(len(examples) / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def schedule(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    step = 0
    if state is not None:
        if world > 1:
            dist.load_optimizer(model, opt, state["optimizer"])
        else:
            opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and model.device.type == "cuda":  # LoRA dropout masks on the GPU
            torch.cuda.set_rng_state(state["cuda_rng"], model.device)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        trim_log(out, step)
    log_path = out / "log.jsonl" if rank == 0 else Path(os.devnull)
    with log_path.open("a") as log, tqdm(total=total, initial=step, disable=not cfg.progress or rank > 0,
                                         desc="sft", unit="step") as bar:
        while step < total:
            started = time.perf_counter()
            epoch, k = divmod(step, steps_per_epoch)
            order = list(range(len(examples)))
            random.Random(cfg.seed + epoch).shuffle(order)  # data position = (epoch, k): resumable exactly
            batch = [examples[i] for i in order[k * cfg.grad_accum:(k + 1) * cfg.grad_accum]]
            # this process's records; every process runs as many forwards (FSDP2 gathers in lock-step), so a short
            # share is padded with a zero-weight copy of the batch's first record
            mine = [(ex, 1.0) for ex in batch[rank::world]]
            mine += [(batch[0], 0.0)] * (-(-len(batch) // world) - len(mine))
            n_tokens = int(dist.all_reduce_sum(float(sum(_num_labels(ex) for ex, w in mine if w))))
            opt.zero_grad(set_to_none=True)
            loss = 0.0
            for ex, w in mine:  # backward record by record: one record's activations in memory at a time
                with autocast:
                    part = w * sequence_loss(model, ex, features, audio_grad, cache=cache)[0] / max(1, n_tokens)
                # the global batch's token mean; FSDP averages gradients over processes, hence * world
                (part * world).backward()
                loss += float(part.detach())
            opt.step()
            sched.step()
            step += 1
            seconds = dist.all_reduce_max(time.perf_counter() - started)
            log.write(json.dumps({"step": step, "loss": dist.all_reduce_sum(loss),
                                  "tokens": n_tokens, "tokens_per_s": n_tokens / max(seconds, 1e-9),
                                  "lr": sched.get_last_lr()[0]}) + "\n")
            log.flush()
            bar.update(1)
            if (cfg.save_every and step % cfg.save_every == 0) or step == total:
                optim = dist.optimizer_state(model, opt) if world > 1 else opt.state_dict()
                state = {"optimizer": optim, "scheduler": sched.state_dict(), "step": step,
                         "torch_rng": torch.get_rng_state()}
                if model.device.type == "cuda":
                    state["cuda_rng"] = torch.cuda.get_rng_state(model.device)
                save(resume, state)
    model.eval()
    save(out / "final")
    return {"steps": step, "examples": len(examples), "skipped": skipped,
            "warnings": [f"{ex.id}: {w}" for ex in examples for w in ex.warnings]}
