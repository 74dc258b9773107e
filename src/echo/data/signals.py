"""Sound primitives for the synthetic tasks: tones, beeps, chirps, noise bursts, placement and background noise.

Every function works at 16 kHz and takes durations and times in seconds; the tasks put every event on a 10 ms grid
(160 samples) so the ground-truth spans written into the chain of thought are exact, not rounded.
"""

from __future__ import annotations

import numpy as np

from ..audio.io import SAMPLING_RATE

GRID_S = 0.01  # every onset, duration and clip length is a multiple of this, so spans are exact in samples


def n_samples(seconds: float) -> int:
    """Seconds -> samples at 16 kHz (times are on the 10 ms grid, so this is exact)."""
    return int(round(seconds * SAMPLING_RATE))


def on_grid(seconds: float) -> float:
    """Snap a time to the 10 ms grid."""
    return round(round(seconds / GRID_S) * GRID_S, 2)


def _ramp(x: np.ndarray, ramp_s: float = 0.01) -> np.ndarray:
    """Raised-cosine fade in/out so events start and end without clicks (and the span edges stay exact)."""
    n = min(n_samples(ramp_s), x.shape[0] // 2)
    if n > 0:
        w = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n, dtype=np.float64))
        x[:n] *= w
        x[-n:] *= w[::-1]
    return x


def tone(freq_hz: float, dur_s: float, amp: float = 0.5, harmonics: int = 3) -> np.ndarray:
    """A steady tone at ``freq_hz`` (fundamental) with a few decaying harmonics, like a simple instrument."""
    t = np.arange(n_samples(dur_s)) / SAMPLING_RATE
    x = np.zeros_like(t)
    for k in range(1, harmonics + 1):
        if k * freq_hz < SAMPLING_RATE / 2:
            x += np.sin(2 * np.pi * k * freq_hz * t) / k**1.5
    x *= amp / np.max(np.abs(x))
    return _ramp(x).astype(np.float32)


def beep(dur_s: float = 0.12, freq_hz: float = 1000.0, amp: float = 0.5) -> np.ndarray:
    """A pure sine beep."""
    t = np.arange(n_samples(dur_s)) / SAMPLING_RATE
    return _ramp(amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def chirp(dur_s: float, f0_hz: float, f1_hz: float, amp: float = 0.5) -> np.ndarray:
    """A sweep from ``f0_hz`` to ``f1_hz`` (exponential in frequency, as pitch is heard)."""
    t = np.arange(n_samples(dur_s)) / SAMPLING_RATE
    k = np.log(f1_hz / f0_hz) / dur_s
    phase = 2 * np.pi * f0_hz * (np.exp(k * t) - 1.0) / k
    return _ramp(amp * np.sin(phase)).astype(np.float32)


def noise_burst(rng: np.random.Generator, dur_s: float, amp: float = 0.5) -> np.ndarray:
    """White noise of peak ``amp`` (before the fades)."""
    x = rng.standard_normal(n_samples(dur_s))
    return _ramp(amp * x / np.max(np.abs(x))).astype(np.float32)


def click_train(dur_s: float, rate_hz: float = 20.0, amp: float = 0.6) -> np.ndarray:
    """Short clicks (2 ms decaying pulses) at ``rate_hz``."""
    x = np.zeros(n_samples(dur_s))
    click = amp * np.exp(-np.arange(32) / 6.0) * np.sign(np.sin(np.arange(32) * 1.3) + 1e-9)
    for start in range(0, x.shape[0] - click.shape[0], int(SAMPLING_RATE / rate_hz)):
        x[start : start + click.shape[0]] += click
    return x.astype(np.float32)


def place(canvas: np.ndarray, event: np.ndarray, start_s: float, gain: float = 1.0) -> tuple[float, float]:
    """Add ``event`` into ``canvas`` at ``start_s``; returns the event's span ``(start_s, end_s)`` in seconds."""
    start = n_samples(start_s)
    end = start + event.shape[0]
    if start < 0 or end > canvas.shape[0]:
        raise ValueError(f"event [{start_s:.2f}, {end / SAMPLING_RATE:.2f}] s does not fit a {canvas.shape[0] / SAMPLING_RATE:.2f} s clip")
    canvas[start:end] += gain * event
    return start_s, on_grid(end / SAMPLING_RATE)


def add_noise(rng: np.random.Generator, clip: np.ndarray, snr_db: float | None) -> np.ndarray:
    """White background noise at ``snr_db`` below the clip's RMS over its non-silent samples (None: no noise)."""
    if snr_db is None:
        return clip
    active = clip[np.abs(clip) > 1e-4]
    rms = float(np.sqrt(np.mean(active.astype(np.float64) ** 2))) if active.size else 0.1
    noise = rng.standard_normal(clip.shape[0]) * rms / (10.0 ** (snr_db / 20.0))
    return (clip + noise).astype(np.float32)


def finish(clip: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale to a fixed peak (keeps relative levels; avoids clipping in the 16-bit wav)."""
    top = float(np.max(np.abs(clip)))
    return (clip * (peak / top) if top > 0 else clip).astype(np.float32)


def free_slots(
    rng: np.random.Generator,
    count: int,
    lengths_s: list[float],
    clip_s: float,
    gap_s: float,
    lo_s: float = 0.1,
    hi_s: float | None = None,
    taken: list[tuple[float, float]] | None = None,
) -> list[float]:
    """Random onsets (on the grid) for ``count`` events of the given lengths inside ``[lo_s, hi_s]``, at least
    ``gap_s`` apart from each other and from the ``taken`` spans. Raises ValueError if they cannot fit."""
    hi_s = clip_s - 0.1 if hi_s is None else hi_s
    taken = list(taken or [])
    onsets: list[float] = []
    for i in range(count):
        length = lengths_s[i]
        if hi_s - length < lo_s:
            raise ValueError(f"an event of {length:.2f} s does not fit in [{lo_s:.2f}, {hi_s:.2f}] s")
        for _ in range(200):
            start = on_grid(rng.uniform(lo_s, hi_s - length))
            if start >= lo_s and all(start + length + gap_s <= a or start >= b + gap_s for a, b in taken):
                onsets.append(start)
                taken.append((start, start + length))
                break
        else:
            raise ValueError(f"cannot fit {count} events of {lengths_s} s in [{lo_s}, {hi_s}] s")
    return onsets
