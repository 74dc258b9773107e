"""Resumable checkpoints of a ``train_only`` run: only the trained tensors (under echo's parameter names), the base
model's fingerprint and the trainer state, instead of the whole model; a resume loads the base and overlays them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .checkpoint import atomic_dir
from .run_state import model_fingerprint

WEIGHTS = "trainable.safetensors"
BASE = "base.json"


def save_partial(params: dict, base_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 trainer_state: dict) -> Path:
    """Write ``params`` (name -> tensor, fp32 master weights kept exactly) with ``base_dir``'s fingerprint and
    ``trainer_state``, atomically like ``save_checkpoint``."""
    out = Path(out_dir)
    tensors = {n: t.detach().to("cpu").contiguous().clone() for n, t in params.items()}
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / BASE).write_text(json.dumps({"path": str(Path(base_dir).resolve()),
                                            "sha256": model_fingerprint(base_dir)}))
        torch.save(trainer_state, tmp / "trainer_state.pt")
    return out


def is_partial(path: str | os.PathLike) -> bool:
    return (Path(path) / WEIGHTS).is_file()


def load_partial(model: torch.nn.Module, base_dir: str | os.PathLike, path: str | os.PathLike) -> list[str]:
    """Overlay the tensors saved in ``path`` on ``model`` (loaded from ``base_dir``); refuses a checkpoint made on
    another base model or naming parameters the model lacks. Returns the overlaid names."""
    path = Path(path)
    saved = json.loads((path / BASE).read_text())
    now = model_fingerprint(base_dir)
    if saved.get("sha256") != now:
        raise CheckpointError(f"{path} was trained on the base model {saved.get('path')} (fingerprint "
                              f"{str(saved.get('sha256'))[:12]}), but {base_dir} differs (fingerprint {now[:12]}); "
                              "resume with the original base model or start over with --overwrite")
    tensors = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise CheckpointError(f"{path}: saved tensors {missing[:3]} are not parameters of the model in {base_dir}")
    with torch.no_grad():
        for name, t in tensors.items():
            if params[name].shape != t.shape:
                raise CheckpointError(f"{path}: {name} has shape {tuple(t.shape)}, the model's is "
                                      f"{tuple(params[name].shape)}")
            params[name].copy_(t.to(params[name].device, params[name].dtype))
    return sorted(tensors)
