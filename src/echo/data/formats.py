"""EAQA JSONL: one audio question per line, with a reference chain of thought whose ``<seg>`` spans are ground truth.

Layout of a line (all times in seconds)::

    {"id": "synth-0-000003-pitch_at", "audio": "audio/synth-0-000003-pitch_at.wav", "question": "...",
     "choices": ["A4 (440 Hz)", ...], "answer": "A4 (440 Hz)",
     "cot": "<think>... <seg>2.50, 3.10</seg> ...</think><answer>A4 (440 Hz)</answer>",
     "spans": [[2.5, 3.1]], "task": "pitch_at", "difficulty": "medium", "duration_s": 6.0}

``cot`` may instead be a direct answer, ``<answer>A4 (440 Hz)</answer>`` (``echo data synth --format direct``): it
cites no span, and ``spans`` still hold the ground truth.

``audio`` is relative to the JSONL file's directory (absolute paths are kept as they are). Writers check every record
(:func:`check_record`) and, given the audio, that the file is 16 kHz mono and lasts ``duration_s``; readers report the
file, line and reason of every bad line.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Sequence

from ..audio.io import SAMPLING_RATE
from ..durable import BadLine, read_lines, require_file, write_atomic
from ..protocol import (ANSWER_CLOSE, ANSWER_OPEN, SPAN_DECIMALS, THINK_OPEN, format_span, read_span,  # noqa: F401
                        seg_bodies, split_cot)  # (format_span re-exported)
from ..errors import ConfigError, EchoError
from .item import DataFormatError, QuestionItem  # noqa: F401  (re-exported)

REQUIRED_FIELDS = ("id", "audio", "question", "choices", "answer", "cot", "spans", "task")
OPTIONAL_FIELDS = ("difficulty", "duration_s", "meta")


EAQARecord = QuestionItem  # one EAQA line: every EAQA field is one of the question item's


def format_direct(answer: str) -> str:
    """A direct-answer target: ``<answer>answer</answer>`` and no reasoning (``echo data synth --format direct``:
    items a base model learns to answer at all from, before it learns to reason)."""
    return f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def is_direct(cot: str) -> bool:
    """Whether a target is a direct answer (:func:`format_direct`): one ``<answer>`` block, no ``<think>``."""
    text = cot.strip()
    return (text.startswith(ANSWER_OPEN) and text.endswith(ANSWER_CLOSE) and THINK_OPEN not in text
            and text.count(ANSWER_OPEN) == 1)


def parse_cot(cot: str) -> tuple[list[list[float]], str]:
    """The ``<seg>`` spans (seconds) and the answer of a reference chain of thought in Echo's format, or of a direct
    answer (no spans: it cites nothing).

    Raises:
        DataFormatError: not ``<think>…</think><answer>…</answer>`` nor ``<answer>…</answer>``, or a ``<seg>`` the
            span grammar (``echo.protocol``, the engine's) rejects.
    """
    if is_direct(cot):
        return [], cot.strip()[len(ANSWER_OPEN): -len(ANSWER_CLOSE)].strip()
    parts = split_cot(cot)
    if parts is None:
        raise DataFormatError("cot is not in the format <think>...</think><answer>...</answer>")
    spans = []
    for body in seg_bodies(parts[0]):
        span, reason = read_span(body)
        if span is None:
            raise DataFormatError(f"cot has a malformed span <seg>{body}</seg> ({reason})")
        spans.append(list(span))
    return spans, parts[1]


def check_record(rec: EAQARecord, required: Iterable[str] = REQUIRED_FIELDS, *, repeats_ok: bool = False
                 ) -> list[str]:
    """Every problem with one record (empty when it is valid): choices, answer, spans, and the cot's agreement.

    The one checker of question records, whatever file they came from (EAQA, SFT and RL data, eval benchmarks):
    ``required`` names the fields the reader's layout must have (EAQA's: all of ``REQUIRED_FIELDS``); any other
    field is checked when it is present (not None). ``id``, ``audio``, ``question`` and ``choices`` always are.
    ``repeats_ok``: a choice may appear twice (published benchmarks are scored as released, and MMAU's test-mini
    repeats choices in 27 items)."""
    required = {"id", "audio", "question", "choices", *required}
    present = {name for name in ("answer", "cot", "spans", "task") if getattr(rec, name) is not None} | required
    problems = []
    for name in ("id", "audio", "question", "answer", "cot", "task"):
        if name in present and (not isinstance(getattr(rec, name), str) or not getattr(rec, name)):
            problems.append(f"{name} must be a non-empty string")
    if problems:
        return problems
    if not isinstance(rec.choices, list) or len(rec.choices) < 2 or not all(isinstance(c, str) for c in rec.choices):
        problems.append("choices must be a list of at least 2 strings")
    elif len(set(rec.choices)) != len(rec.choices) and not repeats_ok:
        problems.append(f"choices repeat: {rec.choices}")
    elif "answer" in present and rec.answer not in rec.choices:
        problems.append(f"answer {rec.answer!r} is not among the choices {rec.choices}")
    if "spans" in present and (not isinstance(rec.spans, list) or ("spans" in required and not rec.spans)):
        problems.append("spans must be a non-empty list: every item needs at least one ground-truth span")
    for span in rec.spans if isinstance(rec.spans, list) else []:
        if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(_is_number(x) for x in span)):
            problems.append(f"span {span!r} is not a [start_s, end_s] pair of numbers")
            continue
        start_s, end_s = span
        if not 0.0 <= start_s < end_s:
            problems.append(f"span [{start_s}, {end_s}] is reversed, empty or negative")
        if rec.duration_s is not None and end_s > rec.duration_s + 1e-6:
            problems.append(f"span [{start_s}, {end_s}] ends after the clip ({rec.duration_s:g} s)")
    if "cot" not in present:
        return problems
    try:
        cot_spans, cot_answer = parse_cot(rec.cot)
    except DataFormatError as exc:
        problems.append(str(exc))
    else:
        rounded = [[round(a, SPAN_DECIMALS), round(b, SPAN_DECIMALS)] for a, b in _good_spans(rec.spans)]
        if "spans" in present and cot_spans != rounded and not is_direct(rec.cot):  # a direct answer cites none
            problems.append(f"cot spans {cot_spans} differ from the ground-truth spans {rounded}")
        if "answer" in present and cot_answer != rec.answer:
            problems.append(f"cot answers {cot_answer!r} but the answer is {rec.answer!r}")
    return problems


MAX_BAD_SHARE = 0.01  # the share of malformed records a run skips (each reported); past it the run fails


def check_share(name: str, value: Any) -> None:
    """Refuse a ``max_bad_share`` setting outside [0, 1] (0: any malformed record fails the run)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a share in [0, 1], got {value!r}")


def refuse_bad_share(path: str | os.PathLike, skipped: Sequence[tuple[str, str]], total: int,
                     max_share: float = MAX_BAD_SHARE, error: type[Exception] = DataFormatError,
                     what: str = "records") -> None:
    """Raise ``error`` (one line: how many, the allowed share, then each ``(where, reason)``, up to 30) when more
    than ``max_share`` of a file's ``total`` records were ``skipped`` as malformed. Below it a run goes on without
    them: one bad line in a large file never stops training or evaluation, a file that is mostly wrong does."""
    if len(skipped) <= max_share * total:
        return
    shown = [f"{where}: {why}" for where, why in skipped[:30]] + (["..."] if len(skipped) > 30 else [])
    raise error(f"{os.fspath(path)}: {len(skipped)} of {total} {what} are malformed, more than the "
                f"{max_share * 100:g}% allowed: {'; '.join(shown)}")


def audio_path(rec: EAQARecord, root: str | os.PathLike) -> str:
    """The record's audio file, resolved against ``root`` (the JSONL file's directory) unless absolute."""
    return rec.audio if os.path.isabs(rec.audio) else os.path.join(os.fspath(root), rec.audio)


def check_audio_file(rec: EAQARecord, root: str | os.PathLike) -> list[str]:
    """Problems with a record's wav: missing, unreadable, not 16 kHz mono, or not lasting ``duration_s``."""
    import soundfile as sf

    path = audio_path(rec, root)
    try:
        require_file(path, "audio file")
        info = sf.info(path)
    except EchoError as exc:
        return [str(exc)]
    except Exception as exc:  # libsndfile raises several types for corrupt files
        return [f"audio file {path} cannot be read ({exc})"]
    problems = []
    if info.samplerate != SAMPLING_RATE or info.channels != 1:
        problems.append(f"audio file {path} is {info.samplerate} Hz x {info.channels} channels, not 16 kHz mono")
    duration_s = info.frames / info.samplerate
    if rec.duration_s is not None and abs(duration_s - rec.duration_s) > 1.0 / info.samplerate:
        problems.append(f"audio file {path} lasts {duration_s:.4f} s but duration_s is {rec.duration_s:.4f}")
    for start_s, end_s in _good_spans(rec.spans):
        if end_s > duration_s + 1e-6:
            problems.append(f"span [{start_s}, {end_s}] ends after the audio ({duration_s:.3f} s)")
    return problems


def write_eaqa(path: str | os.PathLike, records: Iterable[EAQARecord], *, check_audio: bool = True) -> int:
    """Write records as EAQA JSONL (atomically: a temporary file renamed into place). Returns the record count.

    Raises:
        DataFormatError: a record fails :func:`check_record` (or, with ``check_audio``, its wav fails
            :func:`check_audio_file`), or two records share an id. Nothing is written then.
    """
    path = os.fspath(path)
    root = os.path.dirname(os.path.abspath(path))
    records = list(records)
    seen: set[str] = set()
    for rec in records:
        problems = check_record(rec) + (check_audio_file(rec, root) if check_audio else [])
        if rec.id in seen:
            problems.append("duplicate id")
        seen.add(rec.id)
        if problems:
            raise DataFormatError(f"{path}: record {rec.id!r}: " + "; ".join(problems))
    write_atomic(path, "".join(json.dumps(rec.to_json(), ensure_ascii=False) + "\n" for rec in records))
    return len(records)


def read_eaqa(path: str | os.PathLike, *, strict: bool = True,
              skipped: list[tuple[str, str]] | None = None) -> list[EAQARecord]:
    """Read EAQA JSONL. Blank lines are skipped.

    Args:
        strict: also reject fields outside the layout (a typo'd field name otherwise goes unnoticed).
        skipped: given, a bad line does not raise: it is left out and ``("line N (id 'x')", reason)`` appended here
            (the caller decides how many it accepts: :func:`refuse_bad_share`).

    Raises:
        DataFormatError: naming the file and line of every unparsable line, missing or unknown field, invalid record
            (:func:`check_record`) or repeated id (up to 20 problems listed).
    """
    path = require_file(path, "EAQA file", DataFormatError)
    records, problems, first_line = [], [], {}  # problems: (where, reason)
    for lineno, obj in read_lines(path, bad="report"):
        where = f"line {lineno}"
        if isinstance(obj, BadLine):
            problems.append((where, f"invalid JSON ({obj.detail})" if obj.kind == "json" else obj.problem))
            continue
        missing = [k for k in REQUIRED_FIELDS if k not in obj]
        unknown = sorted(set(obj) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)) if strict else []
        if missing or unknown:
            problems.append((where, "; ".join(
                ([f"missing fields {missing}"] if missing else []) + ([f"unknown fields {unknown}"] if unknown else [])
            )))
            continue
        rec = QuestionItem.from_row(obj)
        bad = check_record(rec)
        if rec.id in first_line:
            bad.append(f"duplicate id {rec.id!r} (first on line {first_line[rec.id]})")
        first_line.setdefault(rec.id, lineno)
        if bad:
            problems.append((f"{where} (id {rec.id!r})", "; ".join(bad)))
            continue
        records.append(rec)
    if skipped is not None:
        skipped += problems
        return records
    if problems:
        shown = [f"{where}: {why}" for where, why in problems[:20]]
        shown += [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        raise DataFormatError(f"{path}: {len(problems)} bad lines:\n  " + "\n  ".join(shown))
    return records


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _good_spans(spans: Any) -> list[tuple[float, float]]:
    ok = []
    for span in spans if isinstance(spans, list) else []:
        if isinstance(span, (list, tuple)) and len(span) == 2 and all(_is_number(x) for x in span):
            ok.append((float(span[0]), float(span[1])))
    return ok
