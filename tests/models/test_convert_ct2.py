"""CTranslate2 Whisper model.bin → Qwen2-Audio tower: exact tensors, a transformers encoder that loads them, and
clear errors for damaged or foreign files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from echo.errors import CheckpointError
from echo.models.convert import convert_whisper_ct2, read_ct2, whisper_encoder
from helpers import assert_close
from synthetic_models import tiny_whisper, whisper_ct2_variables, write_ct2


@pytest.fixture(scope="module")
def whisper_ct2(tmp_path_factory):
    enc = tiny_whisper(seed=3)
    variables, aliases = whisper_ct2_variables(enc, dtype=np.float32)
    path = write_ct2(tmp_path_factory.mktemp("ct2") / "model.bin", "WhisperSpec", variables, aliases)
    return path, enc, variables, aliases


def test_reader_round_trips_every_variable_and_alias(whisper_ct2):
    path, _, variables, aliases = whisper_ct2
    model = read_ct2(path)
    assert (model.spec, model.revision, model.aliases) == ("WhisperSpec", 3, aliases)
    assert list(model.variables) == list(variables)
    for name, value in variables.items():
        assert model.variables[name].dtype == value.dtype and np.array_equal(model.variables[name], value), name
    alias = torch.from_numpy(variables["decoder/embeddings/weight"])
    assert torch.equal(model.tensor("decoder/projection/weight"), alias)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_encoder_tensors_equal_the_transformers_encoder(tmp_path, dtype):
    enc = tiny_whisper(seed=1)
    variables, aliases = whisper_ct2_variables(enc, dtype=dtype)
    tensors, cfg = whisper_encoder(write_ct2(tmp_path / "model.bin", "WhisperSpec", variables, aliases))
    ref = {f"audio_tower.{k}": v.to(torch.from_numpy(np.zeros(0, dtype)).dtype).float()
           for k, v in enc.state_dict().items()}
    assert set(tensors) == set(ref)  # the decoder is not taken; k has no bias
    for name, t in tensors.items():
        assert t.dtype == torch.float32 and torch.equal(t, ref[name]), name
    assert cfg["num_mel_bins"] == 80 and cfg["d_model"] == 32 and cfg["encoder_layers"] == 2
    assert cfg["encoder_attention_heads"] == 2 and cfg["encoder_ffn_dim"] == 64 and cfg["max_source_positions"] == 1500


def test_converted_directory_loads_in_transformers_with_the_same_outputs(whisper_ct2, tmp_path):
    from transformers import Qwen2AudioEncoder, WhisperFeatureExtractor

    path, enc, _, _ = whisper_ct2
    out = convert_whisper_ct2(path, tmp_path / "enc")
    loaded = Qwen2AudioEncoder.from_pretrained(out).eval()
    fe = WhisperFeatureExtractor.from_pretrained(out)
    assert fe.feature_size == 80 and fe.chunk_length == 30
    feats = fe([np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1], sampling_rate=16000,
               return_tensors="pt")["input_features"]
    with torch.no_grad():
        assert_close("encoder output", enc(feats).last_hidden_state, loaded(feats).last_hidden_state, atol=1e-6)
    with pytest.raises(CheckpointError, match="already exists.*--overwrite"):
        convert_whisper_ct2(path, out)


def _bad(tmp_path, name="model.bin", **kw):
    enc = tiny_whisper(seed=0, layers=1)
    variables, aliases = whisper_ct2_variables(enc)
    variables.update(kw.pop("extra", {}))
    return write_ct2(tmp_path / name, kw.pop("spec", "WhisperSpec"), variables, aliases, **kw)


def test_truncated_file_names_file_and_fix(tmp_path):
    path = _bad(tmp_path)
    data = path.read_bytes()
    for cut in (3, 40, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"{path}: truncated CTranslate2 file.*re-install"):
            read_ct2(path)


def test_trailing_bytes_empty_and_missing_files(tmp_path):
    path = _bad(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(CheckpointError, match="2 unexpected bytes after the last record"):
        read_ct2(path)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        read_ct2(tmp_path / "empty.bin")
    with pytest.raises(CheckpointError, match="no such file"):
        read_ct2(tmp_path / "absent.bin")


def test_other_binary_version_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="binary version 5 is not supported.*re-convert"):
        read_ct2(_bad(tmp_path, version=5))


def test_wrong_architecture_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="a CTranslate2 TransformerSpec, not a Whisper model"):
        whisper_encoder(_bad(tmp_path, spec="TransformerSpec"))


def test_int8_quantised_weights_are_refused(tmp_path):
    path = _bad(tmp_path, extra={"encoder/layer_0/ffn/linear_0/weight_scale": np.ones(64, np.float32)})
    with pytest.raises(CheckpointError, match="int8-quantised weights.*--quantization float16"):
        whisper_encoder(path)


def test_unknown_dtype_and_size_mismatch_are_corruption(tmp_path):
    path = _bad(tmp_path)
    data = bytearray(path.read_bytes())
    name = b"encoder/conv1/bias\0"
    at = data.index(name) + len(name)  # rank (1) + one u32 dim, then the dtype id
    data[at + 5] = 9
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="unknown data type id 9"):
        read_ct2(path)
    data[at + 5] = 0  # float32 where float16 bytes are stored: the byte count no longer fits the shape
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"encoder/conv1/bias of shape \[32\] and type .*float32.* should hold"):
        read_ct2(path)


def test_mis_shaped_fused_qkv_is_refused(tmp_path):
    path = _bad(tmp_path, extra={"encoder/layer_0/self_attention/linear_0/weight": np.zeros((64, 32), np.float16)})
    with pytest.raises(CheckpointError, match=r"linear_0 has shape \[64, 32\], expected the fused q/k/v \[96, 32\]"):
        whisper_encoder(path)
