"""The registry of model families (one ``ModelFamily`` per architecture, see ``spec``).

Adding an architecture: a file here defining its ``FAMILY`` (copy ``qwen2_audio.py``), and its line in
``_REGISTERED`` below. Everything else (config reading and writing, ``echo.load``, ``from_transformers``, the
trainers' checkpoints, feature configs, tiny test checkpoints) looks the family up here.
"""

from __future__ import annotations

from ...errors import CheckpointError, ConfigError
from . import audioflamingo3, qwen2_5_omni, qwen2_audio, qwen3_omni_moe
from .spec import ModelFamily, list_names

_REGISTERED = (
    qwen2_5_omni.FAMILY,
    qwen2_audio.FAMILY,
    audioflamingo3.FAMILY,
    qwen3_omni_moe.FAMILY,
)

FAMILIES: dict[str, ModelFamily] = {}
_BY_ARCHITECTURE: dict[str, ModelFamily] = {}
_BY_MODEL_TYPE: dict[str, str] = {}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = ()


def register(spec: ModelFamily) -> None:
    """Add ``spec`` to the registry; its name and architecture names must be new."""
    global SUPPORTED_ARCHITECTURES
    taken = [a for a in spec.architectures if a in _BY_ARCHITECTURE]
    if spec.name in FAMILIES or taken:
        raise ConfigError(f"model family {spec.name!r} or architectures {taken} are registered already")
    FAMILIES[spec.name] = spec
    _BY_ARCHITECTURE.update((arch, spec) for arch in spec.architectures)
    _BY_MODEL_TYPE.update(spec.model_types)
    SUPPORTED_ARCHITECTURES = tuple(_BY_ARCHITECTURE)


for _spec in _REGISTERED:
    register(_spec)


def family(name: str) -> ModelFamily:
    """The family named ``name`` (``ModelConfig.family``); ``ConfigError`` listing the known ones otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"family must be one of {', '.join(map(repr, FAMILIES))}, got {name!r}") from None


def architecture_of(d: dict) -> str:
    """The supported architecture a config.json dict describes (by ``architectures``, else ``model_type``);
    ``CheckpointError`` naming the supported ones otherwise."""
    archs = d.get("architectures") or []
    for arch in archs:
        if arch in _BY_ARCHITECTURE:
            return arch
    if not archs and d.get("model_type") in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[d["model_type"]]
    raise CheckpointError(f"unsupported architecture {archs or d.get('model_type')!r}; echo supports "
                          f"{', '.join(_BY_ARCHITECTURE)}")


def family_for_architecture(arch: str) -> ModelFamily | None:
    """The family read under architecture (or transformers class) name ``arch``, None if unsupported."""
    return _BY_ARCHITECTURE.get(arch)


__all__ = ["FAMILIES", "SUPPORTED_ARCHITECTURES", "ModelFamily", "architecture_of", "family",
           "family_for_architecture", "list_names", "register"]
