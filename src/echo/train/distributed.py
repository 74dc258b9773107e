"""torchrun plumbing for the trainers: process group, FSDP2 sharding, global sums, full weights and optimizer
state. With one process (no torchrun) every function is the identity or a no-op, so the trainers run one path.

Backend: nccl on CUDA, gloo on CPU. FSDP2 (``fully_shard``) shards each decoder layer, then the whole model.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as tdist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from ..launch import dist_env


def setup() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun with WORLD_SIZE > 1."""
    world = dist_env()[1]
    if world > 1 and not tdist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_teardown)  # a process group still alive at interpreter exit can abort the process
    return dist_env()


def _teardown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: each decoder layer its own unit (so only one layer is gathered at a time), then the root."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for layer in model.decoder.layers:
        fully_shard(layer)
    fully_shard(model)
    # the trainers call these model methods, not forward(): each gathers the root's parameters the same way
    for method in ("embed", "encode_audio", "logits_at", "forward_flat", "compute_logits"):
        register_fsdp_forward_method(model, method)
    return model


def all_reduce_sum(x: float) -> float:
    if world_size() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device())
    tdist.all_reduce(t)
    return float(t)


def all_reduce_max(x: float) -> float:
    if world_size() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return float(t)


def gather(items: list) -> list:
    """Every process's ``items`` concatenated in rank order (small picklable metrics only)."""
    if world_size() == 1:
        return list(items)
    out: list = [None] * world_size()
    tdist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def barrier() -> None:
    if world_size() > 1:
        tdist.barrier()


def full_parameters(model: torch.nn.Module, trainable_only: bool = False):
    """(name, full tensor) of every parameter (those that require grad, with ``trainable_only``: the same on every
    rank); a collective under FSDP2 (every rank must iterate it all)."""
    for name, p in model.named_parameters(remove_duplicate=False):  # tied weights under each of their names
        if p.requires_grad or not trainable_only:
            yield name, p.full_tensor() if hasattr(p, "full_tensor") else p


def optimizer_state(model, opt) -> dict:
    """The full (unsharded, CPU) optimizer state keyed by parameter name: portable across process counts."""
    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer(model, opt, state: dict) -> None:
    set_optimizer_state_dict(model, opt, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
