"""The public surface, and the one place that joins models and engine: ``load`` / ``from_transformers`` (a model
from a checkpoint or an in-memory transformers model), ``engine_for`` (the model's engine), ``generate_on`` (what
``model.generate`` runs) and ``generate`` (``echo.generate``: load if given a path, then generate)."""

from __future__ import annotations

import os

from .config import EngineConfig, SamplingParams
from .engine.llm import Engine, Request
from .errors import EchoError
from .models.loader import from_transformers, load

__all__ = ["engine_for", "from_transformers", "generate", "generate_on", "load"]


def engine_for(model, config: EngineConfig | None = None) -> Engine:
    """The model's engine (made on first use; a config that differs in value makes a new one: an equal fresh
    ``EngineConfig`` reuses the engine and its KV cache)."""
    engine = getattr(model, "_echo_engine", None)
    if engine is None or (config is not None and engine.config != config):
        engine = Engine(model, config)
        object.__setattr__(model, "_echo_engine", engine)  # not a submodule: keep it out of state_dict
    return engine


def generate_on(model, audio_or_requests, prompt=None, sampling_params: SamplingParams | dict | None = None,
                *, engine_config: EngineConfig | None = None, progress: bool = False, **sampling):
    """``model.generate(audio, prompt, **sampling)`` -> GenerationResult, or ``model.generate([requests...],
    sampling_params)`` -> list of GenerationResult (requests: Request, dicts or objects with .audio and
    .prompt, optionally .params). ``sampling`` are SamplingParams fields (temperature, top_p, max_new_tokens...)."""
    batched = isinstance(audio_or_requests, (list, tuple)) and bool(audio_or_requests) and not isinstance(
        audio_or_requests[0], (int, float))
    if batched and (prompt is None or isinstance(prompt, (SamplingParams, dict))):
        prompt, sampling_params = None, sampling_params if prompt is None else prompt  # generate(requests, params)
    if isinstance(sampling_params, dict):
        sampling = {**sampling_params, **sampling}
        sampling_params = None
    params = sampling_params or SamplingParams(**sampling)
    engine = engine_for(model, engine_config)
    if batched:
        return engine.generate(audio_or_requests, progress=progress, params=params)
    [result] = engine.generate([Request(audio_or_requests, prompt, params)])
    if result.error is not None:
        raise EchoError(result.error)
    return result


def generate(audio, prompt=None, *, model, sampling_params: SamplingParams | None = None, **sampling):
    """``echo.generate(audio, prompt, model=dir_or_model, temperature=0, ...)``: load the model if given a path,
    then generate with re-listening (see ``generate_on``)."""
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    return generate_on(model, audio, prompt, sampling_params, **sampling)
