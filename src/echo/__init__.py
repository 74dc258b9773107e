"""echo: audio-interleaved reasoning for large audio language models.

The public surface: ``echo.load(dir)`` / ``echo.from_transformers(hf_model)`` (an ``echo.Model``: the module and
its engine), ``model.generate`` and ``echo.generate`` (interleaved decoding with re-listening),
``SamplingParams``, ``RelistenPolicy``, ``EngineConfig``, and ``echo.audio`` (load, log_mel). Names are imported
on first use so ``import echo`` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import AudioError, BackendUnavailable, CheckpointError, ConfigError, EchoError

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access.
_LAZY = {
    "audio": "echo.audio",
    "load": "echo.api",
    "from_transformers": "echo.api",
    "Model": "echo.api",
    "generate": "echo.api",
    "engine_for": "echo.api",
    "Engine": "echo.engine.llm",
    "Request": "echo.engine.llm",
    "SamplingParams": "echo.config",
    "RelistenPolicy": "echo.config",
    "EngineConfig": "echo.config",
}

__all__ = ["AudioError", "BackendUnavailable", "CheckpointError", "ConfigError", "EchoError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'echo' has no attribute {name!r}")
    module = importlib.import_module(target)
    value = module if target.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value
