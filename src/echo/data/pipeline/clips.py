"""The clips a run covers: audio files under a folder, their durations and content hashes, and optional strong
labels (event, onset, offset), sharded by clip over RANK/WORLD_SIZE.

Strong labels come as JSONL (``{"clip" or "audio": ..., "events": [{"label", "onset", "offset"}]}`` per clip, or one
event per line with ``label``/``onset``/``offset``) or as AudioSet-Strong style TSV/CSV (columns ``segment_id`` or
``filename`` or ``clip``, ``start_time_seconds`` or ``onset``, ``end_time_seconds`` or ``offset``, ``label``). A
row names its clip by id (the path under the folder, without suffix) or by file stem.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from pathlib import Path

from ...durable import read_object_lines, require_file
from ...errors import EchoError

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


@dataclasses.dataclass(slots=True)
class Clip:
    id: str
    audio: str  # absolute path
    duration_s: float
    sha256: str
    events: list[dict] = dataclasses.field(default_factory=list)  # {"label", "onset", "offset"}, by onset

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Clip":
        return cls(**d)


def find_clips(audio_dir: Path, meta: Path | None = None, only: set[str] | None = None
               ) -> tuple[list[Clip], list[tuple[str, str]]]:
    """Every clip under ``audio_dir`` (or only the ids in ``only``: a shard reads and hashes its own files only)
    sorted by id, plus (id, reason) for files that cannot be used."""
    import soundfile as sf

    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise EchoError(f"audio folder {audio_dir} not found")
    labels = read_meta(meta) if meta else {}
    clips, bad = [], []
    for path in sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        cid = path.relative_to(audio_dir).with_suffix("").as_posix()
        if only is not None and cid not in only:
            continue
        try:
            info = sf.info(str(path))
            duration = info.frames / info.samplerate
        except Exception as exc:  # libsndfile raises several types for corrupt files
            bad.append((cid, f"audio_unreadable ({exc})"))
            continue
        if duration <= 0:
            bad.append((cid, "audio_empty"))
            continue
        events = labels.get(cid, labels.get(path.stem, []))
        events = sorted((e for e in events if 0 <= e["onset"] < e["offset"] <= duration + 1e-6),
                        key=lambda e: (e["onset"], e["offset"], e["label"]))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        clips.append(Clip(cid, str(path.resolve()), round(duration, 6), digest, events))
    if not clips and not bad and only is None:
        raise EchoError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {audio_dir}")
    return clips, bad


def list_clip_ids(audio_dir: Path) -> list[str]:
    """Every clip id under ``audio_dir``, sorted (a directory listing: nothing is read)."""
    return sorted(p.relative_to(audio_dir).with_suffix("").as_posix() for p in Path(audio_dir).rglob("*")
                  if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def my_clips(audio_dir: Path, rank: int, world_size: int) -> set[str]:
    """This process's share of the clips: every ``world_size``-th id from ``rank`` of all ids in sorted order, so
    every stage of every process agrees on the owner of a clip whatever the others have done."""
    return set(list_clip_ids(audio_dir)[rank::world_size])


def read_meta(path: Path) -> dict[str, list[dict]]:
    """Strong labels by clip id (or stem): lists of {"label", "onset", "offset"}."""
    path = Path(require_file(path, "metadata file"))
    out: dict[str, list[dict]] = {}
    if path.suffix == ".jsonl":
        for n, row in read_object_lines(path):
            try:
                cid = _clip_id(row.get("clip") or row.get("audio") or row.get("id"))
                events = row["events"] if "events" in row else [row]
                out.setdefault(cid, []).extend(_event(e) for e in events)
            except (KeyError, TypeError, ValueError) as exc:
                raise EchoError(f"{path} line {n}: not a strong-label row ({type(exc).__name__}: {exc})") from None
        return out
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix in (".tsv", ".txt") else ",")
        for n, row in enumerate(reader, 2):
            try:
                cid = _clip_id(row.get("segment_id") or row.get("filename") or row.get("clip"))
                out.setdefault(cid, []).append(_event({
                    "label": row["label"], "onset": row.get("start_time_seconds", row.get("onset")),
                    "offset": row.get("end_time_seconds", row.get("offset"))}))
            except (KeyError, TypeError, ValueError) as exc:
                raise EchoError(f"{path} line {n}: not a strong-label row ({type(exc).__name__}: {exc})") from None
    return out


def _clip_id(value) -> str:
    if not value:
        raise KeyError("clip / audio / segment_id")
    p = Path(str(value))
    return p.with_suffix("").as_posix() if p.suffix.lower() in AUDIO_SUFFIXES else p.as_posix()


def _event(e: dict) -> dict:
    return {"label": str(e["label"]), "onset": float(e["onset"]), "offset": float(e["offset"])}
