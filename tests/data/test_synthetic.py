"""Synthetic tasks: determinism, the written layout, and that each clip really contains what its answer says."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from echo.data import speech
from echo.data.cli import register
from echo.data.formats import parse_cot, read_eaqa
from echo.data.synthetic import SynthConfig, make_item, write_synthetic
from echo.data.tasks import DIFFICULTIES, NOTES
from echo.errors import ConfigError
from helpers import NON_SPEECH

SR = 16000


def _digest(root) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_deterministic_by_seed(tmp_path):
    cfg = SynthConfig(n=10, seed=5, families=NON_SPEECH)
    write_synthetic(cfg, tmp_path / "a")
    write_synthetic(cfg, tmp_path / "b")
    write_synthetic(SynthConfig(n=10, seed=6, families=NON_SPEECH), tmp_path / "c")
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b and len(a) == 12  # 10 wavs + jsonl + manifest
    assert a["synthetic.jsonl"] != c["synthetic.jsonl"]
    # Item i does not depend on n.
    short = make_item(SynthConfig(n=3, seed=5, families=NON_SPEECH), 2)
    long = make_item(SynthConfig(n=50, seed=5, families=NON_SPEECH), 2)
    assert short.record == long.record and np.array_equal(short.wave, long.wave)


@pytest.mark.parametrize("level", list(DIFFICULTIES))
@pytest.mark.parametrize("family", NON_SPEECH)
def test_every_family_and_level_is_valid(family, level):
    cfg = SynthConfig(n=1, seed=11, families=(family,), difficulties=(level,))
    for index in range(3):
        item = make_item(cfg, index)
        rec = item.record
        assert rec.task == family and rec.difficulty == level
        assert len(rec.choices) == 4 and len(set(rec.choices)) == 4 and rec.answer in rec.choices
        assert rec.duration_s == item.wave.shape[0] / SR
        lo, hi = DIFFICULTIES[level].clip_s
        assert lo - 1e-9 <= rec.duration_s  # a family may lengthen the clip, never shorten it
        assert np.isfinite(item.wave).all() and np.max(np.abs(item.wave)) <= 0.9 + 1e-6
        spans, answer = parse_cot(rec.cot)
        assert spans == rec.spans and answer == rec.answer
        for start, end in rec.spans:
            assert 0 <= start < end <= rec.duration_s
            assert round(start * 100) == pytest.approx(start * 100) and round(end * 100) == pytest.approx(end * 100)


def _clean(family, index=0, seed=1, level="medium"):
    cfg = SynthConfig(n=1, seed=seed, families=(family,), difficulties=(level,), clean=True)
    item = make_item(cfg, index)
    return item.record, item.wave


def _cut(wave, start_s, end_s):
    return wave[int(round(start_s * SR)) : int(round(end_s * SR))]


@pytest.mark.parametrize("index", range(4))
def test_beep_count_window_holds_the_answer(index):
    rec, wave = _clean("beep_count", index)
    a, b = map(float, re.search(r"between ([\d.]+) s and ([\d.]+) s", rec.question).groups())

    def beeps(start_s, end_s):  # each beep is one run of loud samples (bridging the sine's zero crossings)
        runs, last = 0, -10_000
        for i in np.flatnonzero(np.abs(_cut(wave, start_s, end_s)) > 0.05):
            runs, last = runs + (i - last > 32), i
        return runs

    assert beeps(a, b) == int(rec.answer) == len(rec.spans)
    # The reasoning cites each beep inside the window, exactly: one beep per span, nothing just outside it.
    for start, end in rec.spans:
        assert a <= start < end <= b and beeps(start, end) == 1
        assert np.max(np.abs(_cut(wave, start - 0.05, start))) < 1e-6
        assert np.max(np.abs(_cut(wave, end, end + 0.05))) < 1e-6


@pytest.mark.parametrize("index", range(4))
def test_pitch_at_span_has_the_answer_frequency(index):
    rec, wave = _clean("pitch_at", index)
    seg = _cut(wave, *rec.spans[0])
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.shape[0]), n=1 << 17))
    peak_hz = np.argmax(spectrum) * SR / (1 << 17)
    answer_hz = float(re.search(r"\((\d+) Hz\)", rec.answer).group(1))
    assert peak_hz == pytest.approx(answer_hz, rel=0.01)
    assert rec.answer.split(" ")[0] in {name for name, _, _ in NOTES}


@pytest.mark.parametrize("index", range(4))
def test_loudest_burst_holds_the_clip_peak(index):
    rec, wave = _clean("loudest_burst", index)
    start, end = rec.spans[0]
    peak_s = np.argmax(np.abs(wave)) / SR
    assert start <= peak_s <= end
    ordinal = rec.answer.split()[1]
    assert f"the {ordinal} one <seg>" in rec.cot


@pytest.mark.parametrize("index", range(4))
def test_silence_gap_is_silent_and_in_the_answer_quarter(index):
    rec, wave = _clean("silence_gap", index)
    g0, g1 = rec.spans[0]
    assert np.max(np.abs(_cut(wave, g0, g1))) < 1e-6
    assert np.sqrt(np.mean(_cut(wave, g0 - 0.2, g0) ** 2)) > 0.01
    assert np.sqrt(np.mean(_cut(wave, g1, g1 + 0.2) ** 2)) > 0.01
    quarter = ["first", "second", "third", "fourth"].index(rec.answer.split()[1])
    q = rec.duration_s / 4
    assert quarter * q <= g0 and g1 <= (quarter + 1) * q


@pytest.mark.parametrize("index", range(8))
def test_event_order_spans_are_sounding_and_match_the_answer(index):
    rec, wave = _clean("event_order", index)
    for s, e in rec.spans:
        assert np.sqrt(np.mean(_cut(wave, s, e) ** 2)) > 0.01
    x, y = re.search(r"the (.+) or the (.+)\?", rec.question).groups()
    if rec.answer == "neither of them is in the clip":  # the reasoning cites the sounds that do play, none named
        heard = re.findall(r"a ([a-z ]+) <seg>", rec.cot)
        assert heard and x not in heard and y not in heard and len(rec.spans) == len(heard)
        return
    (a0, _), (b0, _) = rec.spans
    first = re.search(r"The (.+?) plays here", rec.cot).group(1)
    assert first in (x, y)
    if rec.answer == "they start at the same time":
        assert a0 == b0
    else:
        assert a0 < b0 and rec.answer == f"the {first}"


def _balanced(recs) -> dict[str, int]:
    """How many of ``recs`` have their answer at each position."""
    return dict(Counter(r.choices.index(r.answer) for r in recs))


@pytest.mark.parametrize("family", ["event_order", "beep_count", "pitch_at"])
def test_outcomes_and_answer_positions_are_exactly_balanced(family):
    recs = [make_item(SynthConfig(n=16, seed=3, families=(family,)), i).record for i in range(16)]
    assert _balanced(recs) == {0: 4, 1: 4, 2: 4, 3: 4}  # blocks of 4 items take every position once
    if family == "event_order":
        kinds = Counter(r.answer if not r.answer.startswith("the ") else
                        "first named" if r.answer == "the " + re.search(r"the (.+) or", r.question).group(1)
                        else "second named" for r in recs)
        assert kinds == {"first named": 4, "second named": 4, "they start at the same time": 4,
                         "neither of them is in the clip": 4}
    if family == "beep_count":  # four consecutive counts offered, the answer each of them equally often
        assert all(sorted(map(int, r.choices)) == list(range(min(map(int, r.choices)), min(map(int, r.choices)) + 4))
                   for r in recs)
        assert Counter(sorted(r.choices, key=int).index(r.answer) for r in recs) == {0: 4, 1: 4, 2: 4, 3: 4}


@pytest.mark.parametrize("family", ["spoken_word", "voice_change"])
@pytest.mark.parametrize("index", range(2))
@pytest.mark.espeak
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the espeak-ng program (apt-get install espeak-ng)")
def test_speech_families(family, index):
    rec, wave = _clean(family, index)
    assert rec.answer in rec.choices and len(set(rec.choices)) == 4
    start, end = rec.spans[0]
    assert np.sqrt(np.mean(_cut(wave, start, end) ** 2)) > 0.01  # speech inside the span
    assert np.max(np.abs(_cut(wave, start - 0.25, start - 0.01))) < 1e-3  # a pause just before it
    if family == "spoken_word":
        at = float(re.search(r"at ([\d.]+) s", rec.question).group(1))
        assert start <= at <= end
        assert f'the word is "{rec.answer}"' in rec.cot
    else:  # each of the two words around the change is cited where it is, a pause between them
        assert rec.cot.count('"') == 6 and f'"{rec.answer}" is the last word' in rec.cot
        (_, end_before), (start_after, _) = rec.spans
        assert end_before < start_after and np.max(np.abs(_cut(wave, end_before + 0.01, start_after - 0.01))) < 1e-3


@pytest.mark.espeak
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the espeak-ng program (apt-get install espeak-ng)")
def test_speech_word_is_deterministic_trimmed_and_on_grid():
    speech._speak.cache_clear()
    a = speech.speak("apple", "en+f3", 160, 50)
    speech._speak.cache_clear()
    b = speech.speak("apple", "en+f3", 160, 50)
    assert np.array_equal(a, b) and a.shape[0] % 160 == 0 and a.shape[0] > 0.2 * SR
    assert abs(a[0]) > 0.02 * np.abs(a).max()  # starts at the voice onset: the span's start is exact
    assert not np.array_equal(a, speech.speak("apple", "en+m3", 160, 50))


def test_speech_families_need_espeak(monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    assert "beep_count" in NON_SPEECH and "spoken_word" not in NON_SPEECH
    assert SynthConfig(n=7).resolved_families() == NON_SPEECH  # the default quietly leaves them out
    with pytest.raises(speech.SpeechUnavailable, match="espeak-ng"):
        SynthConfig(n=1, families=("spoken_word",)).resolved_families()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n": 0}, "n must be >= 1"),
        ({"n": 1, "families": ("whistle",)}, "unknown task families"),
        ({"n": 1, "difficulties": ("brutal",)}, "difficulties must be"),
        ({"n": 1, "clip_s": (5.0, 1.0)}, "clip_s"),
        ({"n": 1, "distractors": 20}, "distractors"),
        ({"n": 1, "format": "essay"}, "format must be one of cot, direct"),
        ({"n": 1, "span_grid_s": 0.05}, "span_grid_s must be 0"),
        ({"n": 1, "span_grid_s": 0.25}, "multiple of 0.1"),
        ({"n": 1, "span_grid_s": -1.0}, "span_grid_s must be 0"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ConfigError, match=match):
        SynthConfig(**kw)


def test_knobs_change_the_clips():
    base = SynthConfig(n=1, seed=2, families=("pitch_at",), difficulties=("easy",))
    long = SynthConfig(n=1, seed=2, families=("pitch_at",), difficulties=("easy",), clip_s=(20.0, 20.0))
    assert make_item(long, 0).record.duration_s == 20.0 and make_item(base, 0).record.duration_s < 7.0
    noisy = make_item(SynthConfig(n=1, seed=2, families=("silence_gap",), snr_db=0.0), 0)
    g0, g1 = noisy.record.spans[0]
    assert np.std(_cut(noisy.wave, g0, g1)) > 0.01  # noise fills the gap at 0 dB SNR
    many = make_item(SynthConfig(n=1, seed=2, families=("pitch_at",), distractors=5), 0)
    assert many.record.cot.count("<seg>") == 1 and len(many.record.choices) == 4


def test_cli_synth_writes_a_loadable_dataset(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="echo")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "synth", "--n", "6", "--seed", "4", "--out", str(tmp_path / "s"),
                              "--families", "beep_count", "silence_gap", "--difficulty", "easy", "--no-progress"])
    assert args.func(args) == 0
    recs = read_eaqa(tmp_path / "s" / "synthetic.jsonl")
    assert [r.task for r in recs] == ["beep_count", "silence_gap"] * 3
    assert all(sf.info(tmp_path / "s" / r.audio).samplerate == SR for r in recs)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 4 and manifest["count"] == 6
    assert "wrote 6 items" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # refused at parse time, before any work
        parser.parse_args(["data", "synth", "--n", "0", "--out", str(tmp_path / "t")])
    assert exit_.value.code == 2 and "--n: must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("family", NON_SPEECH)
def test_extreme_knobs_still_make_valid_items(family):
    for kw in ({"clip_s": (2.0, 2.0), "distractors": 8}, {"clip_s": (30.0, 30.0), "distractors": 0}):
        cfg = SynthConfig(n=1, seed=3, families=(family,), **kw)
        for index in range(3):
            rec = make_item(cfg, index).record
            assert rec.answer in rec.choices and all(b <= rec.duration_s for _, b in rec.spans)


def test_direct_format_targets_the_answer_alone(tmp_path):
    """--format direct: the same items, each target just <answer>X</answer> (the spans stay as ground truth)."""
    from echo.data.formats import check_record, is_direct
    from echo.answers import extract_answer

    parser = argparse.ArgumentParser(prog="echo")
    register(parser.add_subparsers(dest="command"))
    flags = ["--n", "6", "--seed", "4", "--families", "beep_count", "event_order", "--no-progress"]
    for fmt in ("cot", "direct"):
        args = parser.parse_args(["data", "synth", "--out", str(tmp_path / fmt), "--format", fmt, *flags])
        assert args.func(args) == 0
    cot, direct = (read_eaqa(tmp_path / fmt / "synthetic.jsonl") for fmt in ("cot", "direct"))
    for a, b in zip(cot, direct):
        assert b.cot == f"<answer>{b.answer}</answer>" and is_direct(b.cot) and not is_direct(a.cot)
        assert (a.question, a.choices, a.answer, a.spans) == (b.question, b.choices, b.answer, b.spans)
        assert parse_cot(b.cot) == ([], b.answer) and check_record(b) == []
        assert extract_answer(b.cot, b.choices).prediction == b.answer
    assert _digest(tmp_path / "cot" / "audio") == _digest(tmp_path / "direct" / "audio")
    assert json.loads((tmp_path / "direct" / "manifest.json").read_text())["config"]["format"] == "direct"
    wrong = read_eaqa(tmp_path / "direct" / "synthetic.jsonl")[0]
    wrong.cot = "<answer>nope</answer>"
    assert any("cot answers 'nope'" in p for p in check_record(wrong))


def test_a_dataset_from_before_a_new_config_field_still_resumes(tmp_path):
    """A manifest written before a SynthConfig field existed resumes when the new field keeps its default."""
    cfg = SynthConfig(n=2, seed=1, families=("beep_count",))
    write_synthetic(cfg, tmp_path / "s")
    path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["config"]["format"]
    path.write_text(json.dumps(manifest))
    os.remove(tmp_path / "s" / "synthetic.jsonl")  # as if a kill came before the end
    write_synthetic(cfg, tmp_path / "s")  # the same config: accepted, and finished
    assert len(read_eaqa(tmp_path / "s" / "synthetic.jsonl")) == 2
    with pytest.raises(ConfigError, match=r"format \('cot' -> 'direct'\)"):
        write_synthetic(SynthConfig(n=2, seed=1, families=("beep_count",), format="direct"), tmp_path / "s")


@pytest.mark.parametrize("grid", [0.5, 1.0])
def test_span_grid_cites_each_span_widened_to_the_marks(tmp_path, grid):
    """--span-grid S: the same items, each cited span the exact one widened to multiples of S (the clip's end at
    most), written as the marks write times; spans hold what the reasoning cites, meta the exact spans."""
    from echo.data.formats import check_record
    from echo.protocol import seg_bodies

    families = ("beep_count", "pitch_at", "event_order", "silence_gap")
    exact = SynthConfig(n=8, seed=7, families=families)
    write_synthetic(exact, tmp_path / "exact")
    write_synthetic(SynthConfig(n=8, seed=7, families=families, span_grid_s=grid), tmp_path / "grid")
    exact_recs, grid_recs = (read_eaqa(tmp_path / d / "synthetic.jsonl") for d in ("exact", "grid"))
    widened = 0
    for a, b in zip(exact_recs, grid_recs):
        assert (a.question, a.choices, a.answer, a.duration_s) == (b.question, b.choices, b.answer, b.duration_s)
        assert b.meta["exact_spans"] == a.spans and check_record(b) == []
        assert parse_cot(b.cot)[0] == b.spans and len(b.spans) == len(a.spans)
        for (x0, x1), (g0, g1), body in zip(a.spans, b.spans, seg_bodies(b.cot)):
            assert g0 <= x0 and x1 <= g1 <= b.duration_s  # the whole sound is inside what is re-listened
            assert g0 > x0 - grid and (g1 == b.duration_s or g1 < x1 + grid)  # and no more than the marks around it
            for g in (g0, g1):
                assert g == b.duration_s or abs(g / grid - round(g / grid)) < 1e-9
            assert body == "{}, {}".format(*(f"{g:.1f}" if abs(g * 10 - round(g * 10)) < 1e-6 else f"{g:.2f}"
                                             for g in (g0, g1)))
            widened += (g0, g1) != (x0, x1)
        # the reasoning around the spans is unchanged
        assert re.sub(r"<seg>[^<]*</seg>", "S", a.cot) == re.sub(r"<seg>[^<]*</seg>", "S", b.cot)
    assert widened > 0
    assert _digest(tmp_path / "exact" / "audio") == _digest(tmp_path / "grid" / "audio")
    with pytest.raises(ConfigError, match="span_grid_s"):  # another grid in the same --out: refused, not mixed
        write_synthetic(SynthConfig(n=8, seed=7, families=families, span_grid_s=2.0), tmp_path / "grid")
