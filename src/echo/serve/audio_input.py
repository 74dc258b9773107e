"""Audio parts of a request -> a 16 kHz float32 clip, with every limit checked before the expensive step.

Order of checks: the base64 text's length (bytes it would decode to) before decoding it; a file URL's path
against the allowed directory (after resolving links) and its size before opening it; the container header's
duration before decoding samples. Decoding is soundfile's (libsndfile: wav, flac, mp3, ogg), resampling and
validation are ``echo.audio.load``'s.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from urllib.parse import unquote, urlparse

import numpy as np

from ..audio import load as load_audio
from ..durable import require_file
from ..errors import AudioError, EchoError
from .config import ServeConfig
from .protocol import ApiError, AudioPart


def decode_audio(part: AudioPart, config: ServeConfig) -> np.ndarray:
    """The clip of one audio part; ApiError (400, naming ``part.param``) for anything unusable."""
    if part.kind == "file":
        data = _read_allowed_file(part, config)
    else:
        text = part.data.strip()
        decoded_bytes = len(text) * 3 // 4
        if decoded_bytes > config.max_audio_bytes:
            raise ApiError(f"{part.param}: audio of about {decoded_bytes} bytes is over the limit of "
                           f"{config.max_audio_bytes} bytes", part.param)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(f"{part.param}: not valid base64 ({exc})", part.param) from exc
    if not data:
        raise ApiError(f"{part.param}: the audio is empty", part.param)
    return _decode_bytes(data, part, config)


def _read_allowed_file(part: AudioPart, config: ServeConfig) -> bytes:
    root = config.allowed_local_media_path
    if root is None:
        raise ApiError(f"{part.param}: file:// URLs are refused (the server was started without "
                       "--allowed-local-media-path)", part.param)
    url = urlparse(part.data)
    if url.netloc not in ("", "localhost"):
        raise ApiError(f"{part.param}: file URLs must name a local path, got host {url.netloc!r}", part.param)
    path = os.path.realpath(unquote(url.path))  # links and '..' resolved before the check
    if os.path.commonpath([root, path]) != root:
        raise ApiError(f"{part.param}: {unquote(url.path)} is outside the allowed media directory", part.param)
    try:
        require_file(path, name=part.param)
    except EchoError as exc:
        raise ApiError(str(exc), part.param) from None
    size = os.path.getsize(path)
    if size > config.max_audio_bytes:
        raise ApiError(f"{part.param}: file of {size} bytes is over the limit of {config.max_audio_bytes} bytes",
                       part.param)
    with open(path, "rb") as f:
        return f.read(config.max_audio_bytes + 1)


def _decode_bytes(data: bytes, part: AudioPart, config: ServeConfig) -> np.ndarray:
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))  # libsndfile knows the container from its header
    except Exception as exc:  # libsndfile reports unknown or corrupt data as several exception types
        raise ApiError(f"{part.param}: cannot decode audio ({exc})", part.param) from exc
    if info.frames > 0 and info.samplerate > 0 and info.frames / info.samplerate > config.max_audio_seconds:
        raise ApiError(f"{part.param}: audio lasts {info.frames / info.samplerate:.1f} s, over the limit of "
                       f"{config.max_audio_seconds:g} s", part.param)
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return load_audio(samples, rate, max_seconds=config.max_audio_seconds, name=part.param)
    except AudioError as exc:
        raise ApiError(str(exc), part.param) from exc
    except Exception as exc:
        raise ApiError(f"{part.param}: cannot decode audio ({exc})", part.param) from exc
