"""Benchmark loaders: MMAR (``MMAR-meta.jsonl``), MMAU (``mmau-test-mini.json`` / ``mmau-test.json``) and echo's
synthetic EAQA sets, with the field names as published, audio resolved against a local directory, and every bad
input reported before any model time is spent.

Published layouts (as released by the MMAR and MMAU authors; the audio is downloaded separately from their hosts):

* MMAR: one JSON object per line; ``audio_path`` like ``./audio/<id>.wav``; grouped by ``modality``, ``category``,
  ``sub-category``.
* MMAU: one JSON list; ``audio_id`` like ``./test-mini-audios/<id>.wav``; grouped by ``task``, ``difficulty``,
  ``sub-category`` (``category`` is a string, or for a few items a one-element list). ``mmau-test.json`` has no
  ``answer`` (the answers are withheld; predictions are submitted to the benchmark's server).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from ..data.formats import MAX_BAD_SHARE, check_record, refuse_bad_share
from ..data.item import QuestionItem
from ..durable import read_json_rows, require_file
from ..errors import EchoError

BENCHMARK_NAMES = ("mmar", "mmau-test-mini", "mmau-test", "synthetic")
META_FILES = {  # the metadata file looked for in --data DIR (first that exists)
    "mmar": ("MMAR-meta.jsonl", "MMAR-meta.json"),
    "mmau-test-mini": ("mmau-test-mini.json",),
    "mmau-test": ("mmau-test.json",),
    "synthetic": ("synthetic.jsonl",),
}
_MMAR_FIELDS = {
    "required": ("id", "audio_path", "question", "choices", "answer", "modality", "category", "sub-category"),
    "optional": ("language", "source", "url", "timestamp", "thinking", "cue", "rubric"),
}
_MMAU_FIELDS = {
    "required": ("id", "audio_id", "question", "choices", "task", "difficulty", "sub-category"),
    "optional": ("answer", "dataset", "split", "category", "other_attributes"),
}
_AUDIO_KEY = {"mmar": "audio_path", "mmau-test-mini": "audio_id", "mmau-test": "audio_id", "synthetic": "audio"}
_MAX_LISTED = 30


class BenchmarkError(EchoError):
    """A benchmark file or its audio that cannot be evaluated; the message lists every offending item and why."""


@dataclass(slots=True, init=False)
class EvalItem:
    """One multiple-choice question (``item``, its audio resolved to a local file) and ``record``, the row as
    published, into a copy of which predictions are written."""

    item: QuestionItem
    record: dict[str, Any] = field(repr=False)

    def __init__(self, id: str, audio_path: str, question: str, choices: list[str], answer: str | None,
                 record: dict[str, Any]):
        self.item = QuestionItem(id, audio_path, question, list(choices), answer)
        self.record = record

    @classmethod
    def from_item(cls, item: QuestionItem, record: dict[str, Any]) -> EvalItem:
        out = cls.__new__(cls)
        out.item, out.record = item, record
        return out

    id = property(lambda self: self.item.id)
    audio_path = property(lambda self: self.item.audio)
    question = property(lambda self: self.item.question)
    choices = property(lambda self: self.item.choices)
    answer = property(lambda self: self.item.answer)


@dataclass(slots=True)
class Benchmark:
    name: str
    meta_path: str
    audio_root: str
    items: list[EvalItem]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason) of each malformed item left out

    def __len__(self) -> int:
        return len(self.items)


def find_meta(name: str, data_dir: str | os.PathLike) -> str:
    """The metadata file of benchmark ``name`` inside ``data_dir`` (see ``META_FILES``)."""
    _check_name(name)
    for fname in META_FILES[name]:
        path = os.path.join(os.fspath(data_dir), fname)
        if os.path.isfile(path):
            return path
    raise BenchmarkError(f"{data_dir}: no {' or '.join(META_FILES[name])} for benchmark {name!r} (pass --meta FILE)")


def load_benchmark(
    name: str,
    data_dir: str | os.PathLike,
    meta: str | os.PathLike | None = None,
    *,
    strict: bool = True,
    max_bad_share: float = MAX_BAD_SHARE,
) -> Benchmark:
    """Load a benchmark's items, with audio paths resolved against ``data_dir``.

    Args:
        name: one of ``BENCHMARK_NAMES``.
        data_dir: the local directory holding the audio (and, unless ``meta`` is given, the metadata file).
        meta: the metadata file, when it is not in ``data_dir`` under its published name.
        strict: reject fields outside the published layout (unknown fields usually mean the wrong file).
        max_bad_share: malformed items (each checked by ``formats.check_record``) are left out and listed in
            ``Benchmark.skipped`` while they are at most this share of the file.

    Raises:
        BenchmarkError: unreadable file; or more than ``max_bad_share`` of the items malformed (missing or unknown
            fields, wrong types, duplicate ids, an answer that is not among the choices): every offending item is
            listed (up to 30) on one line.
    """
    _check_name(name)
    data_dir = os.fspath(data_dir)
    meta_path = os.fspath(meta) if meta is not None else find_meta(name, data_dir)
    if name == "synthetic":
        return _load_synthetic(meta_path, data_dir, strict, max_bad_share)
    rows, problems = _read_rows(meta_path)  # problems: (where, reason) of each item left out
    total = len(rows) + len(problems)
    fields = _MMAR_FIELDS if name == "mmar" else _MMAU_FIELDS
    if name == "mmau-test-mini":
        fields = {"required": fields["required"] + ("answer",), "optional": fields["optional"]}
    needed = ("answer",) if "answer" in fields["required"] else ()
    items, seen = [], {}
    for index, row in enumerate(rows):
        where = f"item {index}" + (f" (id {row.get('id')!r})" if isinstance(row, dict) and "id" in row else "")
        bad = _check_row(row, fields, strict)
        if not bad:
            item = QuestionItem.from_row(row, audio_key=_AUDIO_KEY[name])
            bad = check_record(item, needed, repeats_ok=True)
        if not bad and row["id"] in seen:
            bad = [f"duplicate id (first at item {seen[row['id']]})"]
        if bad:
            problems.append((where, "; ".join(bad)))
            continue
        seen[row["id"]] = index
        items.append(EvalItem.from_item(replace(item, audio=resolve_audio(item.audio, data_dir)), row))
    refuse_bad_share(meta_path, problems, total, max_bad_share, BenchmarkError, f"items in the {name} layout")
    return Benchmark(name=name, meta_path=meta_path, audio_root=data_dir, items=items, skipped=problems)


def resolve_audio(relative: str, data_dir: str) -> str:
    """``./audio/x.wav`` -> ``data_dir/audio/x.wav``; if that does not exist but ``data_dir/x.wav`` does, that one
    (people often unpack the audio archives flat). Absolute paths are kept."""
    if os.path.isabs(relative):
        return relative
    rel = relative[2:] if relative.startswith("./") else relative
    nested = os.path.join(data_dir, rel)
    flat = os.path.join(data_dir, os.path.basename(rel))
    return flat if not os.path.exists(nested) and os.path.exists(flat) else nested


def check_audio(items: Sequence[EvalItem], mode: str = "header") -> None:
    """Fail with one message listing every item whose audio is missing or unreadable.

    Args:
        mode: ``exists`` (the file is there), ``header`` (libsndfile can parse it; fast), or ``decode`` (the whole
            file decodes to finite, non-empty audio through ``echo.audio.load``; slow on a full benchmark).
    """
    if mode not in ("exists", "header", "decode"):
        raise ValueError(f"check_audio mode must be 'exists', 'header' or 'decode', got {mode!r}")
    problems = []
    for item in items:
        reason = _audio_problem(item.audio_path, mode)
        if reason:
            problems.append(f"{item.id}: {item.audio_path} ({reason})")
    _raise_listed(problems, f"{len(problems)} of {len(items)} audio files are missing or unreadable")


def _audio_problem(path: str, mode: str) -> str | None:
    try:
        require_file(path)
    except EchoError as exc:
        return str(exc).removeprefix(f"{path}: ")  # "file not found", "is a directory, not a file"
    if mode == "exists":
        return None
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as exc:  # libsndfile reports corrupt files as several exception types
        return f"cannot read: {exc}"
    if info.frames == 0:
        return "no samples"
    if mode == "decode":
        try:
            from ..audio.io import load
        except ImportError:  # the audio package is optional here; soundfile alone still proves the file decodes
            try:
                sf.read(path, dtype="float32")
            except Exception as exc:
                return f"cannot decode: {exc}"
        else:
            try:
                load(path, max_seconds=None)
            except EchoError as exc:
                return str(exc).removeprefix(path + ": ")
    return None


def _load_synthetic(meta_path: str, data_dir: str, strict: bool, max_bad_share: float) -> Benchmark:
    from ..data.formats import DataFormatError, audio_path, read_eaqa

    skipped: list[tuple[str, str]] = []
    try:
        records = read_eaqa(meta_path, strict=strict, skipped=skipped)
    except DataFormatError as exc:
        raise BenchmarkError(str(exc)) from None
    refuse_bad_share(meta_path, skipped, len(records) + len(skipped), max_bad_share, BenchmarkError)
    root = os.path.dirname(os.path.abspath(meta_path))
    items = [EvalItem.from_item(replace(r, audio=audio_path(r, root)), r.to_json()) for r in records]
    return Benchmark(name="synthetic", meta_path=meta_path, audio_root=data_dir, items=items, skipped=skipped)


def _read_rows(path: str) -> tuple[list[Any], list[tuple[str, str]]]:
    """The file's rows, and ``("line N", reason)`` for each JSON-lines line that is not JSON (left out)."""
    require_file(path, "metadata file", BenchmarkError)
    try:  # a JSON list (MMAU; also MMAR converted to .json by some tools) or JSON lines (MMAR)
        rows, bad = read_json_rows(path)  # non-objects are listed per item by _check_row
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    return rows, [(f"line {n}", f"invalid JSON ({why})") for n, why in bad]


def _check_row(row: Any, fields: dict[str, tuple[str, ...]], strict: bool) -> list[str]:
    """The published layout's fields (missing, or unknown when ``strict``); their values are check_record's."""
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {type(row).__name__}"]
    bad = []
    missing = [k for k in fields["required"] if k not in row]
    if missing:
        bad.append(f"missing fields {missing}")
    if strict:
        unknown = sorted(set(row) - set(fields["required"]) - set(fields["optional"]))
        if unknown:
            bad.append(f"unknown fields {unknown}")
    return bad


def _raise_listed(problems: list[str], headline: str) -> None:
    if not problems:
        return
    shown = problems[:_MAX_LISTED] + ([f"... and {len(problems) - _MAX_LISTED} more"] if len(problems) > _MAX_LISTED else [])
    raise BenchmarkError(headline + ":\n  " + "\n  ".join(shown))


def _check_name(name: str) -> None:
    if name not in BENCHMARK_NAMES:
        raise BenchmarkError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARK_NAMES)}")
