"""CTranslate2 ``model.bin`` → tensors, and Whisper's encoder out of it as a Qwen2-Audio audio tower.

The file layout (binary version 6, all integers little-endian)::

    u32 version | str spec_name | u32 revision | u32 num_variables
    num_variables × ( str name | u8 rank | rank × u32 dim | u8 dtype_id | u32 num_bytes | num_bytes of data )
    u32 num_aliases | num_aliases × ( str alias | str target )

where ``str`` is a u16 length (counting a trailing NUL) followed by that many bytes, and ``dtype_id`` is
0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Arrays are row-major; linear weights are
``(out_features, in_features)`` and conv weights ``(out, in, kernel)``, as in PyTorch. Tensors are views into a
memory map of the file, so reading a 75 MB model copies nothing until a tensor is converted.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import CheckpointError

SUPPORTED_VERSION = 6
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
_FIX = "re-install the package that shipped it, or re-run ct2-transformers-converter"


@dataclass
class CT2Model:
    """A parsed model.bin: the spec name (e.g. ``WhisperSpec``), its revision, variables and aliases."""

    path: Path
    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def tensor(self, name: str) -> torch.Tensor:
        """One variable as a float32 (or integer) torch tensor, a copy owned by torch."""
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise CheckpointError(f"{self.path}: no variable {name!r} (a {self.spec} model.bin should have it)")
        value = self.variables[name]
        if value.dtype == np.uint16:  # bfloat16 bits
            return torch.from_numpy(value.astype(np.int32) << 16).view(torch.float32)
        t = torch.from_numpy(np.array(value))
        return t.float() if t.is_floating_point() else t


class _Cursor:
    def __init__(self, path: Path, buf: np.ndarray):
        self.path, self.buf, self.pos = path, buf, 0

    def take(self, n: int, what: str) -> np.ndarray:
        end = self.pos + n
        if end > self.buf.size:
            raise CheckpointError(f"{self.path}: truncated CTranslate2 file: {what} needs {n} bytes at offset "
                                  f"{self.pos} but the file has {self.buf.size} bytes; {_FIX}")
        out, self.pos = self.buf[self.pos:end], end
        return out

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what).tobytes())

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", what)
        raw = self.take(n, what).tobytes()
        if n == 0 or raw[-1] != 0:
            raise CheckpointError(f"{self.path}: corrupt CTranslate2 file: {what} at offset {self.pos - n} is not "
                                  f"a NUL-terminated string; {_FIX}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.path}: corrupt CTranslate2 file: {what} is not UTF-8 ({e}); {_FIX}") from e


def read_ct2(path: str | os.PathLike) -> CT2Model:
    """Parse a CTranslate2 model.bin (binary version 6). Raises ``CheckpointError`` naming the file and the fix
    for a missing, truncated or corrupt file, another binary version, or an unknown data type."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (give the model.bin of a CTranslate2 model directory)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file; {_FIX}")
    cur = _Cursor(path, np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray))
    (version,) = cur.unpack("I", "the binary version")
    if version != SUPPORTED_VERSION:
        raise CheckpointError(f"{path}: CTranslate2 binary version {version} is not supported (echo reads version "
                              f"{SUPPORTED_VERSION}, written by CTranslate2 >= 3); re-convert the model with a "
                              "current ct2-transformers-converter")
    model = CT2Model(path, cur.string("the spec name"), cur.unpack("I", "the revision")[0])
    (count,) = cur.unpack("I", "the variable count")
    for i in range(count):
        name = cur.string(f"variable {i}'s name")
        (rank,) = cur.unpack("B", f"{name}'s rank")
        shape = cur.unpack(f"{rank}I", f"{name}'s shape") if rank else ()
        dtype_id, num_bytes = cur.unpack("BI", f"{name}'s type and size")
        if dtype_id not in _DTYPES:
            raise CheckpointError(f"{path}: variable {name} has unknown data type id {dtype_id} (known: "
                                  f"{sorted(_DTYPES)}); the file is corrupt or from a newer CTranslate2")
        dtype = np.uint16 if _DTYPES[dtype_id] == "bfloat16" else np.dtype(_DTYPES[dtype_id])
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if num_bytes != expected:
            raise CheckpointError(f"{path}: corrupt CTranslate2 file: {name} of shape {list(shape)} and type "
                                  f"{_DTYPES[dtype_id]} should hold {expected} bytes, not {num_bytes}; {_FIX}")
        model.variables[name] = cur.take(num_bytes, name).view(dtype).reshape(shape)
    (num_aliases,) = cur.unpack("I", "the alias count")
    for i in range(num_aliases):
        alias = cur.string(f"alias {i}")
        model.aliases[alias] = cur.string(f"alias {alias}'s target")
    if cur.pos != cur.buf.size:
        raise CheckpointError(f"{path}: corrupt CTranslate2 file: {cur.buf.size - cur.pos} unexpected bytes after "
                              f"the last record at offset {cur.pos}; {_FIX}")
    return model


# ---- Whisper's encoder as a Qwen2-Audio audio tower -----------------------------------------------------------

_LAYER = re.compile(r"^encoder/layer_(\d+)/")


def whisper_encoder(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Whisper's encoder from a CTranslate2 ``WhisperSpec`` model.bin, in Hugging Face names.

    Returns ``(tensors, audio_config)``: float32 tensors named as a Qwen2-Audio checkpoint names its tower
    (``audio_tower.conv1.weight``, ``audio_tower.layers.0.self_attn.q_proj.weight``, …; the decoder is not read)
    and the ``audio_config`` dict of config.json (``num_mel_bins``, ``d_model``, ``encoder_layers``, …) read from
    the shapes. The fused ``linear_0`` of each self-attention is split into q, k, v; k's bias is dropped, as
    Whisper has none (CTranslate2 stores zeros; a key bias adds the same ``q·b`` to every score of a query, so
    softmax removes it either way); ``gamma/beta`` become ``weight/bias``.
    """
    model = read_ct2(path)
    if model.spec != "WhisperSpec":
        raise CheckpointError(f"{model.path}: a CTranslate2 {model.spec}, not a Whisper model (WhisperSpec); "
                              "give the model.bin of a converted Whisper checkpoint")
    names = set(model.variables)
    quantised = sorted(n for n in names if n.startswith("encoder/") and n.endswith("weight_scale"))
    if quantised:
        raise CheckpointError(f"{model.path}: int8-quantised weights ({quantised[0]}, …) are not supported; "
                              "convert with --quantization float16 or float32")
    layers = sorted({int(m.group(1)) for n in names if (m := _LAYER.match(n))})
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(f"{model.path}: no encoder/layer_0.. variables found; not a Whisper encoder")
    t = model.tensor
    out = {"audio_tower.conv1.weight": t("encoder/conv1/weight"), "audio_tower.conv1.bias": t("encoder/conv1/bias"),
           "audio_tower.conv2.weight": t("encoder/conv2/weight"), "audio_tower.conv2.bias": t("encoder/conv2/bias"),
           "audio_tower.embed_positions.weight": t("encoder/position_encodings/encodings"),
           "audio_tower.layer_norm.weight": t("encoder/layer_norm/gamma"),
           "audio_tower.layer_norm.bias": t("encoder/layer_norm/beta")}
    d_model = out["audio_tower.conv1.weight"].shape[0]
    for i in layers:
        src, dst = f"encoder/layer_{i}/", f"audio_tower.layers.{i}."
        qkv_w, qkv_b = t(src + "self_attention/linear_0/weight"), t(src + "self_attention/linear_0/bias")
        if qkv_w.shape != (3 * d_model, d_model) or qkv_b.shape != (3 * d_model,):
            raise CheckpointError(f"{model.path}: {src}self_attention/linear_0 has shape {list(qkv_w.shape)}, "
                                  f"expected the fused q/k/v [{3 * d_model}, {d_model}]")
        q, k, v = qkv_w.split(d_model)
        qb, _, vb = qkv_b.split(d_model)
        out.update({dst + "self_attn.q_proj.weight": q, dst + "self_attn.q_proj.bias": qb,
                    dst + "self_attn.k_proj.weight": k,
                    dst + "self_attn.v_proj.weight": v, dst + "self_attn.v_proj.bias": vb,
                    dst + "self_attn.out_proj.weight": t(src + "self_attention/linear_1/weight"),
                    dst + "self_attn.out_proj.bias": t(src + "self_attention/linear_1/bias"),
                    dst + "self_attn_layer_norm.weight": t(src + "self_attention/layer_norm/gamma"),
                    dst + "self_attn_layer_norm.bias": t(src + "self_attention/layer_norm/beta"),
                    dst + "fc1.weight": t(src + "ffn/linear_0/weight"), dst + "fc1.bias": t(src + "ffn/linear_0/bias"),
                    dst + "fc2.weight": t(src + "ffn/linear_1/weight"), dst + "fc2.bias": t(src + "ffn/linear_1/bias"),
                    dst + "final_layer_norm.weight": t(src + "ffn/layer_norm/gamma"),
                    dst + "final_layer_norm.bias": t(src + "ffn/layer_norm/beta")})
    heads = int(t("encoder/num_heads"))
    if heads <= 0 or d_model % heads:
        raise CheckpointError(f"{model.path}: encoder/num_heads={heads} does not divide d_model={d_model}")
    config = dict(num_mel_bins=int(out["audio_tower.conv1.weight"].shape[1]), d_model=int(d_model),
                  encoder_layers=len(layers), encoder_attention_heads=heads,
                  encoder_ffn_dim=int(out["audio_tower.layers.0.fc1.weight"].shape[0]),
                  max_source_positions=int(out["audio_tower.embed_positions.weight"].shape[0]),
                  activation_function="gelu", scale_embedding=False, model_type="qwen2_audio_encoder")
    return out, config
