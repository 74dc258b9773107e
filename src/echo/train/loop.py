"""The scaffold SFT and GRPO share; each trainer is a step function over it.

``Run`` owns what a training run does around its steps: load the model with float32 master weights (from the base
or the resumable checkpoint), choose the trainable parameters (``Trainables``: full, LoRA adapters, named modules,
the last rows of their 2-D tensors), shard (FSDP2 under torchrun), AdamW and a learning-rate schedule, resume with
the optimizer, schedule, step and every RNG stream (CPU and CUDA), ``log.jsonl`` (rows a kill made the resumed run
log twice dropped), and atomic checkpoints in the layout the selection implies: peft's for adapters, only the
trained tensors for a ``train_only`` run that asks for it (``train/partial.py``), the Hugging Face layout otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from tqdm import tqdm

from ..errors import ConfigError
from ..models.loader import load
from . import distributed as dist
from .checkpoint import load_trainer_state, save_checkpoint
from .lora import CONFIG as ADAPTER_CONFIG
from .lora import adapter_state, add_lora, load_adapter, lora_config, save_adapter
from .partial import is_partial, load_partial, save_partial
from .run_state import trim_log

if TYPE_CHECKING:
    from peft import LoraConfig


@dataclasses.dataclass(slots=True)
class Trainables:
    """Which parameters train. ``lora``: adapters only (everything else frozen); else ``train_only`` parameter-name
    prefixes (of whose 2-D tensors only the last ``last_rows`` rows, when > 0), else every parameter outside the
    audio tower (the tower too with ``audio_encoder``)."""

    lora: LoraConfig | None = None
    train_only: tuple[str, ...] = ()
    last_rows: int = 0
    audio_encoder: bool = False


def lora_settings(model_dir: str, rank: int, alpha: float | None, dropout: float, targets: tuple[str, ...],
                  train_only: tuple[str, ...] = (), audio_encoder: bool = False) -> LoraConfig | None:
    """The LoRA config a run asks for (None for rank 0: no adapter); raises ConfigError on an invalid one."""
    if rank < 0:
        raise ConfigError(f"lora_rank must be >= 0 (0: full fine-tune), got {rank}")
    if not rank:
        return None
    if train_only:
        raise ConfigError("train_only selects parameters for a full fine-tune; it cannot be combined with LoRA")
    if audio_encoder:
        raise ConfigError("LoRA adapts the decoder only; train_audio_encoder needs a full fine-tune")
    return lora_config(model_dir, rank, alpha, dropout, targets)


def autocast(dtype: str, device: torch.device):
    """The compute dtype over float32 weights: bf16 autocast for ``bf16`` (or ``auto`` on CUDA that has it), else
    none."""
    if dtype not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"dtype must be auto, fp32 or bf16, not {dtype!r}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if dtype == "bf16" and device.type == "cuda" and not cuda_bf16:
        raise ConfigError(f"dtype bf16: {torch.cuda.get_device_name(device)} does not support bfloat16")
    if dtype == "bf16" or (dtype == "auto" and cuda_bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_model(model_dir: str, resume: Path, resumed: bool, sel: Trainables):
    """(model in float32 on this process's device, its trainable parameters), from ``resume`` when ``resumed``."""
    is_adapter = (resume / ADAPTER_CONFIG).is_file()
    if resumed and is_adapter != (sel.lora is not None):
        kinds = ("a full fine-tune", "a LoRA adapter")
        raise ConfigError(f"{resume} holds {kinds[is_adapter]} but this run asks for {kinds[sel.lora is not None]}; "
                          "rerun with the original settings or use another output directory")
    if sel.lora is not None:
        model = load(model_dir, device=dist.device(), dtype=torch.float32)
        return model, load_adapter(model, resume, expect=sel.lora) if resumed else add_lora(model, sel.lora)
    # a partial checkpoint holds just the trained tensors: load the base, then overlay them
    partial = resumed and is_partial(resume)
    model = load(resume if resumed and not partial else model_dir, device=dist.device(), dtype=torch.float32)
    if partial:
        load_partial(model, model_dir, resume)
    model.requires_grad_(False)
    named = model.named_parameters()
    trainable = [p for n, p in named if n.startswith(sel.train_only)] if sel.train_only else \
        [p for n, p in named if sel.audio_encoder or not n.startswith("audio_tower")]
    if not trainable:
        raise ConfigError(f"train_only={sel.train_only}: no parameter name starts with these prefixes")
    for p in trainable:
        p.requires_grad_(True)
        if sel.last_rows and p.dim() == 2:  # e.g. the rows of tokens a checkpoint added; with a zero gradient
            keep = torch.zeros(p.shape[0], 1, device=p.device)  # (and no weight decay) AdamW leaves a row unchanged
            keep[-sel.last_rows:] = 1
            p.register_hook(lambda g, keep=keep: g * keep)
    return model, trainable


class Run:
    """One run in ``out``: the model and its trainable parameters (``model``, ``trainable``), resumed from
    ``out/checkpoint`` when that holds trainer state (``resumed``). Call ``shard``, then ``optimizer``, then
    ``fit`` with the step function. ``partial``: a ``train_only`` run's resumable checkpoints hold only the trained
    tensors."""

    def __init__(self, model_dir: str, out: str | os.PathLike, sel: Trainables, seed: int, partial: bool = False):
        self.rank, self.world = dist.setup()
        self.model_dir, self.out, self.sel = model_dir, Path(out), sel
        self.resume_dir = self.out / "checkpoint"
        self.state = load_trainer_state(self.resume_dir)
        if self.state is None:
            torch.manual_seed(seed)  # LoRA's initial weights and dropout masks; a resumed run restores the RNG
        self.model, self.trainable = load_model(model_dir, self.resume_dir, self.resumed, sel)
        self.partial = partial and bool(sel.train_only) and sel.lora is None
        # a trainable projector (Qwen2-Audio's sits outside the tower) needs the audio rows in the graph
        self.audio_grad = any(p.requires_grad for n, p in self.model.named_parameters()
                              if n.startswith(("audio_tower", "projector")))
        self.step = 0
        self.opt: torch.optim.Optimizer | None = None
        self.sched = None

    @property
    def resumed(self) -> bool:
        return self.state is not None

    def shard(self) -> torch.nn.Module:
        """FSDP2 over the processes (nothing with one): the model the step function trains."""
        if self.world > 1:
            self.model = dist.shard(self.model)
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        return self.model

    def optimizer(self, lr: float, weight_decay: float, schedule: Callable[[int], float]) -> None:
        """AdamW over the trainable parameters with ``schedule`` (step -> lr factor); a resumed run restores them,
        the step and the RNG streams here, after everything that draws random numbers at start-up."""
        self.opt = torch.optim.AdamW(self.trainable, lr=lr, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        if self.state is None:
            return
        optim = self.state["optimizer"]
        if self.world == 1 and isinstance(optim["param_groups"][0]["params"][0], int):  # older one-process SFT
            self.opt.load_state_dict(optim)
        else:
            dist.load_optimizer(self.model, self.opt, optim)
        self.sched.load_state_dict(self.state["scheduler"])
        self.step = int(self.state["step"])
        torch.set_rng_state(self.state["torch_rng"])
        if "cuda_rng" in self.state and self.model.device.type == "cuda":  # dropout masks on the GPU
            torch.cuda.set_rng_state(self.state["cuda_rng"], self.model.device)

    def trainer_state(self) -> dict:
        """What a resume needs beside the weights (a collective under FSDP2: every process calls it)."""
        # keyed by parameter name: resumable under another process count
        state = {"optimizer": dist.optimizer_state(self.model, self.opt), "scheduler": self.sched.state_dict(),
                 "step": self.step, "torch_rng": torch.get_rng_state()}
        if self.model.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.model.device)
        return state

    def save(self, path: Path, resumable: bool) -> None:
        """Write the weights (with the trainer state when ``resumable``) atomically; every process calls it."""
        state = self.trainer_state() if resumable else None
        model, lora = self.model, self.sel.lora
        if self.partial and resumable:
            named = dist.full_parameters(model) if self.world > 1 else model.named_parameters()
            params = {n: p for n, p in named if n.startswith(self.sel.train_only)}
            if self.rank == 0:
                save_partial(params, self.model_dir, path, state)
        elif lora is not None:
            tensors = adapter_state(model)
            if self.rank == 0:
                save_adapter(model, lora, path, state, state=tensors)
        else:
            params = dict(dist.full_parameters(model)) if self.world > 1 else None
            if self.rank == 0:
                save_checkpoint(model, self.model_dir, path, state, params=params)
        dist.barrier()

    def fit(self, total: int, step_fn: Callable[[], dict], save_every: int, progress: bool = True,
            desc: str = "train", postfix: tuple[str, ...] = (),
            on_metrics: Callable[[dict], None] | None = None) -> list[dict]:
        """Run ``step_fn`` (one optimizer step; it advances ``self.step`` and returns the step's metrics, ``step``
        among them) until ``total`` steps; log each row (``on_metrics`` sees it too; ``postfix`` names the values
        the progress bar shows), checkpoint every ``save_every`` steps and at the end."""
        main = self.rank == 0
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            trim_log(self.out, self.step)
        history = []
        log_path = self.out / "log.jsonl" if main else Path(os.devnull)
        with log_path.open("a") as log, tqdm(total=total, initial=self.step, disable=not progress or not main,
                                             desc=desc, unit="step") as bar:
            while self.step < total:
                metrics = step_fn()
                history.append(metrics)
                log.write(json.dumps(metrics) + "\n")
                log.flush()
                if on_metrics is not None:
                    on_metrics(metrics)
                if postfix:
                    bar.set_postfix({k: f"{metrics.get(k, 0.0):.4f}" for k in postfix})
                bar.update(1)
                if (save_every and self.step % save_every == 0) or self.step == total:
                    self.save(self.resume_dir, resumable=True)
        return history
