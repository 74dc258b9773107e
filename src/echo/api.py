"""The public surface, and the one place that joins models and engine: ``load`` / ``from_transformers`` return a
``Model`` (the ``nn.Module`` and the engine that generates with it, as vLLM's ``LLM`` holds its model and
engine); ``engine_for`` gives a module's engine and ``generate`` (``echo.generate``) loads if given a path, then
generates. The module itself has no ``generate``: models sit below the engine."""

from __future__ import annotations

import os

import torch
from torch import nn

from .config import EngineConfig, SamplingParams
from .engine.llm import Engine, Request
from .errors import EchoError
from .models import loader

__all__ = ["Model", "engine_for", "from_transformers", "generate", "load"]

# nn.Module methods that return the module itself: through the handle they return the handle
_RETURNS_SELF = frozenset({"to", "cpu", "cuda", "float", "half", "bfloat16", "double", "eval", "train",
                           "requires_grad_", "zero_grad", "apply", "share_memory"})


def engine_for(module: nn.Module, config: EngineConfig | None = None) -> Engine:
    """The module's engine (made on first use; a config that differs in value makes a new one: an equal fresh
    ``EngineConfig`` reuses the engine and its KV cache)."""
    module = module.module if isinstance(module, Model) else module
    engine = getattr(module, "_echo_engine", None)
    if engine is None or (config is not None and engine.config != config):
        engine = Engine(module, config)
        object.__setattr__(module, "_echo_engine", engine)  # not a submodule: keep it out of state_dict
    return engine


class Model:
    """What ``echo.load`` returns: ``module`` (the ``nn.Module``: weights, forward, ``config``, ``processor``,
    ``feature_config``; every attribute of it is read and set through the handle, and calling the handle calls
    it) and ``engine`` (made on first use), with ``generate``."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module):
        object.__setattr__(self, "module", module)

    @property
    def engine(self) -> Engine:
        return engine_for(self.module)

    def generate(self, audio_or_requests, prompt=None, sampling_params: SamplingParams | dict | None = None,
                 *, engine_config: EngineConfig | None = None, progress: bool = False, **sampling):
        """``model.generate(audio, prompt, **sampling)`` -> GenerationResult, or ``model.generate([requests...],
        sampling_params)`` -> list of GenerationResult (requests: Request, dicts or objects with .audio and
        .prompt, optionally .params). ``sampling`` are SamplingParams fields (temperature, top_p,
        max_new_tokens...); ``engine_config`` picks the engine (``engine_for``)."""
        batched = isinstance(audio_or_requests, (list, tuple)) and bool(audio_or_requests) and not isinstance(
            audio_or_requests[0], (int, float))
        if batched and (prompt is None or isinstance(prompt, (SamplingParams, dict))):
            prompt, sampling_params = None, sampling_params if prompt is None else prompt  # generate(requests, params)
        if isinstance(sampling_params, dict):
            sampling = {**sampling_params, **sampling}
            sampling_params = None
        params = sampling_params or SamplingParams(**sampling)
        engine = engine_for(self.module, engine_config)
        if batched:
            return engine.generate(audio_or_requests, progress=progress, params=params)
        [result] = engine.generate([Request(audio_or_requests, prompt, params)])
        if result.error is not None:
            raise EchoError(result.error)
        return result

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        value = getattr(self.module, name)
        if name in _RETURNS_SELF:
            def same_handle(*args, **kwargs):
                out = value(*args, **kwargs)
                return self if out is self.module else out

            return same_handle
        return value

    def __setattr__(self, name: str, value) -> None:
        setattr(self.module, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self.module, name)

    def __repr__(self) -> str:
        return f"echo.Model({self.module!r})"


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Model:
    """``echo.load(dir)``: a local Hugging Face checkpoint as a ``Model`` (see ``echo.models.loader.load`` for the
    architectures, the device and the dtype)."""
    return Model(loader.load(path, device, dtype))


def from_transformers(hf_model: nn.Module, processor=None) -> Model:
    """An in-memory transformers model as a ``Model`` whose module shares its weights (see
    ``echo.models.loader.from_transformers``)."""
    return Model(loader.from_transformers(hf_model, processor))


def generate(audio, prompt=None, *, model, sampling_params: SamplingParams | None = None, **sampling):
    """``echo.generate(audio, prompt, model=dir_or_model, temperature=0, ...)``: load the model if given a path
    (a bare module is used as it is), then generate with re-listening (``Model.generate``)."""
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    elif not isinstance(model, Model):
        model = Model(model)
    return model.generate(audio, prompt, sampling_params, **sampling)
