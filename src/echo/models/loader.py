"""``load`` (a local Hugging Face directory → echo module) and ``from_transformers`` (wrap an in-memory
transformers model without copying its weights): the modules behind ``echo.load`` / ``echo.from_transformers``,
which hand them out inside an ``echo.Model`` with their engine; the trainers load modules here.

Both build the echo module on the meta device (no memory), then give every parameter its real tensor: read from
safetensors straight into the target dtype/device, or the transformers model's own ``Parameter`` object, so the
two models share storage and a weight update through either is seen by both.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from . import checkpoint as ckpt
from .config import ModelConfig
from . import families
from .families import architecture_of, family_for_architecture, list_names as _names
from .model import AudioLanguageModel
from .prompting import PromptProcessor


def _build(cfg: ModelConfig, dtype) -> AudioLanguageModel:
    return cfg.spec.module(cfg, device="meta", dtype=dtype)


def map_names(cfg: ModelConfig, names) -> dict[str, str]:
    """Checkpoint name → echo name for every tensor echo needs; raises naming unexpected tensors."""
    return cfg.spec.map_names(names, cfg.architecture)


def _check_complete(model: AudioLanguageModel, mapped: dict[str, str], label: str | None = None) -> None:
    """Every echo parameter gets exactly one tensor; names the gaps (echo names) and the leftovers (checkpoint
    names), after ``label`` (the checkpoint; default: the architecture)."""
    expected = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    targets = set(mapped.values())
    missing = expected - targets
    if model.config.decoder.tie_word_embeddings and "decoder.embed_tokens.weight" in targets:
        missing.discard("lm_head.weight")  # tied: the head reuses the embedding matrix
    unknown = [name for name, target in mapped.items() if target not in expected]
    if missing or unknown:
        parts = ([f"missing tensors for echo parameters: {_names(missing)}"] if missing else []) + (
            [f"unexpected tensors: {_names(unknown)}"] if unknown else [])
        raise CheckpointError(f"{label or model.config.architecture}: " + "; ".join(parts))


def _set_param(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attr, value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False))


def _finish(model: AudioLanguageModel, targets: set[str]) -> AudioLanguageModel:
    if "lm_head.weight" not in targets:
        model.lm_head.weight = model.decoder.embed_tokens.weight
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:  # cannot happen after _check_complete; guards against a future module with unmapped parameters
        raise CheckpointError(f"tensors never loaded: {_names(left)}")
    return model.eval()


def resolve_model(path: str | os.PathLike) -> str:
    """A model argument as the directory it names: ``echo-demo`` -> its verified cache directory (built on first
    use), anything else unchanged. Commands that pass the model on (checkpoints, adapters, run fingerprints)
    resolve it once at their start."""
    from .convert.demo import resolve

    return str(resolve(path))


def load(path: str | os.PathLike, device: str | torch.device = "cpu",
         dtype: torch.dtype | None = None) -> AudioLanguageModel:
    """Load a local Hugging Face checkpoint directory into an echo model (in eval mode, no gradients).

    Supported architectures: those of ``echo.models.families`` (``SUPPORTED_ARCHITECTURES``), e.g.
    Qwen2_5OmniThinkerForConditionalGeneration, a full Qwen2_5OmniForConditionalGeneration (its thinker; talker and
    token2wav tensors are never read), Qwen2AudioForConditionalGeneration, AudioFlamingo3ForConditionalGeneration.
    A quantized checkpoint is refused (``quantization_config``). Weights come
    from safetensors only, shard by shard, straight into ``dtype`` on ``device`` (default: the dtype config.json
    names, else float32; on a CPU, bf16 only where it has bf16 instructions (AVX-512-BF16, AMX, Arm BF16) and
    float32 otherwise, since emulated half-precision matmuls decode slower than float32). The returned model's
    ``processor`` is a ``PromptProcessor`` when the directory has a tokenizer.json, else None.
    Raises ``CheckpointError`` naming the architecture, files or tensors at fault.
    """
    path, device = Path(resolve_model(path)), torch.device(device)
    raw = ckpt.read_config(path)
    quant = raw.get("quantization_config")
    if quant:  # its tensors are packed integers and scales, not the weights echo's modules take
        method = quant.get("quant_method", "an unnamed method") if isinstance(quant, dict) else quant
        raise CheckpointError(f"{path}: quantized ({method}); echo reads unquantized floating-point weights only")
    dtype = dtype or _auto_dtype(config_dtype(raw), device)
    try:
        cfg = model_config(path, raw)
    except CheckpointError as e:  # an unsupported architecture or variant, named with the checkpoint
        raise CheckpointError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
    files = ckpt.weight_map(path)
    mapped = map_names(cfg, sorted(files))
    model = _build(cfg, dtype)
    _check_complete(model, mapped, str(path))
    expected_shapes = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    shapes = ckpt.tensor_shapes(files, list(mapped))
    wrong = [f"{name} {shapes[name]} (expected {expected_shapes[t]})" for name, t in mapped.items()
             if shapes[name] != expected_shapes[t]]
    if wrong:
        raise CheckpointError(f"{path}: mis-shaped tensors: {_names(wrong)}")
    for name, tensor in ckpt.read_tensors(files, list(mapped), device, dtype):
        _set_param(model, mapped[name], tensor)
    model = _finish(model, set(mapped.values()))
    if (path / "tokenizer.json").is_file():
        try:
            model.processor = PromptProcessor.from_dir(path, cfg.spec)
        except CheckpointError:
            raise
        except Exception as e:  # tokenizers reports a corrupt file as a bare Exception
            raise CheckpointError(f"{path / 'tokenizer.json'}: unreadable tokenizer ({e})") from None
        _fill_audio_ids(model)
    # the checkpoint's one feature config, read once: the engine, SFT and GRPO all take it from the model
    model.feature_config = cfg.spec.feature_config(path if (path / "preprocessor_config.json").is_file() else None)
    return model


def from_transformers(hf_model: nn.Module, processor=None) -> AudioLanguageModel:
    """Wrap an in-memory transformers model so echo runs on its weights without copying them.

    ``hf_model``: a Qwen2_5OmniThinkerForConditionalGeneration, Qwen2_5OmniForConditionalGeneration (its
    ``thinker``) or Qwen2AudioForConditionalGeneration. Every echo parameter *is* the transformers ``Parameter``
    (same storage, same dtype and device). ``processor``: optional transformers processor or tokenizer, wrapped
    as ``model.processor``.
    """
    name = type(hf_model).__name__
    spec = family_for_architecture(name)
    if spec is None:
        raise CheckpointError(f"cannot wrap {name}; echo supports {', '.join(families.SUPPORTED_ARCHITECTURES)}")
    if name in spec.wrappers:  # a larger model carrying this family's (Qwen2.5-Omni's thinker)
        hf_model = getattr(hf_model, spec.wrappers[name])
    cfg = ModelConfig.from_hf(hf_model.config)
    params = cfg.spec.module.transformers_params(dict(hf_model.named_parameters(remove_duplicate=False)))
    mapped = map_names(cfg, params)
    model = _build(cfg, next(iter(params.values())).dtype)
    _check_complete(model, mapped)
    for hf_name, target in mapped.items():
        _set_param(model, target, params[hf_name])
    model = _finish(model, set(mapped.values()))
    if processor is not None:
        model.processor = PromptProcessor.from_transformers(processor, cfg.spec)
        _fill_audio_ids(model)
    extractor = getattr(processor, "feature_extractor", None)
    model.feature_config = cfg.spec.feature_config(None if extractor is None else extractor.to_dict())
    return model


def model_config(path: str | os.PathLike, raw: dict | None = None) -> ModelConfig:
    """The ``ModelConfig`` of checkpoint directory ``path`` (``raw``: its config.json, if already read), read
    through transformers so every default is filled in as transformers fills it."""
    path = Path(path)
    return ModelConfig.from_hf(_full_config(path, ckpt.read_config(path) if raw is None else raw))


def tensor_names(path: str | os.PathLike) -> dict[str, str]:
    """Checkpoint tensor name → echo parameter name for every tensor ``echo.load`` reads from directory ``path``
    (the trainers save under these names, so transformers and echo read their checkpoints alike)."""
    return map_names(model_config(path), sorted(ckpt.weight_map(path)))


def _full_config(path: Path, raw: dict):
    """The transformers config object (all defaults filled in) once the architecture is known to be supported."""
    ModelConfig.from_hf(raw)  # raises CheckpointError listing the supported architectures, before transformers runs
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{path}/config.json: transformers cannot parse it ({e})") from e


def config_dtype(raw: dict) -> torch.dtype:
    """The floating dtype a config.json dict names (``dtype``/``torch_dtype``, a wrapper's sub-config), else float32."""
    try:  # a wrapper (a full Qwen2.5-Omni) may name it only in its sub-model's config
        arch = architecture_of(raw)
        inner = family_for_architecture(arch).unwrap_config(raw, arch)
    except CheckpointError:
        inner = {}
    name = raw.get("dtype") or raw.get("torch_dtype") or inner.get("torch_dtype")
    value = getattr(torch, name, None) if isinstance(name, str) else None
    return value if isinstance(value, torch.dtype) and value.is_floating_point else torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AVX-512-BF16 or AMX-BF16, Arm BF16); elsewhere torch
    converts bf16 to float32 around every matmul and a bf16 model decodes slower than a float32 one."""
    try:
        caps = torch._C._cpu._get_cpu_capability()  # what torch's own CPU dispatch sees
        if caps.get("architecture") == "x86_64":
            return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    except (AttributeError, RuntimeError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = {w for line in f if line.startswith(("flags", "Features")) for w in line.split(":", 1)[1].split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _auto_dtype(config_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The checkpoint's dtype, except on a CPU that would only emulate it (float16 has no fast CPU path here)."""
    if device.type != "cpu" or config_dtype == torch.float32:
        return config_dtype
    return torch.bfloat16 if config_dtype == torch.bfloat16 and cpu_has_native_bf16() else torch.float32


def _fill_audio_ids(model: AudioLanguageModel) -> None:
    """Audio bos/eos ids a config lacks (Qwen2-Audio's both, Qwen3-Omni's eos) come from the tokenizer; the
    processor counts audio tokens as the model does."""
    cfg, proc = model.config, model.processor
    if cfg.audio_bos_token_id is None:
        cfg.audio_bos_token_id = proc.audio_bos_token_id
    if cfg.audio_eos_token_id is None:
        cfg.audio_eos_token_id = proc.audio_eos_token_id
    proc.num_audio_tokens = model.num_audio_tokens
