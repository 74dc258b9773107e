"""GRPO prompts: the parquet layout of the common RL framework (verl) and echo's synthetic EAQA JSONL.

A verl row has ``prompt`` (a chat list whose user text holds an ``<audio>`` placeholder), ``audios`` (paths),
``data_source``, ``reward_model.ground_truth`` and ``extra_info``. Choices come from ``extra_info.choices`` when
present, else from the Python list literal in Echo's prompt ("Choose the answer from ['a', 'b']"); a ground truth
given as an option letter is mapped to its choice. Ground-truth spans (for the span IoU reward) come from
``extra_info.spans``, or an EAQA row's ``spans``. Rows whose audio is missing, or that have no usable prompt or
ground truth, or whose question ``formats.check_record`` refuses (fewer than 2 choices, an answer not among
them, ...), are skipped and reported (id, line and reason): a bad row never stops a run hours in (the run fails
up front when more than ``GRPOConfig.max_bad_share`` of them are).
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
from pathlib import Path

from ..data.formats import check_record
from ..data.item import QuestionItem
from ..durable import BadLine, read_lines, require_file
from ..errors import EchoError
from ..protocol import build_prompt

_CHOICES = re.compile(r"Choose the answer from (\[.*?\])")
RL_FIELDS = ("id", "audio", "question", "choices", "answer")  # what a prompt needs (formats.check_record)


@dataclasses.dataclass(slots=True)
class RLRecord:
    id: str
    audio: str
    user: str          # the user's text; the audio comes first in the turn
    choices: list[str]
    answer: str        # the correct choice's text
    data_source: str = "echo"
    extra_info: dict = dataclasses.field(default_factory=dict)
    spans: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # ground truth (s), where known

    @classmethod
    def from_item(cls, item: QuestionItem, user: str) -> RLRecord:
        """The prompt of a question item: its user text, and an answer given as an option letter mapped to its
        choice; the item's task is the data source, its meta the extra info, its spans the ground truth."""
        choices = [str(c) for c in item.choices]
        return cls(item.id, item.audio, user, choices, _answer_text(item.answer, choices),
                   str(item.task if item.task is not None else "echo"), dict(item.meta or {}), _spans(item.spans))

    def conversation(self) -> list[dict]:
        return [{"role": "user", "content": [{"type": "audio", "audio": self.audio},
                                             {"type": "text", "text": self.user}]}]


def read_rl_records(path: str | os.PathLike) -> tuple[list[RLRecord], list[tuple[str, str]]]:
    """Records from ``.parquet`` (verl) or ``.jsonl`` (EAQA), plus (id, reason) for every skipped row. Each row's
    question goes through ``formats.check_record`` (the one checker; its problems name the row's line)."""
    path = Path(require_file(path, "RL data file"))
    rows = _parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path)
    records, skipped = [], []
    for rid, where, row in rows:
        try:
            rec = _verl_record(rid, row, path.parent) if "prompt" in row else _eaqa_record(rid, row, path.parent)
            require_file(rec.audio, "audio file")
            records.append(rec)
        except _Malformed as exc:
            skipped.append((rid, f"{where}: {exc}"))
        except (EchoError, KeyError, TypeError, ValueError, SyntaxError) as exc:
            skipped.append((rid, f"{type(exc).__name__}: {exc}" if not isinstance(exc, EchoError) else str(exc)))
    return records, skipped


class _Malformed(EchoError):
    """A row whose question ``check_record`` refuses."""


def _checked(item: QuestionItem) -> QuestionItem:
    problems = check_record(item, RL_FIELDS)
    if problems:
        raise _Malformed("; ".join(problems))
    return item


def _parquet_rows(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow ships with the train extra
        raise EchoError("reading parquet needs pyarrow: pip install 'echo-lalm[train]'") from exc
    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield str((row.get("extra_info") or {}).get("id", f"row{i}")), f"row {i}", row


def _jsonl_rows(path: Path):
    for n, row in read_lines(path, bad="report", objects=False):  # a bad line is skipped and reported, not fatal
        if isinstance(row, BadLine):
            yield f"line{n}", f"line {n}", {"_error": f"line {n} is {row.problem}"}
        else:
            yield str(row.get("id", f"line{n}")) if isinstance(row, dict) else f"line{n}", f"line {n}", row


def _resolve(audio: str, base: Path) -> str:
    return audio if os.path.isabs(audio) else str(base / audio)


def _spans(value) -> list[tuple[float, float]]:
    """Ground-truth spans as ``[[start_s, end_s], ...]``; None is none. Anything else is a bad row."""
    if value is None:
        return []
    try:
        spans = [(float(a), float(b)) for a, b in value]
    except (TypeError, ValueError):
        raise EchoError(f"spans must be [[start_s, end_s], ...], got {value!r}") from None
    if not all(math.isfinite(a) and math.isfinite(b) and a <= b for a, b in spans):
        raise EchoError(f"spans must be finite [start_s, end_s] with start <= end, got {value!r}")
    return spans


def _answer_text(truth, choices: list[str]) -> str:
    truth = str(truth).strip()
    if choices and truth not in choices and re.fullmatch(r"\(?[A-Za-z]\)?\.?", truth):
        index = ord(truth.strip("().").upper()) - ord("A")
        if 0 <= index < len(choices):
            return choices[index]
    return truth


def _verl_record(rid: str, row: dict, base: Path) -> RLRecord:
    users = [m["content"] for m in row["prompt"] if m.get("role") == "user"]
    audios = list(row.get("audios") or [])
    if len(users) != 1 or len(audios) != 1:
        raise EchoError(f"expected one user turn and one audio, got {len(users)} and {len(audios)}")
    text = users[0]
    if not isinstance(text, str) or "<audio>" not in text:
        raise EchoError("the user turn has no <audio> placeholder")
    extra = dict(row.get("extra_info") or {})
    choices = [str(c) for c in extra.get("choices") or []]
    if not choices and (m := _CHOICES.search(text)):
        choices = [str(c) for c in ast.literal_eval(m.group(1))]
    truth = (row.get("reward_model") or {}).get("ground_truth")
    if truth is None or not str(truth).strip():
        raise EchoError("no reward_model.ground_truth")
    question = text.replace("<audio>", "").strip()  # verl's user turn is the whole prompt already
    item = QuestionItem(rid, _resolve(str(audios[0]), base), question, choices, truth, spans=extra.get("spans"),
                        task=str(row.get("data_source") or "unknown"), meta=extra)
    rec = RLRecord.from_item(item, question)
    _checked(dataclasses.replace(item, answer=rec.answer, spans=None))  # an option letter counts as its choice
    return rec


def _eaqa_record(rid: str, row: dict, base: Path) -> RLRecord:
    if "_error" in row:
        raise EchoError(row["_error"])
    missing = [k for k in ("audio", "question", "choices", "answer") if k not in row]
    if missing:
        raise EchoError(f"neither verl nor EAQA layout; missing {missing}")
    item = QuestionItem.from_row({**row, "id": rid, "audio": str(row["audio"])}, base)
    rec = RLRecord.from_item(item, build_prompt(item.question, [str(c) for c in item.choices]))
    _checked(item)
    return rec
