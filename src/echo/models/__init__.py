"""echo's own model code, proven against transformers: the Qwen2.5-Omni thinker and Qwen2-Audio.

Read in this order: config → rope → attention (the backend interface the engine plugs its KV cache into) →
layers → decoder → audio_encoder → model (encode_audio / embed / forward / forward_flat) → thinker, qwen2_audio →
families (one ``ModelFamily`` per architecture: HF names, config both ways, module, key map, feature layout) →
checkpoint, loader (``load``, ``from_transformers``) → prompting (chat template and ``<|AUDIO|>`` expansion).
"""

from .attention import AttentionBackend, ContiguousKVCache, DenseCausalAttention, FlatStep, SharedPrefixAttention
from .audio_encoder import num_audio_tokens
from .config import AudioEncoderConfig, DecoderConfig, ModelConfig
from .families import FAMILIES, SUPPORTED_ARCHITECTURES, ModelFamily
from .loader import from_transformers, load
from .model import AudioLanguageModel
from .prompting import PromptProcessor
from .qwen2_audio import Qwen2Audio
from .thinker import Qwen2_5OmniThinker

__all__ = [
    "FAMILIES", "SUPPORTED_ARCHITECTURES", "AttentionBackend", "AudioEncoderConfig", "AudioLanguageModel",
    "ContiguousKVCache", "DecoderConfig", "DenseCausalAttention", "FlatStep", "ModelConfig", "ModelFamily",
    "PromptProcessor", "Qwen2Audio", "Qwen2_5OmniThinker", "SharedPrefixAttention", "from_transformers", "load",
    "num_audio_tokens",
]
