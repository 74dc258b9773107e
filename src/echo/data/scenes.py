"""Scenes: recorded (and synthesised) sounds mixed into one long clip at known onsets, durations and levels.

A :class:`Sound` is a ready waveform with its name, label and the recording it came from; :func:`mix` lays a list of
sounds out in the given order over a 16 kHz canvas (onsets on the 10 ms grid, gaps kept) and returns the clip with
one :class:`Event` per sound, so every answer and span about the scene is exact. A music bed can go underneath.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import signals as S
from .sounds import Recording, load
from .tasks import _events, _layout


@dataclass(frozen=True, slots=True)
class Sound:
    wave: np.ndarray
    name: str  # what a question calls it ("dog")
    label: str  # what is heard ("a dog barking"), or the words said
    kind: str  # "event" | "speech"
    recording: str  # the recording id ("animals/dog"), or "echo/<name>" for a synthesised sound
    source: str

    @property
    def seconds(self) -> float:
        return self.wave.shape[0] / S.SAMPLING_RATE


@dataclass(frozen=True, slots=True)
class Event:
    """Where one sound lies in the clip (seconds, on the 10 ms grid) and how loud it was mixed (dB)."""

    name: str
    label: str
    kind: str
    recording: str
    source: str
    start: float
    end: float
    gain_db: float

    def to_json(self) -> dict:
        return asdict(self)


def longest_pause_s(wave: np.ndarray, rel_db: float = -30.0) -> float:
    """The longest quiet stretch inside a sound (10 ms frames ``rel_db`` below its loudest): a dog excerpt with two
    barks has one, so it is not one occurrence to count, nor one continuous sound to time."""
    hop = S.SAMPLING_RATE // 100
    n = wave.shape[0] // hop * hop
    rms = np.sqrt(np.mean(wave[:n].reshape(-1, hop).astype(np.float64) ** 2, axis=1))
    active = np.flatnonzero(rms > rms.max() * 10 ** (rel_db / 20)) if n else np.zeros(0, dtype=int)
    return float((np.diff(active) - 1).max()) * 0.01 if active.size > 1 else 0.0


def recorded(rec: Recording, max_s: float | None = None) -> Sound:
    return Sound(load(rec, max_s), rec.name, rec.label, rec.kind, rec.id, rec.source)


def synthesised(rng: np.random.Generator) -> list[Sound]:
    """echo's own event sounds (the same in every split: they are generated, not recorded)."""
    return [Sound(make(rng), name, f"a {name}", "event", f"echo/{name.replace(' ', '-')}", "echo")
            for name, make in _events().items()]


def mix(rng: np.random.Generator, sounds: list, clip_s: float, min_gap_s: float,
        gains_db: list[float] | None = None) -> tuple[np.ndarray, list[Event]]:
    """Place ``sounds`` in order, at least ``min_gap_s`` apart, spread randomly over a ``clip_s`` clip. An entry may
    be a tuple of sounds that start together (overlapping, at the entry's one gain): one :class:`Event` each."""
    gains_db = gains_db if gains_db is not None else [0.0] * len(sounds)
    groups = [entry if isinstance(entry, tuple) else (entry,) for entry in sounds]
    wave = np.zeros(S.n_samples(clip_s), dtype=np.float32)
    onsets = _layout(rng, [max(s.seconds for s in group) for group in groups], clip_s, min_gap_s)
    events = []
    for group, onset, g in zip(groups, onsets, gains_db):
        for snd in group:
            start, end = S.place(wave, snd.wave, onset, gain=10 ** (g / 20))
            events.append(Event(snd.name, snd.label, snd.kind, snd.recording, snd.source, start, end, round(g, 1)))
    return wave, events


def add_music(rng: np.random.Generator, wave: np.ndarray, music: np.ndarray, level_db: float) -> dict:
    """A random excerpt of ``music`` under the whole clip, ``level_db`` relative to the events' peak (0.5)."""
    n = wave.shape[0]
    reps = int(np.ceil(n / music.shape[0])) + 1
    bed = np.tile(music, reps) if reps > 2 else np.concatenate([music, music])
    offset = int(rng.integers(0, max(1, bed.shape[0] - n)))
    bed = bed[offset : offset + n].astype(np.float32)
    bed *= (0.5 * 10 ** (level_db / 20)) / max(float(np.max(np.abs(bed))), 1e-9)
    wave += S._ramp(bed.copy(), 0.05)
    return {"offset_s": round(offset / S.SAMPLING_RATE, 2), "level_db": level_db}
