"""Reading a local Hugging Face checkpoint: config.json and safetensors weights (one file, or shards + index).

Safetensors only: a directory holding only pickle weights (``*.bin``, ``*.pt``, ``*.pth``) is refused, never
unpickled. Tensor names are read from the index or the file headers without touching the data; tensors are read
shard by shard, each straight onto the target device and dtype, and a shard none of whose tensors are wanted
(a full Qwen2.5-Omni's talker/token2wav shards) is never opened.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from ..errors import CheckpointError

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def read_config(path: str | os.PathLike) -> dict:
    """The parsed config.json of checkpoint directory ``path``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (echo loads local Hugging Face checkpoint directories)")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{path}: no config.json")
    try:
        raw = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg}: unreadable config ({e})") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg}: expected a JSON object, got {type(raw).__name__}")
    return raw


def weight_map(path: str | os.PathLike) -> dict[str, Path]:
    """Tensor name → the safetensors file that holds it; every file must exist."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: unreadable index ({e})") from e
        files = {name: path / fname for name, fname in names.items()}
        missing = sorted({f.name for f in files.values() if not f.is_file()})
        if missing:
            raise CheckpointError(f"{path}: shard(s) named in model.safetensors.index.json are missing: "
                                  f"{', '.join(missing)}")
        return files
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(f"{path}: only pickle weights ({', '.join(pickles)}); echo reads safetensors only "
                                  "(convert them, e.g. load with transformers and save_pretrained)")
        raise CheckpointError(f"{path}: no *.safetensors weights")
    files = {}
    for shard in shards:
        try:
            with safe_open(shard, framework="pt") as f:
                files.update((name, shard) for name in f.keys())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{shard}: unreadable safetensors file ({e})") from e
    return files


def tensor_shapes(files: dict[str, Path], names: list[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names`` read from the file headers (no tensor data is read)."""
    shapes, by_file = {}, _group(files, names)
    for shard, shard_names in by_file.items():
        with safe_open(shard, framework="pt") as f:
            for name in shard_names:
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def read_tensors(files: dict[str, Path], names: list[str], device: torch.device,
                 dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for ``names``, one shard at a time, each tensor already on ``device`` in ``dtype``.
    A tensor that is not floating point, or holds NaN or inf, raises CheckpointError naming it and its file: such
    weights would only show up later as garbage text or NaN losses."""
    for shard, shard_names in _group(files, names).items():
        with safe_open(shard, framework="pt", device=str(device)) as f:
            for name in shard_names:
                t = f.get_tensor(name)
                if not t.is_floating_point():
                    raise CheckpointError(f"{shard}: tensor {name} has dtype {t.dtype}; weights must be floating "
                                          "point (a quantized or corrupt checkpoint?)")
                cast = t.to(dtype)
                if not bool(torch.isfinite(cast).all()):
                    bad = int(t.numel() - torch.isfinite(t).sum())
                    if bad:
                        raise CheckpointError(f"{shard}: tensor {name} holds {bad} non-finite values (NaN or inf) "
                                              f"of {t.numel()}; the checkpoint is corrupt or its training diverged")
                    raise CheckpointError(f"{shard}: tensor {name} ({t.dtype}) overflows {dtype}; load it in a "
                                          "wider dtype")
                yield name, cast


def _group(files: dict[str, Path], names: list[str]) -> dict[Path, list[str]]:
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    return by_file


class KeyMap:
    """Checkpoint tensor name → echo parameter name through ordered ``(pattern, replacement)`` rules; a ``None``
    replacement means the tensor is deliberately not loaded; a name no rule matches is unexpected."""

    def __init__(self, rules: list[tuple[str, str | None]]):
        self.rules = [(re.compile(p), r) for p, r in rules]

    def __call__(self, name: str) -> str | None | object:
        for pattern, repl in self.rules:
            if pattern.match(name):
                return None if repl is None else pattern.sub(repl, name, count=1)
        return _UNEXPECTED


_UNEXPECTED = object()


def is_unexpected(mapped) -> bool:
    return mapped is _UNEXPECTED
