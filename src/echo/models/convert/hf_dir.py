"""Writing converted models as Hugging Face directories: atomically (a build directory renamed into place), with
a checksum manifest that ``verify_manifest`` checks, so a half-written, stale or altered directory is never
mistaken for a good one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from ...errors import CheckpointError

MANIFEST = "echo-manifest.json"


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tokenizer(tok, out: Path, bos: str | None, eos: str, pad: str | None, chat_template: str | None) -> None:
    """tokenizer.json + tokenizer_config.json (and the chat template) through transformers' fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   model_max_length=8192)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(out)


@contextmanager
def atomic_dir(out: Path, force: bool = False):
    """Yield an empty build directory beside ``out``; on success it becomes ``out`` in one rename (an existing
    ``out`` is replaced only with ``force``). A killed build leaves only a ``.partial`` directory, removed by the
    next build."""
    out = Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"{out} already exists; remove it or pass --overwrite to rebuild it")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        if not _alive(stale.name.rsplit("-", 1)[-1]):  # a killed build's leftovers; a running one's stay
            shutil.rmtree(stale, ignore_errors=True)
    build = out.parent / f".{out.name}.partial-{os.getpid()}"
    build.mkdir()
    try:
        yield build
        for f in build.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            old = out.parent / f".{out.name}.partial-old-{os.getpid()}"
            out.rename(old)
            build.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            build.rename(out)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def write_manifest(d: Path, sources: dict) -> dict:
    """Record every file's sha256 and size plus what the directory was built from; written last."""
    files = {f.name: {"sha256": sha256(f), "bytes": f.stat().st_size}
             for f in sorted(d.iterdir()) if f.is_file() and f.name != MANIFEST}
    manifest = {"format": 1, "sources": sources, "files": files}
    write_json(d / MANIFEST, manifest)
    return manifest


def verify_manifest(d: Path, sources: dict | None = None, rebuild_hint: str = "") -> dict:
    """Check ``d`` against its manifest: every file present with its recorded size and sha256, and (when given)
    built from ``sources``. Raises ``CheckpointError`` naming the file at fault and ``rebuild_hint``."""
    path = Path(d) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: missing or unreadable checksum manifest ({e}); {rebuild_hint}") from e
    if sources is not None and manifest.get("sources") != sources:
        raise CheckpointError(f"{d} is stale: built from {manifest.get('sources')}, but the current sources are "
                              f"{sources}; {rebuild_hint}")
    for name, entry in files.items():
        f = Path(d) / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (listed in {MANIFEST}); {rebuild_hint}")
        if f.stat().st_size != entry["bytes"] or sha256(f) != entry["sha256"]:
            raise CheckpointError(f"{f}: contents differ from the checksum in {MANIFEST} (altered or damaged); "
                                  f"{rebuild_hint}")
    return manifest
