"""Question families over scenes of recorded sounds (10-30 s clips), in the style of AudioSet-Strong questions.

Each family is ``fn(rng, d, pool) -> SceneTask``: it picks sounds from the pool (the recordings of one split plus
echo's synthesised events), mixes them at known times (:mod:`scenes`), and asks about a detail at a time: what is
heard between a and b, which comes first, how many times, what is said at t, when something starts, which lasts
longer, which of four sounds is heard, and when a named sound is heard (grounding: the answer is its span). The reasoning cites the ground-truth spans as ``<seg>a, b</seg>``; the item's
``meta`` lists every event (recording, onset, end, gain) and the music bed, so any answer can be re-derived.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..answers import word_tokens
from ..protocol import format_span as seg
from . import scenes
from . import signals as S
from .formats import DataFormatError
from .sounds import CORE, SPLITS, Library, Recording, class_split, find_library, load
from .sounds import manifest as sounds_manifest
from .speech import speak
from .tasks import WORDS, Difficulty, Draw, Task, _clip_len, _t, uniform_draw

# The scene levels: longer clips, more distractor sounds, a music bed and noise as the level rises.
SCENE_DIFFICULTIES = {
    "easy": Difficulty("easy", (10.0, 15.0), 2, None, 0.0, 0, 0.8, True),
    "medium": Difficulty("medium", (15.0, 22.0), 4, 20.0, 0.0, 0, 0.5, True),
    "hard": Difficulty("hard", (22.0, 30.0), 6, 10.0, 0.0, 0, 0.3, True),
}
MUSIC_DB = {"easy": None, "medium": -24.0, "hard": -16.0}  # music bed below the events' peak
EVENT_S = (1.0, 3.0)  # how much of a recorded event is played
COUNT_S = (0.5, 1.2)  # shorter excerpts when one sound repeats
MAX_PAUSE_S = 0.15  # a sound to count or time must be one burst: no longer pause inside it


@dataclass(slots=True)
class SceneTask(Task):
    meta: dict = field(default_factory=dict)


@dataclass
class Pool:
    """What one item may draw from: the split's recordings and the level's knobs."""

    events: list[Recording]
    speech: list[Recording]
    music: list[Recording]
    split: str | None
    level: str
    by_class: bool = False  # whole event classes per split (echo's own sounds too), not recordings

    @classmethod
    def of(cls, library: Library, split: str | None, level: str, sources=CORE, by_class: bool = False) -> "Pool":
        return cls(*(library.pick(split, kind, sources, by_class) for kind in ("event", "speech", "music")),
                   split, level, by_class)

    def own(self, sound: scenes.Sound) -> bool:
        """Whether one of echo's synthesised sounds may play in this split (all of them, unless classes are split)."""
        return not self.by_class or self.split is None or class_split(sound.label) == self.split

    def synthesised(self, rng: np.random.Generator) -> list[scenes.Sound]:
        return [s for s in scenes.synthesised(rng) if self.own(s)]  # drawn in full: the same rng use either way


def _pick(rng: np.random.Generator, items: list, k: int) -> list:
    return [items[i] for i in rng.choice(len(items), size=min(k, len(items)), replace=False)]


def _draw_events(rng: np.random.Generator, pool: Pool, k: int, exclude: set[str] = frozenset(),
                 length_s: tuple[float, float] = EVENT_S) -> list[scenes.Sound]:
    """``k`` event sounds with distinct names (not in ``exclude``): recorded ones from the split and echo's own."""
    options: list = [r for r in pool.events if r.name not in exclude]
    options += [s for s in pool.synthesised(rng) if s.name not in exclude]
    picked = _pick(rng, options, k)
    names = [p.name for p in picked]
    if len(set(names)) < len(names):  # two sources' recordings of one sound (a bell): each name once
        rest = [o for o in options if o.name not in names]
        keep = [p for i, p in enumerate(picked) if p.name not in names[:i]]
        for o in _pick(rng, rest, len(rest)):
            if len(keep) < len(picked) and all(o.name != p.name for p in keep):
                keep.append(o)
        picked = keep
    out = []
    for item in picked:
        out.append(scenes.recorded(item, round(float(rng.uniform(*length_s)), 1)) if isinstance(item, Recording)
                   else item)
    return out


def _split_labels(pool: Pool) -> list[str]:
    """The labels of every event sound this split's items can play: its recordings and echo's own. Distractor
    choices come from here only, so each label is offered about as often as it is the answer (a label from another
    split or source would be offered and never be right: a guesser would learn to avoid it)."""
    return list(dict.fromkeys([r.label for r in pool.events] + [s.label for s in _own_echo_sounds(pool)]))


def _own_echo_sounds(pool: Pool) -> list[scenes.Sound]:
    return [s for s in scenes.synthesised(np.random.default_rng(0)) if pool.own(s)]  # labels only: any rng


def _choices(rng: np.random.Generator, answer: str, preferred: list[str], pool: list[str], k: int = 4) -> list[str]:
    """``answer`` plus distractors whose word tokens differ from every other choice's (so the official scoring rule
    tells them apart), ``preferred`` first; shuffled."""
    out, seen = [answer], [word_tokens(answer)]
    for group in (preferred, pool):
        for i in rng.permutation(len(group)) if group else []:
            c, tokens = str(group[i]), word_tokens(group[i])
            if len(out) < k and tokens and tokens not in seen:
                out.append(c)
                seen.append(tokens)
    return [out[i] for i in rng.permutation(len(out))]


def _scene(rng: np.random.Generator, d: Difficulty, pool: Pool, sounds: list[scenes.Sound],
           music_db: float | None = None, room_s: float = 0.0):
    """Mix ``sounds`` (already in clip order) into a clip of the level's length (at least ``room_s`` longer than
    they need), with the level's music bed (or one ``music_db`` below the events' peak)."""
    need = sum(_seconds(s) for s in sounds) + d.gap_s * (len(sounds) - 1) + 0.5 + room_s
    clip_s = _clip_len(rng, d, need_s=need)
    gains_db = [float(rng.uniform(-6.0, 0.0)) for _ in sounds]  # each sound's level, kept in the item's meta
    wave, events = scenes.mix(rng, sounds, clip_s, d.gap_s, gains_db)
    meta: dict = {"split": pool.split, "events": [e.to_json() for e in events]}
    level_db = MUSIC_DB.get(pool.level) if music_db is None else music_db
    if level_db is not None and pool.music:
        track = pool.music[int(rng.integers(0, len(pool.music)))]
        bed = scenes.add_music(rng, wave, load(track), level_db)
        meta["background"] = {"recording": track.id, "source": track.source, **bed}
    return wave, events, meta


def _seconds(entry) -> float:
    """A mix entry's length: one sound, or a tuple of sounds that start together."""
    return max(s.seconds for s in entry) if isinstance(entry, tuple) else entry.seconds


def _shuffle(rng: np.random.Generator, sounds: list) -> list:
    return [sounds[i] for i in rng.permutation(len(sounds))]


def _speech_distractor(rng: np.random.Generator, pool: Pool, d: Difficulty) -> list[scenes.Sound]:
    """One spoken prompt among the events from the medium level up (so speech is not always the answer)."""
    if d.distractors < 3 or not pool.speech:
        return []
    rec = pool.speech[int(rng.integers(0, len(pool.speech)))]
    return [scenes.Sound(load(rec), "speech", "a woman speaking", "speech", rec.id, rec.source)]


def heard_between(rng: np.random.Generator, d: Difficulty, pool: Pool) -> SceneTask:
    order = _shuffle(rng, [*_draw_events(rng, pool, 1 + d.distractors), *_speech_distractor(rng, pool, d)])
    wave, events, meta = _scene(rng, d, pool, order)
    j = int(rng.integers(0, len(events)))  # any sound of the clip, the speech too: every offered label can be right
    ev = events[j]
    prev_end = events[j - 1].end if j > 0 else 0.0
    next_start = events[j + 1].start if j + 1 < len(events) else wave.shape[0] / S.SAMPLING_RATE
    a = max(np.floor((ev.start - float(rng.uniform(0.0, 1.0))) * 10) / 10, np.ceil(prev_end * 10) / 10)
    b = min(np.ceil((ev.end + float(rng.uniform(0.0, 1.0))) * 10) / 10, np.floor(next_start * 10) / 10)
    a, b = (round(float(a), 1) if a <= ev.start else ev.start), (round(float(b), 1) if b >= ev.end else ev.end)
    heard_elsewhere = [e.label for e in events if e.label != ev.label]
    choices = _choices(rng, ev.label, heard_elsewhere, _split_labels(pool))
    thought = (
        f"I need what plays between {_t(a)} s and {_t(b)} s. Listening to that part again {seg(ev.start, ev.end)}, "
        f"from {_t(ev.start)} to {_t(ev.end)} s I hear {ev.label}; the other sounds of the clip come outside that window."
    )
    return SceneTask(wave, f"What is heard between {_t(a)} s and {_t(b)} s?", choices, ev.label,
                     [(ev.start, ev.end)], thought, meta)


WHICH_FIRST = ("x first", "y first", "same time", "neither")
NEITHER = "neither of them is heard"  # a real answer of the two-sound families: neither named sound is mixed in


def _neither_thought(events: list[scenes.Event], x: scenes.Sound, y: scenes.Sound) -> str:
    """The reasoning of a "neither" item: it cites every sound that does play."""
    cited = ", ".join(f"{e.label} {seg(e.start, e.end)}" for e in events)
    return f"Listening through the clip, I hear {cited}. Neither the {x.name} nor the {y.name} is among them."


def which_first(rng: np.random.Generator, d: Difficulty, pool: Pool, draw: Draw | None = None) -> SceneTask:
    """Which of two named sounds starts first; in a quarter of the items each, they start together or neither plays
    (so those two choices are right as often as the sounds are, and the question's order says nothing)."""
    outcome = WHICH_FIRST[(draw or uniform_draw(rng))("outcome", len(WHICH_FIRST))]
    x, y, *others = _draw_events(rng, pool, 2 + max(1, d.distractors))
    others = others[: d.distractors] if outcome != "neither" else others
    speech = _speech_distractor(rng, pool, d)
    if outcome == "neither":
        order = _shuffle(rng, [*others, *speech])
    elif outcome == "same time":
        order = _shuffle(rng, [(x, y), *others, *speech])
    else:
        order = _shuffle(rng, [x, y, *others, *speech])
        ix, iy = (next(i for i, snd in enumerate(order) if snd is s) for s in (x, y))
        if (ix < iy) != (outcome == "x first"):
            order[ix], order[iy] = y, x
    wave, events, meta = _scene(rng, d, pool, order)
    same_time = "they start at the same time"
    if outcome == "neither":
        answer, heard, thought = NEITHER, list(events), _neither_thought(events, x, y)
    else:
        ex, ey = (next(e for e in events if e.recording == s.recording) for s in (x, y))
        heard = sorted((ex, ey), key=lambda e: (e.start, e.recording != x.recording))
        first, second = heard
        answer = same_time if outcome == "same time" else f"the {first.name}"
        when = (f"Both start at {_t(first.start)} s." if outcome == "same time" else
                f"The {first.name} starts at {_t(first.start)} s, before the {second.name} at {_t(second.start)} s.")
        thought = (f"The {first.name} plays here {seg(first.start, first.end)} and the {second.name} here "
                   f"{seg(second.start, second.end)}. {when}")
    choices = _choices(rng, answer, [f"the {x.name}", f"the {y.name}", same_time, NEITHER], [])
    return SceneTask(wave, f"Which comes first: the {x.name} or the {y.name}?", choices, answer,
                     [(e.start, e.end) for e in heard], thought, meta)


def count(rng: np.random.Generator, d: Difficulty, pool: Pool, draw: Draw | None = None) -> SceneTask:
    # The choices are four consecutive counts and the answer is any of them with equal odds, so neither the offered
    # values nor the answer's rank among them says anything.
    low = int(rng.integers(1, 2 if pool.level == "easy" else 3))
    k = low + (draw or uniform_draw(rng))("count", 4)
    for _ in range(50):  # one burst, so each placement is one occurrence to count (echo's sounds always are)
        (target,) = _draw_events(rng, pool, 1, length_s=COUNT_S)
        if scenes.longest_pause_s(target.wave) <= MAX_PAUSE_S:
            break
    else:
        own = pool.synthesised(rng)  # echo's sounds are single bursts; the high beep unless classes are split
        target = next((s for s in own if s.name == "high beep"), own[0] if own else target)
    others = _draw_events(rng, pool, d.distractors, exclude={target.name})
    order = _shuffle(rng, [target] * k + others + _speech_distractor(rng, pool, d))
    wave, events, meta = _scene(rng, d, pool, order)
    spans = [(e.start, e.end) for e in events if e.recording == target.recording]
    answer = str(k)
    choices = _choices(rng, answer, [str(n) for n in range(low, low + 4) if n != k], [])
    cited = ", ".join(seg(*s) for s in spans)
    thought = (
        f"I listen for every {target.name} sound in the clip: {cited}. "
        f"That is {k} time{'s' if k > 1 else ''}; the other sounds are different."
    )
    return SceneTask(wave, f"How many times is the {target.name} heard in the clip?", choices, answer, spans,
                     thought, meta)


def said_at(rng: np.random.Generator, d: Difficulty, pool: Pool) -> SceneTask:
    n_speech = 2 + d.distractors // 2
    prompts: list[Recording] = []
    for r in _pick(rng, pool.speech, 4 * n_speech):  # distinct transcripts, so the question has one answer
        if len(prompts) < n_speech and all(word_tokens(r.label) != word_tokens(p.label) for p in prompts):
            prompts.append(r)
    spoken = [scenes.Sound(load(r), r.name, r.label, "speech", r.id, r.source) for r in prompts]
    if d.distractors >= 3:  # a second, synthetic voice saying one word
        word = WORDS[int(rng.integers(0, len(WORDS)))]
        spoken.append(scenes.Sound(speak(word, "en+m3", 160, 50), f"espeak-{word}", word, "speech",
                                   f"espeak/{word}", "espeak"))
    others = _draw_events(rng, pool, max(1, d.distractors // 2))
    order = _shuffle(rng, spoken + others)
    wave, events, meta = _scene(rng, d, pool, order)
    ev = [e for e in events if e.kind == "speech"][int(rng.integers(0, len(spoken)))]  # the espeak word too
    at = round((ev.start + ev.end) / 2, 1)
    at = at if ev.start + 0.03 <= at <= ev.end - 0.03 else S.on_grid((ev.start + ev.end) / 2)
    said_elsewhere = [e.label for e in events if e.kind == "speech" and e.recording != ev.recording]
    choices = _choices(rng, ev.label, said_elsewhere, [r.label for r in pool.speech])
    thought = (
        f"Someone is speaking at {_t(at)} s. Listening to that phrase again {seg(ev.start, ev.end)}, "
        f"the words are \"{ev.label}\"."
    )
    return SceneTask(wave, f"What is said at {_t(at)} s?", choices, ev.label, [(ev.start, ev.end)], thought, meta)


def starts_when(rng: np.random.Generator, d: Difficulty, pool: Pool) -> SceneTask:
    target, *others = _draw_events(rng, pool, 1 + d.distractors)
    wave, events, meta = _scene(rng, d, pool, _shuffle(rng, [target, *others, *_speech_distractor(rng, pool, d)]))
    ev = next(e for e in events if e.recording == target.recording)
    answer = f"at {_t(ev.start)} s"
    clip_s = wave.shape[0] / S.SAMPLING_RATE
    # Every offered time is at least 1 s from every other (not only from the answer), so the answer is not the one
    # time set apart from the rest.
    times = [ev.start]
    candidates = [events[i].start for i in rng.permutation(len(events))]
    candidates += [S.on_grid(t) for t in rng.uniform(0.2, clip_s - 0.5, size=24)]
    for t in candidates:
        if len(times) < 4 and all(abs(t - u) >= 1.0 for u in times):
            times.append(t)
    choices = _choices(rng, answer, [f"at {_t(t)} s" for t in times[1:]], [])
    thought = (
        f"The {target.name} plays here {seg(ev.start, ev.end)}: it begins at {_t(ev.start)} s and lasts until "
        f"{_t(ev.end)} s."
    )
    return SceneTask(wave, f"When does the {target.name} start?", choices, answer, [(ev.start, ev.end)], thought, meta)


LONGER = ("x longer", "y longer", "equally long", "neither")


def longer(rng: np.random.Generator, d: Difficulty, pool: Pool, draw: Draw | None = None) -> SceneTask:
    """Which of two named sounds lasts longer. Which one is longer is drawn, not taken from the recordings' natural
    lengths (both are cut from recordings at least as long as the longer cut), so a sound's name says nothing; in a
    quarter of the items each, they last equally long or neither plays."""
    outcome = LONGER[(draw or uniform_draw(rng))("outcome", len(LONGER))]
    ratio = {"easy": 2.0, "medium": 1.6, "hard": 1.3}.get(pool.level, 1.6)
    for _ in range(50):  # two sounds long enough for the level's length ratio, each continuous when cut
        x, y = (_stretched(rng, s) for s in _draw_events(rng, pool, 2, length_s=(3.0, 3.0)))
        room_s = min(x.seconds, y.seconds)
        short_s = S.on_grid(float(rng.uniform(0.4, max(0.4, room_s / ratio))))
        if short_s * ratio + S.GRID_S > room_s:
            continue  # the same test for every outcome, so which sounds are named says nothing about the outcome
        long_s = S.on_grid(float(rng.uniform(short_s * ratio + S.GRID_S, room_s)))
        if outcome == "equally long":
            lx = ly = (short_s, long_s)[int(rng.integers(0, 2))]
        else:
            lx, ly = (long_s, short_s) if outcome == "x longer" else (short_s, long_s)
        if max(scenes.longest_pause_s(_cut(x.wave, lx)), scenes.longest_pause_s(_cut(y.wave, ly))) <= MAX_PAUSE_S:
            break  # both continuous, so "how long it lasts" is the span's length
    else:
        raise ValueError(f"no two sounds in the {pool.split} pool are long enough for a {ratio}x comparison")
    x = scenes.Sound(_cut(x.wave, lx), x.name, x.label, x.kind, x.recording, x.source)
    y = scenes.Sound(_cut(y.wave, ly), y.name, y.label, y.kind, y.recording, y.source)
    others = _draw_events(rng, pool, max(1, d.distractors) if outcome == "neither" else d.distractors,
                          exclude={x.name, y.name})
    named = [] if outcome == "neither" else [x, y]
    wave, events, meta = _scene(rng, d, pool, _shuffle(rng, [*named, *others, *_speech_distractor(rng, pool, d)]))
    equal = "they last equally long"
    if outcome == "neither":
        answer, heard, thought = NEITHER, list(events), _neither_thought(events, x, y)
    else:
        ex, ey = (next(e for e in events if e.recording == s.recording) for s in (x, y))
        heard = [ex, ey]
        lng = ex if ex.end - ex.start > ey.end - ey.start else ey
        answer = equal if outcome == "equally long" else f"the {lng.name}"
        verdict = "they last equally long" if outcome == "equally long" else f"the {lng.name} lasts longer"
        thought = (
            f"The {ex.name} plays here {seg(ex.start, ex.end)}, {ex.end - ex.start:.2f} s long, and the {ey.name} "
            f"here {seg(ey.start, ey.end)}, {ey.end - ey.start:.2f} s long, so {verdict}."
        )
    choices = _choices(rng, answer, [f"the {x.name}", f"the {y.name}", equal, NEITHER], [])
    return SceneTask(wave, f"Which sound lasts longer: the {x.name} or the {y.name}?", choices, answer,
                     [(e.start, e.end) for e in heard], thought, meta)


STRETCHABLE = {  # echo's sounds that can be made any length, so a duration comparison never runs out of material
    "low hum": lambda rng, s: S.tone(110.0, s, harmonics=6),
    "noise burst": lambda rng, s: S.noise_burst(rng, s),
    "click train": lambda rng, s: S.click_train(s),
}


def _stretched(rng: np.random.Generator, snd: scenes.Sound, seconds: float = 3.0) -> scenes.Sound:
    if snd.source != "echo" or snd.name not in STRETCHABLE:
        return snd
    return scenes.Sound(STRETCHABLE[snd.name](rng, seconds), snd.name, snd.label, snd.kind, snd.recording, snd.source)


def _cut(wave: np.ndarray, seconds: float) -> np.ndarray:
    n = min(wave.shape[0], S.n_samples(S.on_grid(seconds)))
    out = wave[:n].copy()
    fade = min(n // 4, S.SAMPLING_RATE // 20)
    out[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out


def which_heard(rng: np.random.Generator, d: Difficulty, pool: Pool) -> SceneTask:
    # Three labels of the split must stay unplayed, to be offered (a split of few classes plays fewer sounds).
    target, *others = _draw_events(rng, pool, max(1, min(1 + d.distractors, len(_split_labels(pool)) - 3)))
    wave, events, meta = _scene(rng, d, pool, _shuffle(rng, [target, *others, *_speech_distractor(rng, pool, d)]))
    ev = next(e for e in events if e.recording == target.recording)
    # Absent means not played: a label that only shares a word with a played one ("a rising chirp" beside "a falling
    # chirp") stays a choice, else such labels would be offered less often and be right more often when offered.
    present = {e.label for e in events}
    absent = [lab for lab in _split_labels(pool) if lab not in present]
    choices = _choices(rng, ev.label, absent, [])
    thought = (
        f"Of the four, only {ev.label} is in the clip: it plays here {seg(ev.start, ev.end)}. "
        f"None of the other three is heard anywhere."
    )
    return SceneTask(wave, "Which of these sounds can be heard in the clip?", choices, ev.label,
                     [(ev.start, ev.end)], thought, meta)


WHEN_QUESTIONS = ("When is the {} heard?", "When does the {} play?")


def when(rng: np.random.Generator, d: Difficulty, pool: Pool) -> SceneTask:
    """Grounding: when is a named sound heard? The answer is its span, ``<seg>a, b</seg>`` (scored by IoU, see
    ``answers.prediction_correct``). Easy: the sound alone, in silence or over a music bed; from medium on, a
    mixture with distractor sounds whose spans are offered beside it, so naming where *a* sound is does not do.
    Spans of silence fill the choices up, as long as spans of sounds drawn the same way (so length tells nothing)."""
    alone = pool.level == "easy"
    target, *others = _draw_events(rng, pool, 1 + (0 if alone else d.distractors))
    bed_db = MUSIC_DB["medium"] if alone and rng.random() < 0.5 else None
    order = _shuffle(rng, [target, *others, *([] if alone else _speech_distractor(rng, pool, d))])
    # room for a quiet span as long as the target beside the sounds (a choice; a short --clip-s may lack it)
    wave, events, meta = _scene(rng, d, pool, order, bed_db, room_s=target.seconds + 0.2)
    ev = next(e for e in events if e.recording == target.recording)
    taken = [(e.start, e.end) for e in events]
    quiet: list[tuple[float, float]] = []
    for ghost in _draw_events(rng, pool, 3, exclude={target.name}):  # lengths drawn as the target's was
        seconds = ghost.seconds
        while seconds >= 0.1:  # a short clip may have no room for it: halve it (a record needs >= 2 choices)
            try:
                (onset,) = S.free_slots(rng, 1, [seconds], wave.shape[0] / S.SAMPLING_RATE, 0.1, taken=taken + quiet)
            except ValueError:
                seconds /= 2
                continue
            quiet.append((S.on_grid(onset), S.on_grid(onset + seconds)))
            break
    answer = seg(ev.start, ev.end)
    choices = _choices(rng, answer, [seg(e.start, e.end) for e in events if e is not ev], [seg(*q) for q in quiet])
    question = WHEN_QUESTIONS[int(rng.integers(0, len(WHEN_QUESTIONS)))].format(target.name)
    return SceneTask(wave, question, choices, answer, [(ev.start, ev.end)], f"The {target.name} is heard here {answer}.",
                     meta)


DRAWS = {"scene_which_first", "scene_count", "scene_longer"}  # the families whose outcome is a balanced draw
SCENE_FAMILIES = {  # name -> (function, needs espeak-ng)
    "scene_heard_between": (heard_between, False),
    "scene_which_first": (which_first, False),
    "scene_count": (count, False),
    "scene_said_at": (said_at, True),
    "scene_starts_when": (starts_when, False),
    "scene_longer": (longer, False),
    "scene_which_heard": (which_heard, False),
    "scene_when": (when, False),
}


def make_scene_task(family: str, rng: np.random.Generator, d: Difficulty, split: str | None,
                    sources: str | None, draw: Draw | None = None, *, sounds=CORE,
                    by_class: bool = False) -> SceneTask:
    """One item of a scene family, drawing from ``split``'s recordings under ``sources`` (None: the default places)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    library = find_library(sources)
    library.require(sounds)
    fn, pool = SCENE_FAMILIES[family][0], Pool.of(library, split, d.name, sounds, by_class)
    task = fn(rng, d, pool, draw=draw) if family in DRAWS else fn(rng, d, pool)
    placed = {(e["start"], e["end"]) for e in task.meta["events"]}
    stray = [span for span in task.spans if tuple(span) not in placed]
    if stray:  # every cited span is where a mixed sound lies; anything else is a bug in the family
        raise DataFormatError(f"{family}: cited spans {stray} are not the spans of mixed sounds {sorted(placed)}")
    return task


def dataset_manifest(records, sources: str | None, by_class: bool = False) -> dict:
    """What goes into a dataset's manifest for its scene items: the licences and splits of the recordings used, and
    with ``by_class`` the split of every event class played (``classes``: label -> split)."""
    used = {e["recording"] for r in records for e in r.meta.get("events", [])}
    used |= {r.meta["background"]["recording"] for r in records if "background" in r.meta}
    if not used:
        return {}
    out = sounds_manifest(used, find_library(sources))
    if by_class:
        labels = {e["label"] for r in records for e in r.meta.get("events", []) if e["kind"] == "event"}
        out["classes"] = {label: class_split(label) for label in sorted(labels)}
    return out
