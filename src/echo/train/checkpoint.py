"""Checkpoints in the Hugging Face layout, written atomically, that both ``echo.load`` and transformers' own
classes read: the source checkpoint's tensor names (safetensors) and its config, tokenizer, chat template and
preprocessor files. Trainer state (optimizer, scheduler, RNG, data position) sits beside the weights in
``trainer_state.pt``, loaded with ``weights_only=True``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..durable import atomic_dir, recover_dir
from ..errors import CheckpointError
from ..launch import dist_env
from ..models import checkpoint as ckpt
from ..models.families import FAMILIES
from ..models.loader import config_dtype, tensor_names

_COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
         "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
         "preprocessor_config.json", "processor_config.json")


def save_checkpoint(model, source_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    trainer_state: dict | None = None, params: dict | None = None) -> Path:
    """Write ``model``'s weights under the names ``source_dir`` uses (thinker or Qwen2-Audio layouts), plus the
    source's non-weight files; atomic (a temporary directory renamed into place), so a kill leaves the previous
    checkpoint intact. ``params`` (name -> tensor) replaces the model's own, e.g. full weights gathered under FSDP2."""
    source, out = Path(source_dir), Path(out_dir)
    raw = ckpt.read_config(source)
    savable = [f.architecture for f in FAMILIES.values()]  # a family's own model, not a wrapper around it
    if raw.get("architectures", [None])[0] not in savable:
        raise CheckpointError(f"{source}: saving supports checkpoints of {', '.join(savable)} (a thinker-only "
                              f"Qwen2.5-Omni, not a full one), not {raw.get('architectures')}")
    mapping = tensor_names(source)
    if params is None:  # given: the full tensors gathered from a sharded model
        params = dict(model.named_parameters(remove_duplicate=False))
    # a final checkpoint takes the source's dtype (a bf16 model stays bf16 on disk); a resumable one (with trainer
    # state) keeps the fp32 master weights exactly
    dtype = None if trainer_state is not None else config_dtype(raw)
    tensors = {hf: params[ours].detach().to("cpu", dtype).contiguous() for hf, ours in mapping.items()}
    with atomic_dir(out) as tmp:
        _write(tmp, tensors, source, trainer_state)
    return out


def _write(tmp: Path, tensors: dict, source: Path, trainer_state: dict | None) -> None:
    # tied tensors share storage; safetensors wants each stored once
    seen, unique = {}, {}
    for name, t in tensors.items():
        key = (t.data_ptr(), tuple(t.shape))
        unique[name] = t.clone() if key in seen else t
        seen[key] = name
    save_file(unique, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for name in _COPY:
        if (source / name).is_file():
            shutil.copy2(source / name, tmp / name)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer_state.pt")
    (tmp / "echo_checkpoint.json").write_text(json.dumps({"source": str(source)}))


def load_trainer_state(path: str | os.PathLike) -> dict | None:
    """The trainer state of the resumable checkpoint ``path`` (after recovering an interrupted save), or None."""
    from . import distributed as dist

    if dist_env()[0] == 0:  # one process repairs, the others wait
        recover_dir(Path(path))
    dist.barrier()
    f = Path(path) / "trainer_state.pt"
    return torch.load(f, weights_only=True) if f.is_file() else None
