"""The synthetic task families: audio whose answer needs detail at a particular time, known exactly.

Each family is ``fn(rng, difficulty) -> Task``: the clip, a question with four choices, the answer, the ground-truth
spans (seconds, on the 10 ms grid) and the reasoning text that cites them with ``<seg>a, b</seg>``. Families only
draw from ``rng``, so a seed fixes everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..protocol import format_span as seg
from . import signals as S
from .speech import VOICES, speak

ORDINALS = ("first", "second", "third", "fourth")
WORDS = (
    "apple", "river", "candle", "garden", "window", "pencil", "rocket", "tiger", "bottle", "mirror", "basket",
    "dragon", "forest", "jacket", "ladder", "monkey", "orange", "pillow", "rabbit", "silver", "tunnel", "violin",
    "wallet", "yellow", "zebra", "button", "carpet", "engine", "finger", "guitar", "hammer", "island", "kitten",
    "lemon", "magnet", "needle", "ocean", "planet", "summer", "thunder",
)
_NATURAL = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
NOTES = tuple(  # (name, Hz, midi) for the natural notes C3..B5
    (f"{name}{octave}", 440.0 * 2 ** ((12 * (octave + 1) + pc - 69) / 12), 12 * (octave + 1) + pc)
    for octave in (3, 4, 5) for name, pc in _NATURAL.items()
)


@dataclass(frozen=True, slots=True)
class Difficulty:
    """Knobs of one difficulty level. Times in seconds, levels in dB.

    Attributes:
        clip_s: range the clip length is drawn from (a family lengthens it when its events need more room).
        distractors: extra events that are not asked about (other sounds, beeps outside the window, more words).
        snr_db: white background noise this far below the clip's level; None for a clean clip.
        level_gap_db: how much louder the loudest burst is than the next one.
        pitch_sep: minimum distance between the tones' pitches, in semitones.
        gap_s: length of the silent gap.
        voice_contrast: the voice change crosses male/female variants (else two variants of the same kind).
    """

    name: str
    clip_s: tuple[float, float]
    distractors: int
    snr_db: float | None
    level_gap_db: float
    pitch_sep: int
    gap_s: float
    voice_contrast: bool


DIFFICULTIES = {
    "easy": Difficulty("easy", (4.0, 6.0), 0, None, 12.0, 4, 0.8, True),
    "medium": Difficulty("medium", (6.0, 10.0), 2, 20.0, 6.0, 2, 0.5, True),
    "hard": Difficulty("hard", (10.0, 16.0), 4, 6.0, 3.0, 1, 0.25, False),
}


Draw = Callable[[str, int], int]
"""``draw(what, k) -> 0..k-1``: a family's choice among ``k`` outcomes (which sound is longer, the answer's rank among
the offered counts...). ``synthetic.balanced_draw`` makes it exact over a family's items, so every outcome is the
answer in exactly its share of them; on its own a family draws uniformly from its ``rng`` (:func:`uniform_draw`)."""


def uniform_draw(rng: np.random.Generator) -> Draw:
    return lambda what, k: int(rng.integers(0, k))


@dataclass(slots=True)
class Task:
    wave: np.ndarray  # float32, 16 kHz, before background noise
    question: str
    choices: list[str]
    answer: str
    spans: list[tuple[float, float]]  # seconds, in the order the reasoning cites them
    thought: str  # the text inside <think>...</think>


def _t(seconds: float) -> str:
    """A time for a question or the reasoning: one decimal when that is exact, else two."""
    return f"{seconds:.1f}" if abs(seconds * 10 - round(seconds * 10)) < 1e-6 else f"{seconds:.2f}"


def _clip_len(rng: np.random.Generator, d: Difficulty, need_s: float = 0.0) -> float:
    return max(round(float(rng.uniform(*d.clip_s)), 1), round(need_s + 0.05, 1))


def _layout(rng: np.random.Generator, lengths: list[float], clip_s: float, min_gap_s: float,
            lo_s: float = 0.2, tail_s: float = 0.2) -> list[float]:
    """Onsets (grid) for events in the given order, at least ``min_gap_s`` apart, spread randomly over the clip."""
    free = clip_s - lo_s - tail_s - sum(lengths) - min_gap_s * (len(lengths) - 1)
    if free < 0:
        raise ValueError(f"{len(lengths)} events of {sum(lengths):.2f} s do not fit a {clip_s} s clip")
    extra = rng.dirichlet(np.ones(len(lengths) + 1)) * free
    onsets, t = [], lo_s
    for i, length in enumerate(lengths):
        t += extra[i]
        onset = max(S.on_grid(t - S.GRID_S / 2), onsets[-1] + lengths[i - 1] + min_gap_s if onsets else lo_s)
        onsets.append(S.on_grid(onset))
        t = onsets[-1] + length + min_gap_s
    return onsets


def _choices(rng: np.random.Generator, answer: str, preferred: list[str], pool: list[str], k: int = 4) -> list[str]:
    """``answer`` plus distractors (``preferred`` first, then ``pool``), shuffled."""
    out = [answer]
    for group in (preferred, pool):
        for c in rng.permutation(np.array(group, dtype=object)) if group else []:
            if len(out) < k and c not in out:
                out.append(str(c))
    return [out[i] for i in rng.permutation(len(out))]


def _events() -> dict:
    return {
        "rising chirp": lambda rng: S.chirp(0.6, 400.0, 3000.0),
        "falling chirp": lambda rng: S.chirp(0.6, 3000.0, 400.0),
        "noise burst": lambda rng: S.noise_burst(rng, 0.4),
        "low hum": lambda rng: S.tone(110.0, 0.8, harmonics=6),
        "click train": lambda rng: S.click_train(0.5),
        "high beep": lambda rng: S.beep(0.25, 2500.0),
    }


def beep_count(rng: np.random.Generator, d: Difficulty, draw: Draw | None = None) -> Task:
    # Four consecutive counts are offered and the answer is any of them with equal odds: neither the offered values
    # nor the answer's rank among them gives it away.
    low = int(rng.integers(1, 3))
    k = low + (draw or uniform_draw(rng))("count", 4)
    beep_s, n_out = 0.12, d.distractors + int(rng.integers(1, 3))
    clip_s = _clip_len(rng, d, need_s=k * 0.35 + 0.6 + n_out * 0.35 + 1.0)
    win_s = max(round(k * 0.35 + 0.4, 1), round(clip_s * float(rng.uniform(0.3, 0.5)), 1))
    a = round(float(rng.uniform(0.1, clip_s - win_s - 0.1)), 1)
    b = round(a + win_s, 1)
    wave = np.zeros(S.n_samples(clip_s), dtype=np.float32)
    inside = [o + a for o in _layout(rng, [beep_s] * k, b - a, 0.15, lo_s=0.1, tail_s=0.1)]
    outside: list[float] = []
    regions = [(lo, hi) for lo, hi in ((0.1, a - 0.15), (b + 0.15, clip_s - 0.1)) if hi - lo >= beep_s + 0.05]
    for _ in range(n_out if regions else 0):
        lo, hi = regions[int(rng.integers(0, len(regions)))]
        taken = [(o, o + beep_s) for o in outside]
        try:
            outside += S.free_slots(rng, 1, [beep_s], clip_s, 0.15, lo, hi, taken=taken)
        except ValueError:
            continue  # that side is full; fewer distractor beeps is fine
    spans = [S.place(wave, S.beep(beep_s), S.on_grid(onset)) for onset in inside + outside][:k]
    choices = _choices(rng, str(k), [str(n) for n in range(low, low + 4) if n != k], [])
    # The reasoning cites each beep inside the window where it is, not the window the question gives.
    thought = (
        f"I need to count the beeps between {_t(a)} s and {_t(b)} s. Inside that window I hear "
        f"{', '.join(seg(*sp) for sp in spans)}: {k} beep{'s' if k > 1 else ''}; "
        + (f"the other {len(outside)} beep{'s' if len(outside) > 1 else ''} of the clip "
           f"{'fall' if len(outside) > 1 else 'falls'} outside the window." if outside else "there are no other beeps.")
    )
    return Task(wave, f"How many beeps are there between {_t(a)} s and {_t(b)} s?", choices, str(k), spans, thought)


def pitch_at(rng: np.random.Generator, d: Difficulty) -> Task:
    m = 3 + d.distractors
    clip_s = _clip_len(rng, d, need_s=m * 0.8 + 0.4)
    notes: list[tuple[str, float, int]] = []
    for i in rng.permutation(len(NOTES)):
        if all(abs(NOTES[i][2] - n[2]) >= d.pitch_sep for n in notes):
            notes.append(NOTES[i])
        if len(notes) == m:
            break
    m = len(notes)  # wide pitch spacing leaves room for fewer distinct tones than asked for
    weights = rng.dirichlet(np.ones(m) * 4.0)
    usable = clip_s - 0.2 - 0.05 * (m - 1)
    lengths = [S.on_grid(0.6 + w * (usable - 0.6 * m)) for w in weights]
    onsets, t = [], 0.1
    for length in lengths:
        onsets.append(S.on_grid(t))
        t += length + 0.05
    wave = np.zeros(S.n_samples(clip_s), dtype=np.float32)
    spans = [S.place(wave, S.tone(hz, length), onset) for (_, hz, _), length, onset in zip(notes, lengths, onsets)]
    j = int(rng.integers(0, m))
    s, e = spans[j]
    at = round(float(rng.uniform(s + 0.15, e - 0.15)), 1)
    at = at if s + 0.05 <= at <= e - 0.05 else S.on_grid((s + e) / 2)
    label = [f"{name} ({hz:.0f} Hz)" for name, hz, _ in NOTES]
    answer = f"{notes[j][0]} ({notes[j][1]:.0f} Hz)"
    others = [f"{n} ({hz:.0f} Hz)" for n, hz, _ in notes if n != notes[j][0]]
    choices = _choices(rng, answer, others, label)
    thought = (
        f"At {_t(at)} s one steady tone is playing. Listening to that tone again {seg(s, e)}, its pitch is about "
        f"{notes[j][1]:.0f} Hz, which is the note {notes[j][0]}."
    )
    return Task(wave, f"What is the pitch of the tone playing at {_t(at)} s?", choices, answer, [(s, e)], thought)


EVENT_ORDER = ("x first", "y first", "same time", "neither")


def event_order(rng: np.random.Generator, d: Difficulty, draw: Draw | None = None) -> Task:
    """Which of two named sounds starts first; in a quarter of the items each, they start together (overlapping) or
    neither plays, so every offered choice is right in its fair share of items."""
    outcome = EVENT_ORDER[(draw or uniform_draw(rng))("outcome", len(EVENT_ORDER))]
    catalog = _events()
    names = list(catalog)
    x, y, *rest = [names[i] for i in rng.permutation(len(names))]
    extra = rest[: max(1, d.distractors) if outcome == "neither" else min(d.distractors, len(rest))]
    slots: list[tuple[str, ...]] = [(n,) for n in extra]
    if outcome == "same time":
        slots.append((x, y))
    elif outcome != "neither":
        slots += [(x,), (y,)]
    slots = [slots[i] for i in rng.permutation(len(slots))]
    if outcome in ("x first", "y first"):
        ix, iy = slots.index((x,)), slots.index((y,))
        if (ix < iy) != (outcome == "x first"):
            slots[ix], slots[iy] = (y,), (x,)
    sounds = {n: catalog[n](rng) for slot in slots for n in slot}
    lengths = [max(sounds[n].shape[0] for n in slot) / S.SAMPLING_RATE for slot in slots]
    clip_s = _clip_len(rng, d, need_s=sum(lengths) + 0.3 * len(lengths) + 0.4)
    wave = np.zeros(S.n_samples(clip_s), dtype=np.float32)
    spans = {n: S.place(wave, sounds[n], o) for slot, o in zip(slots, _layout(rng, lengths, clip_s, 0.3)) for n in slot}
    same_time, neither = "they start at the same time", "neither of them is in the clip"
    if outcome == "neither":
        answer, cited = neither, [spans[n] for slot in slots for n in slot]
        heard = ", ".join(f"a {n} {seg(*spans[n])}" for slot in slots for n in slot)
        thought = f"Listening through the clip, I hear {heard}. Neither the {x} nor the {y} is among them."
    else:
        first, second = sorted((x, y), key=lambda n: (spans[n][0], n != x))
        answer = same_time if outcome == "same time" else f"the {first}"
        when = (f"Both start at {_t(spans[first][0])} s." if outcome == "same time" else
                f"The {first} starts at {_t(spans[first][0])} s, before the {second} at {_t(spans[second][0])} s.")
        cited = [spans[first], spans[second]]
        thought = f"The {first} plays here {seg(*spans[first])} and the {second} here {seg(*spans[second])}. {when}"
    choices = _choices(rng, answer, [f"the {x}", f"the {y}", same_time, neither], [])
    return Task(wave, f"Which comes first: the {x} or the {y}?", choices, answer, cited, thought)


def loudest_burst(rng: np.random.Generator, d: Difficulty) -> Task:
    lengths = [S.on_grid(float(rng.uniform(0.3, 0.5))) for _ in ORDINALS]
    catalog = _events()
    extra = [n for n in catalog if n != "noise burst"]
    extra = [extra[i] for i in rng.permutation(len(extra))][: d.distractors]
    clip_s = _clip_len(rng, d, need_s=sum(lengths) + 1.6 + 1.1 * len(extra))
    wave = np.zeros(S.n_samples(clip_s), dtype=np.float32)
    loud = int(rng.integers(0, len(ORDINALS)))
    gains_db = [-(d.level_gap_db + float(rng.uniform(0.0, 6.0))) for _ in ORDINALS]
    gains_db[loud] = 0.0
    onsets = _layout(rng, lengths, clip_s, 0.3 + 1.1 * len(extra) / len(ORDINALS))
    spans = [S.place(wave, S.noise_burst(rng, length), onset, gain=10 ** (g / 20))
             for length, onset, g in zip(lengths, onsets, gains_db)]
    for name in extra:  # other sounds in the remaining room, never overlapping a burst
        snd = catalog[name](rng)
        try:
            (onset,) = S.free_slots(rng, 1, [snd.shape[0] / S.SAMPLING_RATE], clip_s, 0.1, taken=list(spans))
        except ValueError:
            continue
        S.place(wave, snd, onset, gain=0.3)
    answer = f"the {ORDINALS[loud]} burst"
    starts = ", ".join(_t(s) for s, _ in spans[:-1]) + f" and {_t(spans[-1][0])}"
    thought = (
        f"There are four noise bursts, starting at {starts} s. Listening again to the {ORDINALS[loud]} one "
        f"{seg(*spans[loud])}, it is clearly louder than the other three."
    )
    return Task(wave, "The clip contains four bursts of noise. Which burst is the loudest?",
                [f"the {o} burst" for o in ORDINALS], answer, [spans[loud]], thought)


def silence_gap(rng: np.random.Generator, d: Difficulty) -> Task:
    clip_s = _clip_len(rng, d, need_s=4 * (d.gap_s + 0.4))
    quarter = int(rng.integers(0, 4))
    q_s = clip_s / 4
    gap_s = S.on_grid(min(d.gap_s, q_s - 0.3))
    g0 = S.on_grid(float(rng.uniform(quarter * q_s + 0.1, (quarter + 1) * q_s - gap_s - 0.1)))
    g1 = S.on_grid(g0 + gap_s)
    chord = [NOTES[i][1] for i in rng.choice(len(NOTES), size=2, replace=False)]
    wave = np.zeros(S.n_samples(clip_s), dtype=np.float32)
    for start, end in ((0.0, g0), (g1, clip_s)):
        bed = sum(S.tone(hz, end - start, amp=0.25) for hz in chord)
        S.place(wave, bed, start)
    catalog = _events()
    names = list(catalog)
    for i in rng.permutation(len(names))[: d.distractors]:  # brief sounds on top of the bed, away from the gap
        snd = catalog[names[i]](rng)
        try:
            (onset,) = S.free_slots(rng, 1, [snd.shape[0] / S.SAMPLING_RATE], clip_s, 0.3, taken=[(g0, g1)])
        except ValueError:
            continue
        S.place(wave, snd, onset, gain=0.5)
    lo, hi = quarter * q_s, (quarter + 1) * q_s
    thought = (
        f"The clip lasts {_t(clip_s)} s, so each quarter is {q_s:.2f} s long. The steady tone stops here "
        f"{seg(g0, g1)}, from {_t(g0)} to {_t(g1)} s, which is inside the {ORDINALS[quarter]} quarter "
        f"({lo:.2f} to {hi:.2f} s)."
    )
    return Task(wave, "The steady tone in this clip stops for a moment once. In which quarter of the clip does it stop?",
                [f"the {o} quarter" for o in ORDINALS], f"the {ORDINALS[quarter]} quarter", [(g0, g1)], thought)


def _voice(rng: np.random.Generator) -> tuple[str, int, int]:
    return VOICES[int(rng.integers(0, len(VOICES)))], int(rng.integers(150, 176)), int(rng.integers(40, 61))


def spoken_word(rng: np.random.Generator, d: Difficulty) -> Task:
    words = [WORDS[i] for i in rng.choice(len(WORDS), size=3 + d.distractors, replace=False)]
    voice, speed, pitch = _voice(rng)
    sounds = [speak(w, voice, speed, pitch) for w in words]
    lengths = [s.shape[0] / S.SAMPLING_RATE for s in sounds]
    clip_s = _clip_len(rng, d, need_s=sum(lengths) + 0.4 * len(words) + 0.4)
    wave = np.zeros(S.n_samples(clip_s), dtype=np.float32)
    spans = [S.place(wave, snd, o) for snd, o in zip(sounds, _layout(rng, lengths, clip_s, 0.4))]
    j = int(rng.integers(0, len(words)))
    s, e = spans[j]
    at = round((s + e) / 2, 1)
    at = at if s + 0.03 <= at <= e - 0.03 else S.on_grid((s + e) / 2)
    choices = _choices(rng, words[j], [w for w in words if w != words[j]], list(WORDS))
    thought = f"Around {_t(at)} s a single word is spoken. Listening to it again {seg(s, e)}, the word is \"{words[j]}\"."
    return Task(wave, f"Which word is spoken at {_t(at)} s?", choices, words[j], [(s, e)], thought)


def voice_change(rng: np.random.Generator, d: Difficulty) -> Task:
    m = 5 + d.distractors // 2
    words = [WORDS[i] for i in rng.choice(len(WORDS), size=m, replace=False)]
    change = int(rng.integers(2, m - 1))  # words[change:] are in the second voice
    male, female = [v for v in VOICES if "+m" in v], [v for v in VOICES if "+f" in v]
    group_a = (male, female)[int(rng.integers(0, 2))]
    group_b = (female if group_a is male else male) if d.voice_contrast else group_a
    voice_a = group_a[int(rng.integers(0, len(group_a)))]
    voice_b = [v for v in group_b if v != voice_a][int(rng.integers(0, len(group_b) - (group_b is group_a)))]
    speed = int(rng.integers(150, 176))
    sounds = [speak(w, voice_a if i < change else voice_b, speed) for i, w in enumerate(words)]
    lengths = [s.shape[0] / S.SAMPLING_RATE for s in sounds]
    clip_s = _clip_len(rng, d, need_s=sum(lengths) + 0.3 * m + 0.4)
    wave = np.zeros(S.n_samples(clip_s), dtype=np.float32)
    spans = [S.place(wave, snd, o) for snd, o in zip(sounds, _layout(rng, lengths, clip_s, 0.3))]
    before, after = words[change - 1], words[change]
    others = [w for i, w in enumerate(words) if i not in (change - 1, change)]
    choices = _choices(rng, before, [after] + [others[i] for i in rng.permutation(len(others))], [])
    thought = (  # each of the two words where it is, not one span around both and the pause between
        f"The words come one after another. Listening again to the two around the change, \"{before}\" "
        f"{seg(*spans[change - 1])} is still in the first voice and \"{after}\" {seg(*spans[change])} is in a "
        f"different voice, so \"{before}\" is the last word before it."
    )
    question = "The voice changes partway through this list of words. What is the last word spoken before the change?"
    return Task(wave, question, choices, before, [spans[change - 1], spans[change]], thought)


FAMILIES = {  # name -> (function, needs espeak-ng)
    "beep_count": (beep_count, False),
    "pitch_at": (pitch_at, False),
    "event_order": (event_order, False),
    "loudest_burst": (loudest_burst, False),
    "silence_gap": (silence_gap, False),
    "spoken_word": (spoken_word, True),
    "voice_change": (voice_change, True),
}
