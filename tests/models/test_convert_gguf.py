"""Llama GGUF → Qwen2 decoder: dequantised tensors with llama.cpp's q/k permutation undone, checked against the
source weights and against transformers' own GGUF loader (the referee); tokenizer ids equal transformers'; clear
errors for damaged, foreign or unsupported files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from echo.errors import CheckpointError
from echo.models.convert import build_tokenizer, convert_gguf, read_gguf_llama
from helpers import assert_close
from synthetic_models import expected_llama_tensors, tiny_bpe, tiny_llama, write_llama_gguf

pytest.importorskip("gguf", reason="the gguf package (in the test extra) writes and reads GGUF files")

QTYPES = {"token_embd.weight": "Q8_0", "ffn_up.weight": "Q4_1", "ffn_down.weight": "Q4_1",
          "attn_q.weight": "Q8_0", "attn_k.weight": "Q4_1"}  # the rest (v, o, gate, norms) stay F32
TEXTS = ["The dog barks twice, then a car passes by.", "<|im_start|>user\nWhat is heard at 3.5 s?<|im_end|>\n",
         "  spaces\tand café 12345"]


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    bpe = tiny_bpe()
    model = tiny_llama(len(bpe[0]), seed=5)
    d = tmp_path_factory.mktemp("gguf")
    return write_llama_gguf(d / "tiny.gguf", model, bpe, QTYPES), model, bpe


def test_tensors_are_the_dequantised_source_with_qk_unpermuted(llama_gguf):
    path, model, _ = llama_gguf
    tensors, text, _ = read_gguf_llama(path)
    expected = expected_llama_tensors(model, QTYPES)
    for name, ref in expected.items():
        if name == "lm_head.weight":
            assert "lm_head.weight" not in tensors  # tied: no output.weight in the file
            continue
        assert torch.equal(tensors[name], ref), name
    for i in range(model.config.num_hidden_layers):  # Qwen2's biases, zero
        for p, n in (("q", 64), ("k", 32), ("v", 32)):
            assert torch.equal(tensors[f"model.layers.{i}.self_attn.{p}_proj.bias"], torch.zeros(n))
    assert text["tie_word_embeddings"] and text["rope_parameters"]["rope_theta"] == 100000.0
    assert (text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"]) == (4, 2, 16)


def test_without_unpermuting_q_would_differ(tmp_path):
    """The permutation is real: a file written without it gives different q/k rows (guards the test above)."""
    bpe = tiny_bpe()
    model = tiny_llama(len(bpe[0]), seed=5)
    tensors, _, _ = read_gguf_llama(write_llama_gguf(tmp_path / "raw.gguf", model, bpe, unpermuted=True))
    q = model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(tensors["model.layers.0.self_attn.q_proj.weight"], q)


def test_matches_transformers_gguf_loader_tensors_and_logits(llama_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    path, _, _ = llama_gguf
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    out = convert_gguf(path, tmp_path / "qwen2", progress=False)
    ours = Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref_sd = ref.state_dict()
    for name, t in ours.state_dict().items():
        if name in ref_sd:
            assert torch.equal(t, ref_sd[name]), name
    ids = torch.tensor([[1, 40, 77, 120, 5, 200, 2, 33, 99]])
    with torch.no_grad():
        assert_close("Qwen2 (echo's conversion) vs transformers' GGUF Llama logits", ref(ids).logits,
                     ours(ids).logits)


def test_tokenizer_equals_transformers_gguf_tokenizer(llama_gguf, tmp_path):
    from transformers import AutoTokenizer

    path, _, bpe = llama_gguf
    _, _, meta = read_gguf_llama(path)
    ours = build_tokenizer(meta, path)
    ref = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        assert ours.encode(text, add_special_tokens=False).ids == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text
    assert [ours.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]


def test_converted_directory_has_tokenizer_template_and_eos(llama_gguf, tmp_path):
    import json

    from transformers import AutoTokenizer

    path, _, _ = llama_gguf
    out = convert_gguf(path, tmp_path / "qwen2", progress=False)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


# ---- bad files -----------------------------------------------------------------------------------------------


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\3\4 not gguf at all")
    with pytest.raises(CheckpointError, match=r"x.gguf: not a GGUF file .*b'PK\\x03\\x04'"):
        read_gguf_llama(tmp_path / "x.gguf")
    with pytest.raises(CheckpointError, match="no such file"):
        read_gguf_llama(tmp_path / "absent.gguf")


def test_truncated_file(llama_gguf, tmp_path):
    path, _, _ = llama_gguf
    data = path.read_bytes()
    for cut in (10, 2000, len(data) - 100):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"cut.gguf: corrupt or truncated GGUF file.*re-download"):
            read_gguf_llama(tmp_path / "cut.gguf")


def test_other_architecture_is_refused(tmp_path):
    bpe = tiny_bpe()
    path = write_llama_gguf(tmp_path / "q.gguf", tiny_llama(len(bpe[0]), layers=1), bpe, arch="qwen2")
    with pytest.raises(CheckpointError, match="GGUF architecture 'qwen2' is not supported; echo converts Llama"):
        read_gguf_llama(path)


def test_unsupported_quantisation_type_is_named(tmp_path):
    bpe = tiny_bpe()
    path = write_llama_gguf(tmp_path / "iq.gguf", tiny_llama(len(bpe[0]), layers=1, hidden=256), bpe,
                            {"ffn_gate.weight": "IQ4_NL"})
    with pytest.raises(CheckpointError, match="blk.0.ffn_gate.weight has type IQ4_NL.*re-quantise"):
        read_gguf_llama(path)


def test_missing_tensor_is_named(tmp_path, monkeypatch):
    import synthetic_models

    bpe = tiny_bpe()
    model = tiny_llama(len(bpe[0]), layers=1)
    sd = model.state_dict()
    monkeypatch.setattr(model, "state_dict", lambda: {k: v for k, v in sd.items() if "mlp.up_proj" not in k})
    path = synthetic_models.write_llama_gguf(tmp_path / "m.gguf", model, bpe)
    with pytest.raises(CheckpointError, match=r"missing tensors blk.0.ffn_up.weight"):
        read_gguf_llama(path)


def test_unpermute_inverts_permute():
    from echo.models.convert.gguf_llama import permute_qk, unpermute_qk

    w = np.arange(6 * 8 * 5, dtype=np.float32).reshape(48, 5)
    assert np.array_equal(unpermute_qk(permute_qk(w, 3), 3), w)
    assert not np.array_equal(permute_qk(w, 3), w)
