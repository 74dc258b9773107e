"""Tiny foreign-format model files written by the tests: a CTranslate2 Whisper model.bin (from a random
transformers Qwen2AudioEncoder) and a Llama GGUF (from a random transformers LlamaForCausalLM), so the
converters are tested without the demo packages."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from echo.models.convert.gguf_llama import permute_qk

CT2_DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
                 np.dtype(np.float16): 4}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["The dog barks twice, then a car passes by at 3.5 seconds.", "<seg>3.0, 5.5</seg> listening again.",
          "<think>A beep at 1.2 s.</think><answer>B</answer>", "What is heard between 2 and 4 seconds?"] * 4


def _ct2_string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path: Path, spec: str, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None,
              version: int = 6, revision: int = 3) -> Path:
    """A CTranslate2 model.bin in the binary-version-6 layout (see echo.models.convert.ct2)."""
    out = [struct.pack("<I", version), _ct2_string(spec), struct.pack("<II", revision, len(variables))]
    for name, value in variables.items():
        value = np.require(value, requirements="C")  # keeps 0-d scalars 0-d
        out += [_ct2_string(name), struct.pack("<B", value.ndim), struct.pack(f"<{value.ndim}I", *value.shape),
                struct.pack("<BI", CT2_DTYPE_IDS[value.dtype], value.nbytes), value.tobytes()]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_ct2_string(alias), _ct2_string(target)]
    path.write_bytes(b"".join(out))
    return path


def tiny_whisper(seed: int = 0, num_mel_bins: int = 80, d_model: int = 32, layers: int = 2, heads: int = 2):
    """A random transformers Qwen2AudioEncoder (random biases and norms too)."""
    from transformers import Qwen2AudioEncoder, Qwen2AudioEncoderConfig

    torch.manual_seed(seed)
    cfg = Qwen2AudioEncoderConfig(num_mel_bins=num_mel_bins, d_model=d_model, encoder_layers=layers,
                                  encoder_attention_heads=heads, encoder_ffn_dim=2 * d_model,
                                  max_source_positions=1500)
    enc = Qwen2AudioEncoder(cfg).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if name == "embed_positions.weight":
                p.copy_(torch.randn_like(p))
    return enc


def whisper_ct2_variables(enc, dtype=np.float16) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """What CTranslate2's converter writes for a Whisper model: fused q/k/v with a zero k bias, gamma/beta names,
    plus a decoder (which the converter must ignore) and an alias."""
    sd = {k: v.detach().numpy().astype(dtype) for k, v in enc.state_dict().items()}
    d = enc.config.d_model
    v = {"decoder/embeddings/weight": np.zeros((7, d), dtype), "decoder/layer_norm/gamma": np.ones(d, dtype),
         "encoder/conv1/weight": sd["conv1.weight"], "encoder/conv1/bias": sd["conv1.bias"],
         "encoder/conv2/weight": sd["conv2.weight"], "encoder/conv2/bias": sd["conv2.bias"],
         "encoder/position_encodings/encodings": sd["embed_positions.weight"],
         "encoder/layer_norm/gamma": sd["layer_norm.weight"], "encoder/layer_norm/beta": sd["layer_norm.bias"],
         "encoder/num_heads": np.array(enc.config.encoder_attention_heads, np.int16)}
    for i in range(enc.config.encoder_layers):
        s, c = f"layers.{i}.", f"encoder/layer_{i}/"
        a = s + "self_attn."
        v[c + "self_attention/linear_0/weight"] = np.concatenate([sd[a + "q_proj.weight"], sd[a + "k_proj.weight"],
                                                                 sd[a + "v_proj.weight"]])
        v[c + "self_attention/linear_0/bias"] = np.concatenate([sd[a + "q_proj.bias"], np.zeros(d, dtype),
                                                               sd[a + "v_proj.bias"]])
        v[c + "self_attention/linear_1/weight"], v[c + "self_attention/linear_1/bias"] = \
            sd[a + "out_proj.weight"], sd[a + "out_proj.bias"]
        v[c + "self_attention/layer_norm/gamma"], v[c + "self_attention/layer_norm/beta"] = \
            sd[s + "self_attn_layer_norm.weight"], sd[s + "self_attn_layer_norm.bias"]
        v[c + "ffn/linear_0/weight"], v[c + "ffn/linear_0/bias"] = sd[s + "fc1.weight"], sd[s + "fc1.bias"]
        v[c + "ffn/linear_1/weight"], v[c + "ffn/linear_1/bias"] = sd[s + "fc2.weight"], sd[s + "fc2.bias"]
        v[c + "ffn/layer_norm/gamma"], v[c + "ffn/layer_norm/beta"] = \
            sd[s + "final_layer_norm.weight"], sd[s + "final_layer_norm.bias"]
    return v, {"decoder/projection/weight": "decoder/embeddings/weight"}


def tiny_bpe():
    """A byte-level BPE with ChatML control tokens at ids 0..2 (as SmolLM2's): (tokens, merges, token_types)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS, trainer)
    model = json.loads(bpe.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return tokens, merges, [3 if t in SPECIALS else 1 for t in tokens]


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2):
    """A random transformers LlamaForCausalLM with tied embeddings (SmolLM2's shape, shrunk)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, rms_norm_eps=1e-5,
                      rope_theta=100000.0, max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def write_llama_gguf(path: Path, model, bpe, qtypes: dict[str, str] | None = None, arch: str = "llama",
                     unpermuted: bool = False) -> Path:
    """``model`` as llama.cpp writes it: q/k rows permuted, tensors quantised per ``qtypes`` (GGUF-name suffix →
    type name, e.g. ``{"ffn_up.weight": "Q4_1", "token_embd.weight": "Q8_0"}``; default F32)."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    cfg, qtypes = model.config, qtypes or {}
    tokens, merges, types = bpe
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                        "{% endfor %}")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name in names:
            gname = names[name]
        else:
            _, _, i, rest = name.split(".", 3)
            gname = f"blk.{i}.{layer[rest.removesuffix('.weight')]}.weight"
        data = t.detach().float().numpy()
        if gname.endswith("attn_q.weight") and not unpermuted:
            data = permute_qk(data, cfg.num_attention_heads)
        elif gname.endswith("attn_k.weight") and not unpermuted:
            data = permute_qk(data, cfg.num_key_value_heads)
        kind = next((q for suffix, q in qtypes.items() if gname.endswith(suffix)), "F32")
        if kind == "F32":
            w.add_tensor(gname, np.ascontiguousarray(data))
        else:
            try:
                blocks = quants.quantize(data, Q[kind])
            except NotImplementedError:  # gguf only dequantises this type: zero blocks suffice to be refused
                blocks = np.zeros(quants.quant_shape_to_byte_shape(data.shape, Q[kind]), np.uint8)
            w.add_tensor(gname, blocks, raw_dtype=Q[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def expected_llama_tensors(model, qtypes: dict[str, str]) -> dict[str, torch.Tensor]:
    """The HF tensors after the GGUF round trip, each quantised as written and dequantised. Quantisation blocks
    run along a row, so permuting q/k rows before quantising and un-permuting after changes nothing."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    out = {}
    for name, t in model.state_dict().items():
        data = t.detach().float().numpy()
        gname = _gguf_suffix(name)
        kind = next((q for suffix, q in qtypes.items() if gname.endswith(suffix)), "F32")
        if kind != "F32":
            data = quants.dequantize(quants.quantize(data, Q[kind]), Q[kind])
        out[name] = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    return out


def _gguf_suffix(name: str) -> str:
    for hf, g in (("embed_tokens.weight", "token_embd.weight"), ("lm_head.weight", "token_embd.weight"),
                  ("mlp.up_proj.weight", "ffn_up.weight"), ("mlp.down_proj.weight", "ffn_down.weight"),
                  ("mlp.gate_proj.weight", "ffn_gate.weight"), ("self_attn.q_proj.weight", "attn_q.weight"),
                  ("self_attn.k_proj.weight", "attn_k.weight"), ("self_attn.v_proj.weight", "attn_v.weight"),
                  ("self_attn.o_proj.weight", "attn_output.weight")):
        if name.endswith(hf):
            return g
    return name
