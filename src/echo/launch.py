"""This process's place among those a launcher started (torchrun): the one reader of the rank and world size."""

from __future__ import annotations

import os
import sys

from .errors import ConfigError


def dist_env() -> tuple[int, int]:
    """``(rank, world_size)``: the process group's once torch.distributed has one, else the ``RANK`` /
    ``WORLD_SIZE`` torchrun sets; ``(0, 1)`` outside torchrun. A malformed environment is a ConfigError."""
    tdist = sys.modules.get("torch.distributed")  # never imported here: reading the rank must stay cheap
    if tdist is not None and tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    raw_rank, raw_world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    try:
        rank, world = int(raw_rank), int(raw_world)
    except ValueError:
        raise ConfigError(f"RANK={raw_rank!r} / WORLD_SIZE={raw_world!r} must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    return rank, world
