"""Synthetic audio questions with exact answers, written as wavs plus EAQA JSONL (``echo data synth``).

Item ``i`` of seed ``s`` draws only from ``np.random.default_rng([s, i])``, so a dataset is reproducible and its
first ``k`` items do not depend on ``n``. Families rotate (``i % len(families)``) and so do difficulty levels
(``i // len(families)``), so every family meets every level. Each item's reference chain of thought cites its
ground-truth spans as ``<seg>a, b</seg>`` and ends in ``<answer>``; before anything is written, each item is checked:
spans inside the clip, answer among the choices, and — by the official MMAU/MMAR token rule — the answer's text
scores correct while every other choice's text scores wrong (so the benchmark can be scored the official way).
"""

from __future__ import annotations

import json
import os
import re
import warnings
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Iterator

import numpy as np

from ..durable import atomic_dir, recover_dir
from ..errors import ConfigError
from ..protocol import SEG_BLOCK, format_cot, format_marks_span, on_marks, read_span
from . import signals
from .audit import LeakWarning, audit
from .formats import DataFormatError, format_direct, write_eaqa
from .item import QuestionItem
from .speech import SpeechUnavailable, have_espeak
from .scene_tasks import SCENE_DIFFICULTIES, SCENE_FAMILIES, dataset_manifest, make_scene_task
from .sounds import CORE, SOURCES, SPLITS, find_library
from .tasks import DIFFICULTIES, FAMILIES, Difficulty, Draw

ALL_FAMILIES = {**FAMILIES, **SCENE_FAMILIES}  # the scene families need recorded sounds (``sounds``)
TARGET_FORMATS = ("cot", "direct")  # SynthConfig.format

JSONL_NAME = "synthetic.jsonl"
PARTIAL_NAME = "synthetic.partial.jsonl"  # records of the items written so far, while a run is unfinished
MANIFEST_NAME = "manifest.json"
AUDIO_DIR = "audio"


@dataclass(frozen=True, slots=True)
class SynthConfig:
    """What to generate.

    Attributes:
        n: number of items.
        seed: fixes every item.
        families: task families (``tasks.FAMILIES``); None means all, minus the speech ones when espeak-ng is absent.
        difficulties: levels to rotate through (``easy``, ``medium``, ``hard``).
        clip_s: override the levels' clip-length range ``(min_s, max_s)``.
        distractors: override the levels' number of distractor events.
        snr_db: override the levels' background-noise SNR (dB); use ``clean=True`` for no noise at all.
        clean: no background noise at any level.
        split: ``train``/``val``/``test``: its own seed stream, and scene families draw only that split's recordings;
            None: no split (the seed stream of earlier versions, every recording).
        sources: where the recorded sounds' packages are (see ``sounds``); None: where they install by default.
        sounds: the recorded-sound sources scene families draw from (``sounds.SOURCES`` keys); None: the four
            core ones (``sounds.CORE``: the items of earlier versions).
        held_out_classes: scene families split event sounds by *class* (label), not by recording
            (``sounds.class_split``): no sound class of the test split occurs in train (echo's own sounds included);
            speech and music beds stay split by recording.
        format: each item's target: ``cot``, the reference chain of thought citing the spans then the answer;
            ``direct``, the answer alone (``<answer>X</answer>``). The items are the same either way.
        span_grid_s: 0, or the time marks' spacing (a multiple of 0.1 s) of the model to be trained: the reference
            chain of thought cites each ground-truth span widened to the marks around it, written as the marks write
            times (``protocol.on_marks``), so its digits are read off the input rather than counted in audio rows,
            and a re-listen of it holds the whole sound (sounds closer together than the grid share a span). ``spans``
            are then those cited spans; the exact ones stay in ``meta["exact_spans"]``. Questions, choices and answers
            are unchanged.
    """

    n: int
    seed: int = 0
    families: tuple[str, ...] | None = None
    difficulties: tuple[str, ...] = ("easy", "medium", "hard")
    clip_s: tuple[float, float] | None = None
    distractors: int | None = None
    snr_db: float | None = None
    clean: bool = False
    split: str | None = None
    sources: str | None = None
    sounds: tuple[str, ...] | None = None
    held_out_classes: bool = False
    format: str = "cot"
    span_grid_s: float = 0.0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        unknown = [f for f in self.families or () if f not in ALL_FAMILIES]
        if unknown:
            raise ConfigError(f"unknown task families {unknown}; known: {', '.join(ALL_FAMILIES)}")
        if self.split is not None and self.split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        bad = [d for d in self.difficulties if d not in DIFFICULTIES]
        if bad or not self.difficulties:
            raise ConfigError(f"difficulties must be a non-empty subset of {list(DIFFICULTIES)}, got {self.difficulties}")
        if self.clip_s is not None and not 2.0 <= self.clip_s[0] <= self.clip_s[1] <= 600.0:
            raise ConfigError(f"clip_s must be (min_s, max_s) with 2 <= min_s <= max_s <= 600, got {self.clip_s}")
        unknown = [k for k in self.sounds or () if k not in SOURCES]
        if unknown or self.sounds == ():
            raise ConfigError(f"unknown sound sources {unknown or '(none)'}; known: {', '.join(SOURCES)}")
        if self.format not in TARGET_FORMATS:
            raise ConfigError(f"format must be one of {', '.join(TARGET_FORMATS)}, got {self.format!r}")
        if self.distractors is not None and not 0 <= self.distractors <= 8:
            raise ConfigError(f"distractors must be in [0, 8], got {self.distractors}")
        tenths = self.span_grid_s * 10
        if not (self.span_grid_s == 0 or (0.1 <= self.span_grid_s <= 10 and abs(tenths - round(tenths)) < 1e-6)):
            raise ConfigError(f"span_grid_s must be 0 (exact spans) or a multiple of 0.1 s in [0.1, 10] (the time "
                              f"marks are written to 0.1 s), got {self.span_grid_s}")

    def resolved_families(self) -> tuple[str, ...]:
        """The families to generate; raises if a requested one needs espeak-ng or recorded sounds that are missing."""
        if self.families is None:
            return tuple(f for f, (_, speech) in FAMILIES.items() if have_espeak() or not speech)
        missing = [f for f in self.families if ALL_FAMILIES[f][1] and not have_espeak()]
        if missing:
            raise SpeechUnavailable(f"families {missing} need the espeak-ng program (apt-get install espeak-ng)")
        if any(f in SCENE_FAMILIES for f in self.families):
            find_library(self.sources).require(self.sound_sources)
        return tuple(self.families)

    @property
    def sound_sources(self) -> tuple[str, ...]:
        return CORE if self.sounds is None else tuple(self.sounds)

    def level(self, name: str, table: dict[str, Difficulty] = DIFFICULTIES) -> Difficulty:
        d = table[name]
        if self.clip_s is not None:
            d = replace(d, clip_s=tuple(self.clip_s))
        if self.distractors is not None:
            d = replace(d, distractors=self.distractors)
        if self.clean:
            d = replace(d, snr_db=None)
        elif self.snr_db is not None:
            d = replace(d, snr_db=self.snr_db)
        return d


@dataclass(slots=True)
class SynthItem:
    record: QuestionItem
    wave: np.ndarray = field(repr=False)  # float32, 16 kHz mono, what goes into the wav


def make_item(config: SynthConfig, index: int, families: tuple[str, ...] | None = None) -> SynthItem:
    """Item ``index`` of the dataset ``config`` describes (independent of ``config.n``)."""
    families = families or config.resolved_families()
    family = families[index % len(families)]
    level = config.difficulties[(index // len(families)) % len(config.difficulties)]
    split_code = [] if config.split is None else [SPLITS.index(config.split) + 1]
    rng = np.random.default_rng([config.seed, *split_code, index])
    draw = balanced_draw(config, index, families)
    if family in SCENE_FAMILIES:
        d = config.level(level, SCENE_DIFFICULTIES)
        task = make_scene_task(family, rng, d, config.split, config.sources, draw, sounds=config.sound_sources,
                               by_class=config.held_out_classes)
    else:
        d = config.level(level)
        task = FAMILIES[family][0](rng, d, draw=draw) if family in TONE_DRAWS else FAMILIES[family][0](rng, d)
    wave = signals.finish(signals.add_noise(rng, task.wave, d.snr_db))
    rid = item_id(config, index, families)
    choices = list(task.choices)
    if family not in ORDERED_CHOICES:
        choices = place_answer(choices, task.answer, draw("answer position", len(choices)))
    spans = [[float(a), float(b)] for a, b in task.spans]
    duration_s = wave.shape[0] / signals.SAMPLING_RATE
    thought, meta = task.thought, getattr(task, "meta", {})
    if config.span_grid_s:  # the reasoning cites the widened spans, and the record's spans are what it cites
        meta = {**meta, "exact_spans": spans}
        thought = cite_on_marks(thought, config.span_grid_s, duration_s)
        spans = [list(on_marks(a, b, config.span_grid_s, duration_s)) for a, b in spans]
    record = QuestionItem(
        id=rid,
        audio=f"{AUDIO_DIR}/{rid}.wav",
        question=task.question,
        choices=choices,
        answer=task.answer,
        cot=format_cot(thought, task.answer) if config.format == "cot" else format_direct(task.answer),
        spans=spans,
        task=family,
        difficulty=level,
        duration_s=duration_s,
        meta=meta,
    )
    _check_scorable(record)
    return SynthItem(record=record, wave=wave)


def cite_on_marks(thought: str, every_s: float, clip_s: float) -> str:
    """``thought`` with each ``<seg>`` span it cites widened to the time marks around it (``protocol.on_marks``)."""
    def widen(m: re.Match) -> str:
        span, reason = read_span(m.group(1))
        if span is None:  # a family writes only spans it computed; anything else is a bug there
            raise DataFormatError(f"reasoning cites a malformed span <seg>{m.group(1)}</seg> ({reason})")
        return format_marks_span(*on_marks(*span, every_s, clip_s))

    return SEG_BLOCK.sub(widen, thought)


ORDERED_CHOICES = {"loudest_burst", "silence_gap"}  # choices listed in order ("the first burst", ...), kept so
TONE_DRAWS = {"beep_count", "event_order"}  # the tone families whose outcome is a balanced draw


def balanced_draw(config: SynthConfig, index: int, families: tuple[str, ...]) -> Draw:
    """Item ``index``'s balanced draws (``tasks.Draw``): for each ``what`` (the answer's position, a family's
    outcome) a family's items take the values ``0..k-1`` in blocks of ``k`` consecutive items, one permutation per
    block, so each value comes up exactly as often as the others (not just on average) yet is unpredictable within a
    block. Each ``what`` has a stream of its own, so the draws are independent of each other and of the item."""
    family, occurrence = index % len(families), index // len(families)
    split_code = [] if config.split is None else [SPLITS.index(config.split) + 1]

    def draw(what: str, k: int) -> int:
        stream = zlib.crc32(what.encode())
        rng = np.random.default_rng([config.seed, *split_code, stream, family, occurrence // k])
        return int(rng.permutation(k)[occurrence % k])

    return draw


def place_answer(choices: list[str], answer: str, slot: int) -> list[str]:
    """``choices`` with ``answer`` moved to position ``slot`` (the others keep their order)."""
    others = [c for c in choices if c != answer]
    return others[:slot] + [answer] + others[slot:]


def generate(config: SynthConfig) -> Iterator[SynthItem]:
    """Items ``0 .. n-1`` in order."""
    families = config.resolved_families()
    for index in range(config.n):
        yield make_item(config, index, families)


SWAP_TAG = "synth-"  # --overwrite builds beside --out in OUT.synth-tmp, then swaps through OUT.synth-new / -old


def write_synthetic(config: SynthConfig, out_dir: str | os.PathLike, *, progress: bool = False,
                    overwrite: bool = False) -> str:
    """Generate the dataset into ``out_dir``: ``audio/<id>.wav`` (16-bit PCM, 16 kHz mono), ``synthetic.jsonl``
    (checked: durations against the written wavs, spans inside them) and ``manifest.json`` (the config).

    Returns the JSONL path. Resumable by item: ``manifest.json`` is written first; each wav lands under its final
    name in one rename and its record is then appended (fsync'd) to ``synthetic.partial.jsonl``, so a rerun of the
    same config after a kill skips the items already written; ``synthetic.jsonl`` appears only once all are. An
    ``out_dir`` holding anything else (another config, or files that are not an echo dataset) is refused, or with
    ``overwrite`` replaced whole: the new dataset is built beside it and swapped in, so a kill never mixes the two.
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir} is a file, not a directory")
    manifest = {"config": json.loads(json.dumps(asdict(config))), "families": list(config.resolved_families())}
    recover_dir(out_dir, SWAP_TAG)  # an --overwrite swap a kill interrupted: finished or undone, no copy left over
    if overwrite and os.path.isdir(out_dir) and os.listdir(out_dir):
        with atomic_dir(out_dir, SWAP_TAG) as fresh:
            _write_resumable(config, manifest, os.fspath(fresh), progress)
        return os.path.join(out_dir, JSONL_NAME)
    _check_resumable(out_dir, manifest)
    return _write_resumable(config, manifest, out_dir, progress)


def _check_resumable(out_dir: str, manifest: dict) -> None:
    """Refuse a non-empty ``out_dir`` that is not a (possibly unfinished) dataset of this very config."""
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return
    path = os.path.join(out_dir, MANIFEST_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"{out_dir} is not empty and holds no echo synthetic dataset (no readable "
                          f"{MANIFEST_NAME}); choose another --out, or pass --overwrite to replace it") from None
    defaults = {f.name: f.default for f in fields(SynthConfig)}  # a field added since: its default is what was made
    old = {**{k: v for k, v in manifest["config"].items() if k not in saved.get("config", {}) and v == defaults[k]},
           **saved.get("config", {}), "families": saved.get("families")}
    new = {**manifest["config"], "families": manifest["families"]}
    diff = [f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(f"{out_dir} holds a synthetic dataset of another config: {'; '.join(diff)}; rerun with "
                          "its config to resume or keep it, choose another --out, or pass --overwrite to replace it")


def _write_resumable(config: SynthConfig, manifest: dict, out_dir: str, progress: bool) -> str:
    import soundfile as sf

    from ..durable import append_row, drop_partial_line, read_jsonl, write_atomic

    os.makedirs(os.path.join(out_dir, AUDIO_DIR), exist_ok=True)
    path, partial = os.path.join(out_dir, JSONL_NAME), os.path.join(out_dir, PARTIAL_NAME)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    if os.path.isfile(path) and not os.path.isfile(partial) and os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            if json.load(f).get("count") == config.n:
                return path  # already complete: nothing to redo
    write_atomic(manifest_path, json.dumps({**manifest, "count": None}, indent=2))  # before any item
    drop_partial_line(partial)
    done = {r["id"]: QuestionItem.from_row(r) for r in read_jsonl(partial) if "id" in r}
    families = tuple(manifest["families"])
    indices = range(config.n)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, total=config.n, desc="synth", unit="item")
    records = []
    with open(partial, "a", encoding="utf-8") as log:
        for index in indices:
            rid = item_id(config, index, families)
            rec = done.get(rid)
            if rec is None or not os.path.isfile(os.path.join(out_dir, rec.audio)):
                item = make_item(config, index, families)
                wav = os.path.join(out_dir, item.record.audio)
                sf.write(wav + ".tmp.wav", item.wave, signals.SAMPLING_RATE, subtype="PCM_16")
                os.replace(wav + ".tmp.wav", wav)  # a wav is whole under its final name, or absent
                rec = item.record
                append_row(log, rec.to_json())
            records.append(rec)
    write_eaqa(path, records, check_audio=True)
    report = audit(records)  # this split alone: cross-validated within it
    final = {**manifest, "count": len(records), **dataset_manifest(records, config.sources, config.held_out_classes),
             "audit": report.as_dict()}
    write_atomic(manifest_path, json.dumps(final, indent=2))
    os.remove(partial)
    if report.warning():
        warnings.warn(f"{out_dir}: {report.warning()} (`echo data audit` has the table)", LeakWarning, stacklevel=2)
    return path


def item_id(config: SynthConfig, index: int, families: tuple[str, ...]) -> str:
    split = f"{config.split}-" if config.split else ""
    return f"synth-s{config.seed}-{split}{index:06d}-{families[index % len(families)]}"


def _check_scorable(record: QuestionItem) -> None:
    """The official token rule must tell this item's choices apart; a family that breaks this is a bug here."""
    from ..answers import string_match

    wrong_ok = [c for c in record.choices if c != record.answer and string_match(record.answer, c, record.choices)]
    if not string_match(record.answer, record.answer, record.choices) or wrong_ok:
        raise DataFormatError(
            f"{record.id}: choices {record.choices} cannot be told apart by the official scoring rule "
            f"(answer {record.answer!r})"
        )
