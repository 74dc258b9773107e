"""Spoken words through the espeak-ng program (a system package: ``apt-get install espeak-ng``).

espeak-ng is deterministic for a given text, voice, speed and pitch, so the synthetic speech tasks stay reproducible
by seed. Its output (22.05 kHz) is resampled to 16 kHz and trimmed to the voiced part, padded to the 10 ms grid, so
a word's span in the clip is known exactly.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile

import numpy as np

from ..errors import EchoError
from ..audio.io import SAMPLING_RATE

# Variants that sound clearly different from each other (espeak-ng's "en+<variant>" voices).
VOICES = ("en+m3", "en+m7", "en+f3", "en+f4")


class SpeechUnavailable(EchoError):
    """espeak-ng is needed (speech tasks) but not installed."""


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str = "en+m3", speed_wpm: int = 160, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng: float32 mono 16 kHz, trimmed to its voiced part, length a multiple of 10 ms.

    Args:
        voice: an espeak-ng voice, e.g. ``en+m3`` (see ``espeak-ng --voices=variant``).
        speed_wpm: words per minute (espeak's ``-s``).
        pitch: 0-99 (espeak's ``-p``; 50 is the voice's default).
    """
    return _speak(text, voice, int(speed_wpm), int(pitch)).copy()


@functools.lru_cache(maxsize=512)
def _speak(text: str, voice: str, speed_wpm: int, pitch: int) -> np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechUnavailable("speech tasks need the espeak-ng program (apt-get install espeak-ng); not on PATH")
    import soundfile as sf
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "speech.wav")
        proc = subprocess.run(
            [exe, "-v", voice, "-s", str(speed_wpm), "-p", str(pitch), "-w", path, text],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if proc.returncode != 0 or not os.path.exists(path):
            raise SpeechUnavailable(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip() or proc.returncode}")
        wave, rate = sf.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if rate != SAMPLING_RATE:
        wave = soxr.resample(wave, rate, SAMPLING_RATE, quality="HQ")
    return _trim(np.asarray(wave, dtype=np.float32))


def _trim(wave: np.ndarray, rel_threshold: float = 0.02) -> np.ndarray:
    """Cut leading/trailing silence, then pad to a multiple of 10 ms (160 samples) so spans stay on the grid."""
    loud = np.flatnonzero(np.abs(wave) > rel_threshold * float(np.max(np.abs(wave))))
    if loud.size == 0:
        raise SpeechUnavailable("espeak-ng produced silence")
    wave = wave[loud[0] : loud[-1] + 1]
    pad = (-wave.shape[0]) % (SAMPLING_RATE // 100)
    return np.pad(wave, (0, pad)).astype(np.float32)
