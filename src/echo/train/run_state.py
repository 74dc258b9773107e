"""What a training run directory promises about itself: ``run.json`` records the run's settings and fingerprints
of its base model and data, so rerunning the command resumes only the same run. A rerun with other data, epochs,
lr, ... is refused with the differing fields named, or started over with ``overwrite``. Also keeps ``log.jsonl``
free of rows a kill made the resumed run log twice."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from ..durable import read_jsonl, require_file, write_atomic
from ..errors import ConfigError
from ..launch import dist_env
from . import distributed as dist
from .lora import DEFAULT_TARGETS

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
# settings that change neither the weights nor the data order: a resume may change them
_FREE = {"progress", "save_every", "tensorboard", "max_bad_share", "feature_cache", "engine.kv_cache_bytes", "engine.num_blocks",
         "engine.max_num_seqs", "engine.max_num_batched_tokens", "engine.encoder_cache_bytes"}

# settings added after runs were recorded, with the value those runs trained with: a recorded run without the key
# resumes when the rerun asks for that value
_ADDED = {"lora_rank": 0, "lora_alpha": None, "lora_dropout": 0.0, "lora_targets": list(DEFAULT_TARGETS),
          "dtype": "auto"}


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (the data a run trains on)."""
    path = Path(require_file(path, "data file"))
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of config.json plus the names and sizes of the weight files: the same base model wherever it lies,
    without reading gigabytes."""
    path = Path(path)
    h = hashlib.sha256()
    if (path / "config.json").is_file():
        h.update((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def describe(kind: str, model_dir: str, data: str, config, **extra) -> dict:
    cfg = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    return {"kind": kind, "model": {"path": str(Path(model_dir).resolve()), "sha256": model_fingerprint(model_dir)},
            "data": {"path": str(Path(data).resolve()), "sha256": file_fingerprint(data)},
            "config": cfg, **json.loads(json.dumps(extra, default=str))}


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("model", "data"):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def differences(saved: dict, now: dict) -> list[str]:
    a, b = _flat({k: v for k, v in saved.items()}), _flat(now)
    out = []
    for key in sorted(set(a) | set(b)):
        name = key.removeprefix("config.")
        if name in _FREE:
            continue
        old, new = a.get(key), b.get(key)
        if key in ("model", "data"):
            if (old or {}).get("sha256") != (new or {}).get("sha256"):
                out.append(f"{key} ({(old or {}).get('path')} -> {new['path']}: contents differ)")
        elif old != new and not (key not in a and name in _ADDED and new == _ADDED[name]):
            out.append(f"{name} ({old!r} -> {new!r})")
    return out


def prepare_run(out: str | os.PathLike, run: dict, overwrite: bool = False) -> None:
    """Before a run starts or resumes in ``out``: refuse a directory holding another run (naming what differs),
    or with ``overwrite`` discard it; then record ``run``. Rank 0 acts, the other processes wait."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    saved_path = out / RUN_FILE
    saved = None
    if saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text())
        except (OSError, json.JSONDecodeError):
            saved = None
    has_run = any((out / n).exists() for n in ("checkpoint", "checkpoint.new", "checkpoint.old", "final", LOG_FILE))
    if not overwrite and saved is not None and has_run:
        diff = differences(saved, run)
        if diff:
            raise ConfigError(
                f"{out} holds a {saved.get('kind', 'training')} run with other settings: {'; '.join(diff)}. Rerun "
                f"with the original settings to resume it, pass --overwrite to start over in {out}, or train from "
                f"{out}/final into a new --out to continue on new data")
    if dist_env()[0] == 0:
        if overwrite:
            for name in ("checkpoint", "checkpoint.tmp", "checkpoint.new", "checkpoint.old", "final", "final.tmp",
                         "final.new", "final.old", "tensorboard"):
                shutil.rmtree(out / name, ignore_errors=True)
            for name in (LOG_FILE, RUN_FILE):
                (out / name).unlink(missing_ok=True)
        if overwrite or saved is None or not has_run:
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / RUN_FILE, json.dumps(run, indent=2))
    dist.barrier()


def trim_log(out: str | os.PathLike, step: int) -> None:
    """Keep only ``log.jsonl`` rows of steps <= ``step`` (the resumed step): rows logged after the last checkpoint
    by a killed run are logged again by the resumed one, never twice."""
    path = Path(out) / LOG_FILE
    if not path.exists():
        return
    rows = [r for r in read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= step]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
