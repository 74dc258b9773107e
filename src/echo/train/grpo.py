"""GRPO with re-listening rollouts on echo's engine.

One step: the step's prompts -> ``rollout`` (n samples each through the engine, which re-listens at every
``</seg>``) -> rewards (named terms) -> group-normalised advantages -> the reference model's log-probs -> one
optimizer step per PPO epoch over the batch (micro-batched forwards on the exact sampled ids, each prompt computed
once for all its samples; clipped ratio, dual clip, k3 KL; generated tokens only; bf16 autocast with ``dtype`` as
SFT's) -> the new weights reach the engine in place.

Colocated: one process holds the trainer's model and the engine. With one process they are the same module, so
an optimizer step *is* the weight push (the engine only drops encoder outputs if the encoder was trained). Under
torchrun the trainer's model is sharded with FSDP2 and the engine decodes on a full replica; after each step every
rank gathers the trained parameters (``full_tensor``) and copies them into its replica with ``Engine.update_weights``.

With ``lora_rank`` only a LoRA adapter on the decoder trains: the engine decodes the same base tensors with the
adapters folded in for the rollouts and taken out exactly after (``lora.merged``; nothing copied), the KL's
reference is this model with its adapters switched off (no second model), and checkpoints are peft adapters like
LoRA SFT's, which ``adapter_parts`` turns into an assembly part. The loading, trainable selection, optimizer, resume
and checkpoints are ``train/loop.py``'s.
Each rank rolls out its own share of the prompts (whole groups, so advantages need no communication); loss
denominators are global, so the result equals one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from ..audio.io import SAMPLING_RATE
from ..config import EngineConfig, SamplingParams
from ..data.formats import MAX_BAD_SHARE, check_share, refuse_bad_share
from ..engine.llm import Engine
from ..engine.sampler import LogitsProcessor
from ..errors import ConfigError, EchoError
from ..models.loader import load, resolve_model
from . import distributed as dist
from .grpo_loss import PolicyLossConfig, group_advantages, policy_loss
from .lora import DEFAULT_TARGETS, merged, without_adapters
from .loop import Run, Trainables, autocast, lora_settings
from .rewards import RewardFn
from .rl_data import RLRecord, read_rl_records
from .rollout import Rollout, old_logprobs, response_logprobs, rollout
from .run_state import describe, prepare_run


@dataclasses.dataclass(slots=True)
class GRPOConfig:
    group_size: int = 8
    prompts_per_step: int = 4          # global: split over processes
    steps: int | None = None           # None: ``epochs`` passes over the data
    epochs: int = 1
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ppo_epochs: int = 1                # optimizer steps per batch of rollouts
    micro_batch: int = 8               # trajectories per trainer forward
    dtype: str = "auto"                # the update's compute dtype over float32 weights, as SFT's (train/loop.py)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 1024
    std_normalize: bool = True
    loss: PolicyLossConfig = dataclasses.field(default_factory=PolicyLossConfig)
    train_audio_encoder: bool = False
    train_only: tuple[str, ...] = ()   # train just these parameter-name prefixes, e.g. ("projector",)
    lora_rank: int = 0                 # > 0: train a LoRA adapter of this rank on the decoder, nothing else
    lora_alpha: float | None = None    # None: 2 * lora_rank
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    val_data: str | None = None
    val_every: int = 0                 # steps between greedy validations (0: never)
    save_every: int = 0                # steps between checkpoints (0: only at the end)
    seed: int = 0
    engine: EngineConfig = dataclasses.field(default_factory=lambda: EngineConfig(kv_cache_bytes=1 << 30))
    progress: bool = True
    tensorboard: bool = False
    max_bad_share: float = MAX_BAD_SHARE  # malformed data rows are skipped and reported; more than this share fails

    def __post_init__(self):
        check_share("GRPOConfig.max_bad_share", self.max_bad_share)
        for name in ("group_size", "prompts_per_step", "epochs", "ppo_epochs", "micro_batch", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"GRPOConfig.{name} must be positive, got {getattr(self, name)}")
        if self.steps is not None and self.steps <= 0:
            raise ConfigError(f"GRPOConfig.steps must be positive (or None), got {self.steps}")
        for name in ("warmup_steps", "save_every", "val_every", "lora_rank"):
            if getattr(self, name) < 0:
                raise ConfigError(f"GRPOConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"GRPOConfig.lr must be a positive number, got {self.lr}")


def step_seeds(seed: int, step: int, indices: Sequence[int]) -> list[int]:
    """Sampling seeds of a step's prompts (by position in the global batch); sample i uses seed + i."""
    return [((seed * 1_000_003 + step) * 1_000_003 + i * 65_536) % (1 << 62) for i in indices]


def score(rollouts: list[Rollout], reward_fn: RewardFn, decode=None) -> tuple[torch.Tensor, list[dict]]:
    totals, terms = [], []
    for r in rollouts:
        total, values = reward_fn(r.trajectory(decode))
        totals.append(total)
        terms.append(values)
    return torch.tensor(totals, dtype=torch.float32), terms


class GRPOTrainer:
    def __init__(self, model_dir: str, out_dir: str, cfg: GRPOConfig, reward_fn: RewardFn | None = None,
                 logits_processors: Sequence[LogitsProcessor] = ()):
        self.cfg, self.model_dir, self.out = cfg, model_dir, Path(out_dir)
        self.reward_fn = reward_fn or RewardFn()
        self.warnings: list[str] = []  # "id: warning" of the prompts the engine will serve changed (``usable``)
        self.rank, self.world = dist.setup()
        self.compute = autocast(cfg.dtype, dist.device())
        if cfg.prompts_per_step % self.world:
            raise ConfigError(f"prompts_per_step={cfg.prompts_per_step} does not split over {self.world} processes")
        self.lora = lora_settings(model_dir, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                                  tuple(cfg.train_only), cfg.train_audio_encoder)
        self.run = Run(model_dir, self.out, Trainables(self.lora, tuple(cfg.train_only), 0, cfg.train_audio_encoder),
                       cfg.seed)
        self.resume_dir = self.run.resume_dir
        model = self.run.model
        # a trainable projector (Qwen2-Audio's sits outside the tower) needs the policy pass's audio rows in the
        # graph, and the engine's cached encoder outputs (which include it) go stale at every step
        self.audio_grad = self.run.audio_grad
        self.features = model.resolve_feature_config(model_dir)
        self.ref = None  # the KL's reference: the base model; with LoRA, this model with its adapters off
        if cfg.loss.kl_coef and self.lora is None:
            self.ref = load(model_dir, device=dist.device(), dtype=torch.float32).requires_grad_(False).eval()
        # one process: the engine decodes with this very module (base tensors and adapters), so an optimizer step
        # is the weight push; FSDP2: the engine's full replica receives the trained tensors after each step
        self.engine_model = copy.deepcopy(model).requires_grad_(False) if self.world > 1 else model
        self.engine = Engine(self.engine_model, cfg.engine, self.features, logits_processors)
        self.run.shard()
        self.run.optimizer(cfg.lr, cfg.weight_decay,
                           lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
        self.waves: dict[str, torch.Tensor] = {}

    @property
    def model(self) -> torch.nn.Module:
        return self.run.model

    @property
    def opt(self) -> torch.optim.Optimizer:
        return self.run.opt

    @property
    def sched(self):
        return self.run.sched

    @property
    def step(self) -> int:
        return self.run.step

    @step.setter
    def step(self, value: int) -> None:
        self.run.step = value

    # ---- data ------------------------------------------------------------------------------------------------------

    def batch(self, records: list[RLRecord], step: int) -> list[tuple[int, RLRecord]]:
        """(global index, record) of this rank's share of the step's prompts; data position = (epoch, k)."""
        per_epoch = len(records) // self.cfg.prompts_per_step  # whole batches only (reshuffled every epoch)
        epoch, k = divmod(step, per_epoch)
        order = list(range(len(records)))
        random.Random(self.cfg.seed + epoch).shuffle(order)
        chosen = order[k * self.cfg.prompts_per_step:(k + 1) * self.cfg.prompts_per_step]
        return [(i, records[j]) for i, j in enumerate(chosen) if i % self.world == self.rank]

    def sampling(self, **overrides) -> SamplingParams:
        c = self.cfg
        return SamplingParams(**{"temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k,
                                 "max_new_tokens": c.max_new_tokens, **overrides})

    # ---- one step --------------------------------------------------------------------------------------------------

    def train_step(self, records: list[RLRecord]) -> dict:
        cfg, metrics = self.cfg, {"step": self.step + 1}
        share = self.batch(records, self.step)
        t0 = time.perf_counter()
        self.engine.encoder_cache.clear()  # cache hits within a step only: resumed runs see the same numerics
        cache = self.engine.encoder_cache.stats
        hits0, misses0 = cache.hits, cache.misses
        with self.decoding():
            rolls = rollout(self.engine, [r for _, r in share], cfg.group_size, self.sampling(),
                            step_seeds(cfg.seed, self.step, [i for i, _ in share]))
        t1 = time.perf_counter()
        self.last_rollouts = rolls  # for inspection (benchmarks, debugging); replaced every step
        proc = self.engine_model.processor
        rewards, terms = score(rolls, self.reward_fn, proc.decode if proc is not None else None)
        adv = group_advantages(rewards, cfg.group_size, cfg.std_normalize)
        micro = [list(range(i, min(i + cfg.micro_batch, len(rolls)))) for i in range(0, len(rolls), cfg.micro_batch)]
        n_tok = dist.all_reduce_sum(float(sum(sum(r.mask) for r in rolls)))
        n_seq = dist.all_reduce_sum(float(len(rolls)))
        device = dist.device()
        ref = [None] * len(micro)
        if cfg.loss.kl_coef:
            reference = self.ref if self.ref is not None else self.model
            with torch.no_grad(), self.compute, \
                    (without_adapters(self.model) if self.ref is None else contextlib.nullcontext()):
                ref = [response_logprobs(reference, [rolls[i] for i in mb], self.features, self.waves,
                                         cfg.temperature)[0] for mb in micro]
        t2 = time.perf_counter()
        self.model.train()
        step_metrics: list[dict] = []
        for _ in range(cfg.ppo_epochs):
            self.opt.zero_grad(set_to_none=True)
            for mb, ref_lp in zip(micro, ref):
                part = [rolls[i] for i in mb]
                with self.compute:
                    logp, mask = response_logprobs(self.model, part, self.features, self.waves, cfg.temperature,
                                                   grad_audio=self.audio_grad)
                old = old_logprobs(part, tuple(mask.shape), device)
                loss, m = policy_loss(logp, old, adv[mb].to(device), mask, cfg.loss, ref_lp, n_tok, n_seq)
                (loss * self.world).backward()  # FSDP averages gradients over ranks; the loss is a global sum
                m["loss"] = float(loss.detach())  # this process's share of the global loss
                step_metrics.append(m)
            if cfg.grad_clip:
                metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], cfg.grad_clip))
            self.opt.step()
            self.sched.step()
        self.model.eval()
        self.push_weights()
        t3 = time.perf_counter()
        self.step += 1
        # every process's trajectories and token metrics, so the log describes the global batch
        per_traj = dist.gather([(float(rw), t, [(r.decision.applied_samples[1] - r.decision.applied_samples[0]) / SAMPLING_RATE
                                               for r in x.relistens if r.inserted], sum(x.mask))
                                for rw, t, x in zip(rewards.tolist(), terms, rolls)])
        tok = dist.gather([(m["tokens"], {k: v for k, v in m.items() if k not in ("tokens", "loss")}, m["loss"])
                           for m in step_metrics])
        everything = torch.tensor([x[0] for x in per_traj])
        spans = [d for x in per_traj for d in x[2]]
        n_sampled = sum(x[3] for x in per_traj)
        weight = max(1.0, sum(n for n, _, _ in tok))
        elapsed = dist.all_reduce_max(t1 - t0)
        hits, misses = dist.all_reduce_sum(cache.hits - hits0), dist.all_reduce_sum(cache.misses - misses0)
        metrics.update({
            "reward": float(everything.mean()),
            "reward_std": float(everything.std()) if len(everything) > 1 else 0.0,
            **{f"reward/{k}": sum(x[1][k] for x in per_traj) / len(per_traj) for k in per_traj[0][1]},
            **{k: sum(n * m[k] for n, m, _ in tok) / weight for k in tok[0][1]},
            "loss": sum(loss for _, _, loss in tok) / cfg.ppo_epochs,
            "relistens_per_trajectory": len(spans) / len(per_traj),
            "span_seconds": sum(spans) / len(spans) if spans else 0.0,
            "response_tokens": n_sampled / len(per_traj), "rollout_tokens_per_s": n_sampled / max(elapsed, 1e-9),
            "encoder_cache_hit_rate": hits / max(1.0, hits + misses),
            "time/rollout": elapsed, "time/logprob": dist.all_reduce_max(t2 - t1),
            "time/update": dist.all_reduce_max(t3 - t2), "lr": self.sched.get_last_lr()[0]})
        return metrics

    def decoding(self):
        """Where the engine decodes: with LoRA, its model with the adapters folded into the base weights (plain
        linears, no adapter code per token; the base comes back exactly after, ``lora.merged``)."""
        return merged(self.engine_model) if self.lora is not None else contextlib.nullcontext()

    def push_weights(self) -> None:
        """Trainer -> engine. Same module (one process): nothing to copy. FSDP2: gather the trained tensors (the
        adapters alone under LoRA) and copy them into the engine's replica in place."""
        clear = self.audio_grad
        if self.engine_model is self.model:
            self.engine.update_weights((), clear_encoder_cache=clear)
        else:
            self.engine.update_weights(dist.full_parameters(self.model, trainable_only=True), clear_encoder_cache=clear)

    # ---- validation, checkpoints, loop -----------------------------------------------------------------------------

    def validate(self, records: list[RLRecord]) -> dict:
        share = [r for i, r in enumerate(records) if i % self.world == self.rank]
        with self.decoding():
            rolls = rollout(self.engine, share, 1, self.sampling(temperature=0.0), [0] * len(share)) if share else []
        rewards, terms = score(rolls, self.reward_fn) if rolls else (torch.zeros(0), [])
        n = dist.all_reduce_sum(float(len(rolls)))
        out = {"val/reward": dist.all_reduce_sum(float(rewards.sum())) / max(n, 1.0)}
        for k in (terms[0] if terms else {}):
            out[f"val/{k}"] = dist.all_reduce_sum(sum(t[k] for t in terms)) / max(n, 1.0)
        return out

    def save(self, path: Path, trainer_state: bool) -> None:
        self.run.save(path, resumable=trainer_state)

    def usable(self, records: list[RLRecord]) -> tuple[list[RLRecord], list[tuple[str, str]]]:
        """The records whose audio the engine accepts, and (id, reason) for the others: a clip the encoder refuses
        would fail its whole group at rollout time. Every process checks the same list the same way, so all
        keep the same records and run the same number of steps and forwards. What the engine will change to serve
        a record (a truncated clip) is added to ``self.warnings`` once, here, not at every rollout."""
        verdict: dict[str, str | None] = {}
        heard: dict[str, list[str]] = {}
        ok, bad = [], []
        for rec in tqdm(records, desc="checking audio", unit="clip",
                        disable=not (self.cfg.progress and self.rank == 0)):
            if rec.audio not in verdict:
                try:
                    heard[rec.audio] = self.engine.check_audio(rec.audio)
                    verdict[rec.audio] = None
                except EchoError as exc:
                    verdict[rec.audio] = str(exc)
            if verdict[rec.audio] is None:
                ok.append(rec)
                self.warnings += [f"{rec.id}: {w}" for w in heard[rec.audio]]
            else:
                bad.append((rec.id, verdict[rec.audio]))
        return ok, bad

    def fit(self, data: str) -> dict:
        records, skipped = read_prompts(data, self.cfg)
        records, refused = self.usable(records)
        skipped += refused
        if len(records) < self.cfg.prompts_per_step:
            raise EchoError(f"{data}: {len(records)} usable records ({len(skipped)} skipped: {skipped[:3]}) do not "
                             f"fill one step of prompts_per_step={self.cfg.prompts_per_step}")
        val = self.usable(read_rl_records(self.cfg.val_data)[0])[0] if self.cfg.val_data else []
        cfg = self.cfg
        total = cfg.steps or cfg.epochs * (len(records) // cfg.prompts_per_step)

        def step_fn() -> dict:
            metrics = self.train_step(records)
            if val and cfg.val_every and self.step % cfg.val_every == 0:
                metrics.update(self.validate(val))
            return metrics

        writer = _tensorboard(self.out) if cfg.tensorboard and self.rank == 0 else None

        def on_metrics(metrics: dict) -> None:
            for k, v in metrics.items():
                writer.add_scalar(k, v, self.step)

        try:
            history = self.run.fit(total, step_fn, cfg.save_every, cfg.progress, desc="grpo", postfix=("reward", "kl"),
                                   on_metrics=on_metrics if writer is not None else None)
        finally:
            if writer is not None:
                writer.close()
        self.save(self.out / "final", trainer_state=False)
        return {"steps": self.step, "records": len(records), "skipped": skipped, "history": history,
                "warnings": list(self.warnings)}


def read_prompts(data: str, cfg: GRPOConfig) -> tuple[list[RLRecord], list[tuple[str, str]]]:
    """The usable prompts and the skipped rows; at least one step's worth, and no more than ``max_bad_share`` of
    the rows skipped, or EchoError."""
    records, skipped = read_rl_records(data)
    refuse_bad_share(data, skipped, len(records) + len(skipped), cfg.max_bad_share)
    if len(records) < cfg.prompts_per_step:
        raise EchoError(f"{data}: {len(records)} usable records ({len(skipped)} skipped: {skipped[:3]}) do not "
                        f"fill one step of prompts_per_step={cfg.prompts_per_step}")
    return records, skipped


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise EchoError("--tensorboard needs the tensorboard package (pip install tensorboard)") from exc
    return SummaryWriter(str(out / "tensorboard"))


def train_grpo(model_dir: str, data: str, out_dir: str, cfg: GRPOConfig | None = None,
               reward_fn: RewardFn | None = None, logits_processors: Sequence[LogitsProcessor] = (),
               overwrite: bool = False) -> dict:
    """GRPO from ``model_dir`` on ``data`` (verl parquet or EAQA JSONL); writes ``out_dir/final`` and the resumable
    ``out_dir/checkpoint``. Rerunning the same command after a kill resumes from the latter; a rerun with another
    model, data, reward or settings is refused (``run_state``) unless ``overwrite`` starts over."""
    cfg, reward_fn, model_dir = cfg or GRPOConfig(), reward_fn or RewardFn(), resolve_model(model_dir)
    dist.setup()
    autocast(cfg.dtype, dist.device())  # an invalid dtype is refused before the run directory is touched
    prepare_run(out_dir, describe("grpo", model_dir, data, cfg,
                                  reward=[[name, getattr(fn, "__qualname__", str(fn)), w]
                                          for name, fn, w in reward_fn.terms]), overwrite)
    read_prompts(data, cfg)  # bad data is reported before the model loads and the KV cache is allocated
    return GRPOTrainer(model_dir, out_dir, cfg or GRPOConfig(), reward_fn, logits_processors).fit(data)
