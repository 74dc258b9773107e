"""``ModelFamily``: everything echo knows about one audio-LM architecture, as data.

One spec per architecture (its own file in this package, one line in the registry of ``__init__``): the Hugging
Face names it is read under, the config mapping both ways, the echo module class, the checkpoint key map (reading;
saving writes under the source's own names, the same map inverted), the audio feature layout, and what a tiny
test checkpoint of it needs from transformers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from ...audio.features import FeatureConfig
from ...errors import CheckpointError, ConfigError
from ..checkpoint import KeyMap, is_unexpected


@dataclass(frozen=True)
class ModelFamily:
    """One architecture. ``name`` is ``ModelConfig.family``; ``architecture`` the transformers class echo mirrors
    (written to config.json, wrapped by ``from_transformers``, saved by the trainers)."""

    name: str
    architecture: str
    model_type: str
    module: type  # an AudioLanguageModel subclass built as module(cfg, device=, dtype=)
    key_map: KeyMap  # checkpoint tensor name (after strip_prefix) -> echo parameter name; None = not loaded
    config_from_hf: Callable[[dict], dict]  # config.json dict -> ModelConfig kwargs other than family
    config_to_hf: Callable[..., dict]  # ModelConfig -> config.json dict (the transformers twin's)
    check: Callable[..., None]  # ModelConfig -> raises ConfigError for shapes this family cannot have
    hf_config_class: str  # transformers config class of ``architecture`` (tiny checkpoints and tests)
    chat_template: Callable[[], str]  # the template a checkpoint of this family ships (tiny checkpoints)
    # larger models that carry this one as a sub-model: architecture -> attribute (its config is ``<attr>_config``)
    wrappers: dict[str, str] = field(default_factory=dict)
    # config.json files without ``architectures``: model_type -> architecture
    model_types: dict[str, str] = field(default_factory=dict)
    strip_prefix: str = ""  # a tensor-name prefix the wrapper adds (``thinker.``), dropped before ``key_map``
    # audio features: the released extractor's window (seconds), whether the encoder takes packed features (valid
    # frames back to back) or padded ones, and the frames past each audio's end its conv stem reads
    feature_chunk_s: int = 30
    packed_features: bool = True
    extra_frames: int = 0
    feature_windows: int = 1  # longer audio is heard in this many feature_chunk_s windows (FeatureConfig.max_windows)
    # the tokens its tokenizer lays audio out with: the placeholder, and the ones around a spliced run (None: none)
    audio_token: str = "<|AUDIO|>"
    audio_bos_token: str | None = "<|audio_bos|>"
    audio_eos_token: str | None = "<|audio_eos|>"
    hf_config_extras: Callable[[dict[str, int]], dict] = lambda special_ids: {}
    # audio tokens per second of audio (the encoder's frame rate after pooling), and whether an audio run may carry
    # time marks (``ModelConfig.time_marks_s``): not where the positions carry time already (TMRoPE)
    audio_tokens_per_s: float = 25.0
    time_marks: bool = True

    @property
    def architectures(self) -> tuple[str, ...]:
        """Every architecture name a checkpoint of this family is read under."""
        return (self.architecture, *self.wrappers)

    def unwrap_config(self, d: dict, arch: str) -> dict:
        """The config dict of this family's own model inside a wrapper's config (itself when ``arch`` is ours)."""
        attr = self.wrappers.get(arch)
        return d if attr is None else d.get(f"{attr}_config") or {}

    def map_names(self, names, label: str | None = None) -> dict[str, str]:
        """Checkpoint name -> echo parameter name for every tensor echo loads; raises ``CheckpointError`` naming
        the tensors no rule knows."""
        mapped, unexpected = {}, []
        for name in names:
            target = self.key_map(name.removeprefix(self.strip_prefix) if self.strip_prefix else name)
            if is_unexpected(target):
                unexpected.append(name)
            elif target is not None:
                mapped[name] = target
        if unexpected:
            raise CheckpointError(f"unexpected tensors for {label or self.architecture}: {list_names(unexpected)}")
        return mapped

    def feature_config(self, source=None) -> FeatureConfig:
        """The feature config of a checkpoint of this family: ``source`` (its directory or preprocessor_config.json
        dict) read when given, else the released checkpoints' extractor; windowed as this family's processor."""
        cfg = FeatureConfig(chunk_length=self.feature_chunk_s) if source is None else \
            FeatureConfig.from_pretrained(source)
        return dataclasses.replace(cfg, max_windows=self.feature_windows)


def list_names(names, limit: int = 12) -> str:
    names = sorted(names)
    more = f" … and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# tensors no architecture loads: computed rotary tables
SKIP_ANYWHERE = [(r".*rotary_emb\.(original_)?inv_freq$", None)]
