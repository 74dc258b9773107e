"""LoRA through peft on echo's own modules: adapters on the decoder's linear layers only (the audio tower's
identically named projections are never touched), saved in peft's standard layout (``adapter_config.json`` +
``adapter_model.safetensors``, tensors under ``base_model.model.<echo module>``, so ``PeftModel.from_pretrained``
reads them onto an ``echo.load``-ed base too), and merged into a full checkpoint in the Hugging Face layout."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, ConfigError
from ..models import checkpoint as ckpt
from ..models.loader import config_dtype, load, resolve_model, tensor_names
from .checkpoint import atomic_dir, save_checkpoint

if TYPE_CHECKING:
    from peft import LoraConfig


def _peft():
    """peft, imported on first use: only LoRA runs need the train extra."""
    try:
        import peft
        import peft.tuners.tuners_utils  # noqa: F401
    except ImportError as exc:
        raise ConfigError("LoRA needs peft: pip install 'echo-lalm[train]'") from exc
    return peft

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before each module name


def lora_config(base_dir: str | os.PathLike, rank: int, alpha: float | None = None, dropout: float = 0.0,
                targets=DEFAULT_TARGETS) -> LoraConfig:
    """A peft ``LoraConfig`` for the decoder of the model in ``base_dir``; ``alpha`` defaults to ``2 * rank``."""
    unknown = sorted(set(targets) - set(DEFAULT_TARGETS))
    if rank <= 0 or not targets or unknown:
        raise ConfigError(f"LoRA needs rank > 0 (got {rank}) and targets among {', '.join(DEFAULT_TARGETS)} "
                          f"(got {list(targets)})")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"lora_dropout must be in [0, 1), got {dropout}")
    return _peft().LoraConfig(r=rank, lora_alpha=2 * rank if alpha is None else alpha, lora_dropout=dropout,
                      target_modules=rf"decoder\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(map(re.escape, targets))})",
                      base_model_name_or_path=str(Path(base_dir).resolve()))


def add_lora(model, config: LoraConfig) -> list[torch.nn.Parameter]:
    """Freeze ``model`` and inject fresh adapters in place; returns the adapters' parameters (the trainable ones)."""
    # what PeftModel records for a model outside transformers; load_adapter checks it
    config.auto_mapping = {"base_model_class": type(model).__name__, "parent_library": type(model).__module__}
    model.requires_grad_(False)
    _peft().inject_adapter_in_model(config, model)
    model.train(model.training)  # new modules (LoRA dropout) start in train mode; follow the model's
    return [p for n, p in model.named_parameters() if ".lora_" in n]


@contextlib.contextmanager
def without_adapters(model):
    """``model`` as its base inside the block (every LoRA layer passes its input to the base layer alone); the
    adapters are back, trainable, after it."""
    layers = [m for m in model.modules() if isinstance(m, _peft().tuners.tuners_utils.BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


def _bits(w: torch.Tensor) -> int:
    """A checksum of a float32 tensor's bit patterns: one changed ulp changes it."""
    return int(w.view(torch.int32).sum(dtype=torch.int64))


@contextlib.contextmanager
def merged(model):
    """``model`` with each adapter folded into its base weight (``W + scale * B @ A``, in place) and its LoRA layers
    replaced by their base layers inside the block: decoding then runs plain linears, no adapter code. After the
    block every base weight is restored bit for bit (the KL's reference and the next update read it): the delta is
    recomputed from the unchanged adapters and subtracted, and the elements where that subtraction rounds to
    another value keep their original aside (index and value, 8 bytes each; none while B = 0, about one in ten
    for a random adapter a tenth the size of random weights), never a copy of the base; a checksum proves each
    restore."""
    peft = _peft()
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)]

    def delta(m, w: torch.Tensor) -> torch.Tensor:
        return sum((m.get_delta_weight(a) for a in m.active_adapters if a in m.lora_A), torch.zeros_like(w)).to(w.dtype)

    kept = []
    try:
        with torch.no_grad():
            for name, m in layers:
                w = m.get_base_layer().weight
                d = delta(m, w)
                folded = w + d
                off = ((folded - d) != w).flatten().nonzero()[:, 0]  # where subtracting will not give w back
                off = off.to(torch.int32) if w.numel() < 2**31 else off
                entry = (off, w.flatten()[off], _bits(w))
                w.copy_(folded)
                kept.append(entry)
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, m.get_base_layer())
        yield model
    finally:
        wrong = []
        with torch.no_grad():
            for (name, m), (off, values, bits) in zip(layers, kept):
                w = m.get_base_layer().weight
                w.sub_(delta(m, w))
                w.view(-1)[off] = values
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, m)
                if _bits(w) != bits:
                    wrong.append(name)
        if wrong:
            raise RuntimeError(f"base weights not restored exactly after decoding merged: {', '.join(wrong[:4])}")


def read_config(adapter_dir: str | os.PathLike) -> LoraConfig:
    """The ``LoraConfig`` of a peft adapter directory; raises ``CheckpointError`` naming what is missing or wrong."""
    path = Path(adapter_dir)
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{path}: no {CONFIG}; not a peft adapter directory")
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS} (echo reads adapter weights from safetensors only)")
    try:
        raw = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / CONFIG}: not valid JSON ({e})") from e
    if raw.get("peft_type") != "LORA":
        raise CheckpointError(f"{path / CONFIG}: peft_type {raw.get('peft_type')!r}, echo merges LORA adapters only")
    try:
        return _peft().LoraConfig.from_pretrained(str(path))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG}: peft cannot read it ({e})") from e


def load_adapter(model, adapter_dir: str | os.PathLike, expect: LoraConfig | None = None) -> list[torch.nn.Parameter]:
    """Inject the adapter saved in ``adapter_dir`` into ``model`` with its weights; returns its parameters.
    ``expect``: the LoRA settings a resumed run asks for, which must be the saved ones."""
    path = Path(adapter_dir)
    config = read_config(path)
    where = f"adapter {path} (trained on {config.base_model_name_or_path})"
    base_class = (config.auto_mapping or {}).get("base_model_class")
    if base_class not in (None, type(model).__name__):
        raise CheckpointError(f"{where} is for a {base_class}, not a {type(model).__name__}")
    if expect is not None:
        fields = ("r", "lora_alpha", "lora_dropout", "target_modules")
        diff = [f"{f}={getattr(config, f)!r} (asked {getattr(expect, f)!r})" for f in fields
                if getattr(config, f) != getattr(expect, f)]
        if diff:
            raise ConfigError(f"{where} was trained with other LoRA settings: {'; '.join(diff)}")
    try:
        params = add_lora(model, config)
    except ValueError as e:  # peft: no target module found in this model
        raise CheckpointError(f"{where} does not fit {type(model).__name__}: {e}") from e
    saved = load_file(str(path / WEIGHTS), device=str(model.device))
    saved = {k.removeprefix(_PREFIX): v for k, v in saved.items()}
    wanted = {k: tuple(v.shape) for k, v in _peft().get_peft_model_state_dict(model).items()}
    bad = sorted(set(saved) ^ set(wanted)) + [f"{k} {tuple(v.shape)} (base needs {wanted[k]})"
                                              for k, v in saved.items() if k in wanted and tuple(v.shape) != wanted[k]]
    if bad:
        raise CheckpointError(f"{where} does not match this base model: {', '.join(bad[:6])}"
                              + (f" … and {len(bad) - 6} more" if len(bad) > 6 else ""))
    _peft().set_peft_model_state_dict(model, saved)
    return params


def adapter_state(model) -> dict:
    """The adapter's tensors by peft's names; full tensors under FSDP2 (a collective: every process calls it)."""
    state = _peft().get_peft_model_state_dict(model)
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in state.items()}


def save_adapter(model, config: LoraConfig, out_dir: str | os.PathLike, trainer_state: dict | None = None,
                 state: dict | None = None) -> Path:
    """Write ``model``'s adapter (``state`` when given: already gathered) and ``trainer_state.pt`` atomically."""
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        config.save_pretrained(str(tmp))
        state = adapter_state(model) if state is None else state
        tensors = {_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
    return out


def adapter_parts(adapter_dir: str | os.PathLike, base_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """The adapter in ``adapter_dir`` as one assembly part file (``echo.models.convert.assembly.apply_parts``): its
    low-rank factors under the checkpoint names of ``base_dir`` (``<module>.lora_A.weight``/``.lora_B.weight``) and
    the scale ``lora_alpha / r`` in the metadata; far smaller than the merged weights it stands for."""
    config = read_config(adapter_dir)
    if getattr(config, "use_rslora", False) or getattr(config, "use_dora", False):
        raise ConfigError(f"{adapter_dir}: only plain LoRA adapters (no rsLoRA, no DoRA) become parts")
    base_dir = resolve_model(base_dir)
    ours_to_hf = {ours: hf for hf, ours in tensor_names(base_dir).items()}
    tensors = {}
    for name, t in load_file(str(Path(adapter_dir) / WEIGHTS)).items():
        module, _, factor = name.removeprefix(_PREFIX).rpartition(".lora_")
        hf = ours_to_hf.get(module + ".weight")
        if hf is None:
            raise CheckpointError(f"{adapter_dir}: adapter tensor {name} is on no weight of {base_dir}")
        tensors[f"{hf.removesuffix('.weight')}.lora_{factor}"] = t.contiguous()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest), metadata={"format": "pt", "lora_scale": repr(config.lora_alpha / config.r)})
    return dest


def merge_lora(base_dir: str | os.PathLike, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Base + adapter → a full checkpoint in ``out_dir`` (the base's layout, config, tokenizer; its dtype), which
    ``echo.load`` and transformers read. The sum is taken in float32."""
    read_config(adapter_dir)  # a bad adapter directory fails before the base is read
    base_dir = resolve_model(base_dir)
    model = load(base_dir, dtype=torch.float32)
    load_adapter(model, adapter_dir)
    for name, module in list(model.named_modules()):
        if isinstance(module, _peft().tuners.tuners_utils.BaseTunerLayer):
            module.merge(safe_merge=True)  # raises on non-finite merged weights
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    model.to(config_dtype(ckpt.read_config(Path(base_dir))))
    return save_checkpoint(model, base_dir, out_dir)
