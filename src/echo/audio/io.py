"""Audio in: any file soundfile reads (or an array) -> float32 mono at 16 kHz, validated.

Every failure raises :class:`echo.errors.AudioError` naming the source and the reason, before any model time is
spent. Decoding is soundfile's (libsndfile), resampling is soxr's; nothing here is hand-rolled DSP.
"""

from __future__ import annotations

import os
import re
from typing import Union

import numpy as np

from ..durable import require_file
from ..errors import AudioError

SAMPLING_RATE = 16_000
MIN_SOURCE_RATE = 1_000  # Hz; below this no speech or music survives, and it is almost surely a wrong argument
MAX_SOURCE_RATE = 384_000  # Hz; the highest rate any common format/hardware writes
DEFAULT_MAX_SECONDS = 1_200.0  # a 20-minute clip; MMAR/MMAU clips are far shorter
_MAX_CHANNELS = 32

AudioSource = Union[str, os.PathLike, np.ndarray, "torch.Tensor"]  # noqa: F821 (torch is optional here)


def load(
    source: AudioSource,
    sampling_rate: int | None = None,
    *,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    name: str | None = None,
) -> np.ndarray:
    """Load audio as a float32 mono waveform at 16 kHz.

    Args:
        source: a path to any file soundfile can decode (wav, flac, ogg, ...), or an array of samples:
            1-D mono, or 2-D with a channel axis of at most 32 entries ((samples, channels) as soundfile returns,
            or (channels, samples) as torchaudio returns). Integer arrays are scaled to [-1, 1); every float dtype of
            numpy and torch is taken (bfloat16, float16 and the float8s widened to float32).
        sampling_rate: rate of ``source`` when it is an array (Hz); ``None`` means it is already 16 kHz. For files the
            rate is read from the file and this argument must be ``None`` or match it.
        max_seconds: refuse audio longer than this (checked before decoding a file); ``None`` disables the check.
        name: how to call the source in error messages (defaults to the path, or "array").

    Returns:
        ``np.ndarray`` of shape ``(num_samples,)``, dtype float32, C-contiguous, sampled at 16 kHz.

    Raises:
        AudioError: missing file, unreadable or corrupt file, zero samples, non-finite samples, a sampling rate
            outside [1 kHz, 384 kHz], or a duration above ``max_seconds``.
    """
    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        samples, rate = _read_file(os.fspath(source), sampling_rate, max_seconds, label)
    else:
        label = name or "array"
        samples = _as_float_array(source, label)
        rate = SAMPLING_RATE if sampling_rate is None else _check_rate(sampling_rate, label)
        _check_duration(samples.shape[0] if samples.ndim == 1 else max(samples.shape), rate, max_seconds, label)
    mono = _mixdown(samples, label)
    if mono.shape[0] == 0:
        raise AudioError(f"{label}: audio has zero samples")
    if not np.isfinite(mono).all():
        bad = int((~np.isfinite(mono)).sum())
        raise AudioError(f"{label}: audio has {bad} non-finite samples (NaN or inf)")
    if rate != SAMPLING_RATE:
        import soxr

        mono = soxr.resample(mono, rate, SAMPLING_RATE, quality="HQ")
        if mono.shape[0] == 0:
            raise AudioError(f"{label}: audio is shorter than one sample at {SAMPLING_RATE} Hz")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _read_file(path: str, sampling_rate: int | None, max_seconds: float | None, label: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    require_file(path, "file", AudioError, name=label)
    try:
        info = sf.info(path)
    except Exception as exc:  # libsndfile reports corrupt/unknown formats as several exception types
        raise AudioError(f"{label}: cannot read audio file ({exc})") from exc
    rate = _check_rate(info.samplerate, label)
    _check_not_truncated(info, label)
    if sampling_rate is not None and sampling_rate != rate:
        raise AudioError(f"{label}: file is sampled at {rate} Hz but sampling_rate={sampling_rate} was given")
    if info.frames > 0:  # some containers (ogg streams) do not know their length; checked after decoding then
        _check_duration(info.frames, rate, max_seconds, label)
    try:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{label}: cannot decode audio file ({exc})") from exc
    _check_duration(samples.shape[0], rate, max_seconds, label)
    return samples, rate


# libsndfile reads a file whose data chunk is cut short without an error, reporting fewer frames than the header
# declares; its log says "data : 32000 (should be 15978)" (WAV; "SSND" for AIFF)
_SHORT_CHUNK = re.compile(r"^(?:data|SSND)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)


def _check_not_truncated(info, label: str) -> None:
    m = _SHORT_CHUNK.search(getattr(info, "extra_info", "") or "")
    if m and int(m.group(2)) < int(m.group(1)):
        declared, present = int(m.group(1)), int(m.group(2))
        per_frame = max(1, present // info.frames) if info.frames else 1
        raise AudioError(f"{label}: truncated audio file: its header declares {declared} bytes of audio "
                         f"({declared / per_frame / info.samplerate:.2f} s) but only {present} are present "
                         f"({info.frames / info.samplerate:.2f} s); the file was cut short (an interrupted copy?)")


def _as_float_array(source, label: str) -> np.ndarray:
    if hasattr(source, "detach"):  # a torch tensor, without importing torch here
        source = source.detach().cpu()
        if source.is_complex():
            raise AudioError(f"{label}: complex samples are not audio")
        if source.is_floating_point():  # bfloat16 and the float8s have no numpy dtype; widening to float32 is exact
            source = source.float()
        source = source.numpy()
    arr = np.asarray(source)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise AudioError(f"{label}: expected numeric samples, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise AudioError(f"{label}: expected a 1-D or 2-D array of samples, got shape {tuple(arr.shape)}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise AudioError(f"{label}: complex samples are not audio")
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        half = float(np.iinfo(arr.dtype).max // 2 + 1)
        return (arr.astype(np.float64) - half).astype(np.float32) / np.float32(half)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / np.float32(-float(np.iinfo(arr.dtype).min))
    return arr.astype(np.float32, copy=False)


def _mixdown(samples: np.ndarray, label: str) -> np.ndarray:
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioError(f"{label}: expected a 1-D or 2-D array of samples, got shape {tuple(samples.shape)}")
    if samples.shape[1] <= _MAX_CHANNELS and samples.shape[1] <= samples.shape[0]:
        channel_axis = 1
    elif samples.shape[0] <= _MAX_CHANNELS:
        channel_axis = 0
    else:
        raise AudioError(f"{label}: cannot tell the channel axis of shape {tuple(samples.shape)} (max {_MAX_CHANNELS})")
    return samples.mean(axis=channel_axis, dtype=np.float32) if samples.shape[channel_axis] > 1 else samples.reshape(-1)


def _check_rate(rate, label: str) -> int:
    try:
        whole = not isinstance(rate, bool) and float(rate).is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise AudioError(f"{label}: sampling rate must be a whole number of Hz, got {rate!r}")
    rate = int(rate)
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise AudioError(f"{label}: sampling rate {rate} Hz is outside [{MIN_SOURCE_RATE}, {MAX_SOURCE_RATE}] Hz")
    return rate


def _check_duration(num_samples: int, rate: int, max_seconds: float | None, label: str) -> None:
    if max_seconds is not None and num_samples > max_seconds * rate:
        raise AudioError(f"{label}: audio lasts {num_samples / rate:.1f} s, above max_seconds={max_seconds:g}")
