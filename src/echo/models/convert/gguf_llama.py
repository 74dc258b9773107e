"""A Llama-layout GGUF decoder (SmolLM2, Llama) → Hugging Face Qwen2 tensors, config and tokenizer.

Read with the ``gguf`` package: every tensor is dequantised to float32, and llama.cpp's row permutation of the
q and k projections (it interleaves the two rotary halves of each head) is undone, as transformers' own GGUF
loader undoes it. The decoder is written in Qwen2's layout — the same RMSNorm / SwiGLU / GQA / rotary blocks plus
q/k/v biases, which are zero here, so the logits are those of the Llama model exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ...errors import CheckpointError

# types gguf.quants can dequantise and that have been seen on llama.cpp's Llama exports
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                   "Q6_K")
_FIX = "re-download the file or re-install the package that shipped it"
_LAYER_NAMES = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
                "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
                "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
                "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
                "ffn_down.weight": "mlp.down_proj.weight"}


def _reader(path: Path):
    import gguf

    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (give a .gguf file)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'); {_FIX}")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors on damaged files
        raise CheckpointError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e}); {_FIX}") from e


def _field(reader, path: Path, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise CheckpointError(f"{path}: GGUF metadata {key!r} is missing; not a complete llama.cpp export")
        return default
    return f.contents()


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: rows ``(head, 2, dim/2)`` were stored as ``(head, dim/2, 2)``."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (what its converter applies to Hugging Face q/k weights); the inverse of
    ``unpermute_qk``."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantise(tensor, path: Path) -> np.ndarray:
    from gguf import quants

    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise CheckpointError(f"{path}: tensor {tensor.name} has type {kind}, which echo cannot dequantise (supported: "
                              f"{', '.join(SUPPORTED_TYPES)}); re-quantise with llama.cpp to Q8_0 or F16")
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF lists dims fastest-first
    try:
        data = tensor.data if kind == "F32" else quants.dequantize(tensor.data, tensor.tensor_type)
        return np.asarray(data, dtype=np.float32).reshape(shape)
    except (ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: tensor {tensor.name} ({kind}, shape {list(shape)}) cannot be read ({e}); "
                              f"{_FIX}") from e


def read_gguf_llama(path: str | os.PathLike, progress: bool = False) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Decoder tensors, Qwen2 config and tokenizer metadata of a Llama-layout GGUF file.

    Returns ``(tensors, text_config, tokenizer_meta)``: float32 tensors in Hugging Face Qwen2ForCausalLM names
    (``model.embed_tokens.weight``, ``model.layers.0.self_attn.q_proj.weight``/``.bias`` (zeros), …,
    ``lm_head.weight`` only when the file has an untied ``output.weight``); the ``text_config`` dict of a Qwen2
    config.json; and the GGUF tokenizer fields (``tokens``, ``merges``, ``token_type``, special ids,
    ``chat_template``). Raises ``CheckpointError`` naming the file and the fix for another architecture, missing
    metadata or tensors, unsupported quantisation types and mis-shaped tensors.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    reader = _reader(path)
    arch = _field(reader, path, "general.architecture", "")
    if arch != "llama":
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported; echo converts Llama-layout "
                              "decoders (general.architecture 'llama', e.g. SmolLM2)")
    meta = {k: _field(reader, path, f"llama.{k}") for k in (
        "block_count", "embedding_length", "feed_forward_length", "attention.head_count",
        "attention.head_count_kv", "attention.layer_norm_rms_epsilon", "context_length")}
    hidden, heads = int(meta["embedding_length"]), int(meta["attention.head_count"])
    kv_heads, layers = int(meta["attention.head_count_kv"]), int(meta["block_count"])
    head_dim = hidden // heads
    rope_dim = int(_field(reader, path, "llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise CheckpointError(f"{path}: partial rotary embeddings (rope.dimension_count={rope_dim}, head_dim="
                              f"{head_dim}) are not supported")
    scaling = _field(reader, path, "llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear") or float(_field(reader, path, "llama.rope.scaling.factor", 1.0)) != 1.0:
        raise CheckpointError(f"{path}: rope scaling {scaling!r} is not supported (only plain rotary embeddings)")
    tokens = _field(reader, path, "tokenizer.ggml.tokens")
    vocab = int(_field(reader, path, "llama.vocab_size", len(tokens)))

    by_name = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        b = f"blk.{i}."
        expected.update({b + "attn_norm.weight": (hidden,), b + "ffn_norm.weight": (hidden,),
                         b + "attn_q.weight": (heads * head_dim, hidden),
                         b + "attn_k.weight": (kv_heads * head_dim, hidden),
                         b + "attn_v.weight": (kv_heads * head_dim, hidden), b + "attn_output.weight": (hidden, hidden),
                         b + "ffn_gate.weight": (int(meta["feed_forward_length"]), hidden),
                         b + "ffn_up.weight": (int(meta["feed_forward_length"]), hidden),
                         b + "ffn_down.weight": (hidden, int(meta["feed_forward_length"]))})
    if "output.weight" in by_name:
        expected["output.weight"] = (vocab, hidden)
    missing = sorted(set(expected) - set(by_name))
    if missing:
        raise CheckpointError(f"{path}: missing tensors {', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}; "
                              f"{_FIX}")
    out: dict[str, torch.Tensor] = {}
    for name in tqdm(list(expected), desc=f"reading {path.name}", disable=not progress, unit="tensor"):
        w = _dequantise(by_name[name], path)
        if w.shape != expected[name]:
            raise CheckpointError(f"{path}: tensor {name} has shape {list(w.shape)}, expected "
                                  f"{list(expected[name])} from the metadata")
        if name.endswith("attn_q.weight"):
            w = unpermute_qk(w, heads)
        elif name.endswith("attn_k.weight"):
            w = unpermute_qk(w, kv_heads)
        w = np.ascontiguousarray(w)
        out[_hf_name(name)] = torch.from_numpy(w if w.flags.writeable else w.copy())  # F32 views the file map
    for i in range(layers):  # Qwen2's q/k/v biases: zero, so the blocks compute what Llama's do
        for proj, rows in (("q", heads * head_dim), ("k", kv_heads * head_dim), ("v", kv_heads * head_dim)):
            out[f"model.layers.{i}.self_attn.{proj}_proj.bias"] = torch.zeros(rows)
    ids = {k: _field(reader, path, f"tokenizer.ggml.{k}_token_id", -1) for k in ("bos", "eos", "padding")}
    text_config = dict(model_type="qwen2", vocab_size=vocab, hidden_size=hidden,
                       intermediate_size=int(meta["feed_forward_length"]), num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                       hidden_act="silu", rms_norm_eps=float(meta["attention.layer_norm_rms_epsilon"]),
                       max_position_embeddings=int(meta["context_length"]),
                       rope_parameters={"rope_type": "default",
                                        "rope_theta": float(_field(reader, path, "llama.rope.freq_base", 10000.0))},
                       tie_word_embeddings="output.weight" not in by_name, use_sliding_window=False,
                       bos_token_id=int(ids["bos"]), eos_token_id=int(ids["eos"]))
    tokenizer = dict(model=_field(reader, path, "tokenizer.ggml.model"),
                     pre=_field(reader, path, "tokenizer.ggml.pre", ""),
                     tokens=list(tokens), merges=list(_field(reader, path, "tokenizer.ggml.merges")),
                     token_type=list(_field(reader, path, "tokenizer.ggml.token_type")),
                     bos_token_id=int(ids["bos"]), eos_token_id=int(ids["eos"]), pad_token_id=int(ids["padding"]),
                     chat_template=_field(reader, path, "tokenizer.chat_template", ""))
    return out, text_config, tokenizer


def _hf_name(name: str) -> str:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    _, layer, rest = name.split(".", 2)
    return f"model.layers.{layer}.{_LAYER_NAMES[rest]}"


def build_tokenizer(meta: dict, path: str | os.PathLike = "the GGUF file"):
    """A ``tokenizers.Tokenizer`` from GGUF tokenizer fields: byte-level BPE (``tokenizer.ggml.model`` 'gpt2')
    with the file's vocabulary and merges; control tokens (type 3) become special added tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if meta["model"] != "gpt2":
        raise CheckpointError(f"{path}: tokenizer model {meta['model']!r} is not supported (only byte-level BPE, "
                              "'gpt2', as SmolLM2 and Llama 3 use)")
    vocab = {tok: i for i, tok in enumerate(meta["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in meta["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(meta["tokens"], meta["token_type"]) if int(kind) == 3]
    tok.add_special_tokens(control)
    return tok
