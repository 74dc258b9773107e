"""Converters from other formats to Hugging Face directories echo loads, and the echo-demo assembly.

ct2 (CTranslate2 model.bin → Whisper's encoder as a Qwen2-Audio tower) → gguf_llama (Llama GGUF → Qwen2 decoder)
→ writers (one file → one directory) → assembly (both + projector → Qwen2-Audio) → demo (``--model echo-demo``:
the cache directory, built on first use and verified on every use) → cli (``echo convert …``).
"""

from .assembly import assemble
from .ct2 import read_ct2, whisper_encoder
from .demo import resolve
from .gguf_llama import build_tokenizer, read_gguf_llama
from .writers import convert_gguf, convert_whisper_ct2

__all__ = ["assemble", "build_tokenizer", "convert_gguf", "convert_whisper_ct2", "read_ct2", "read_gguf_llama",
           "resolve", "whisper_encoder"]
