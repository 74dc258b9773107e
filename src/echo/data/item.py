"""One audio question, whichever file it came from: an EAQA line (synthetic data, SFT, RL prompts), an MMAR or MMAU
metadata row (eval), or a generated item. Each reader checks its own layout; the fields they share are read and
written here only (:meth:`QuestionItem.from_row` / :meth:`QuestionItem.to_row`).

A row is EAQA's layout (``echo.data.formats``): ``id``, ``audio``, ``question``, ``choices``, ``answer`` and the
optional ``cot``, ``spans``, ``task``, ``difficulty``, ``duration_s``, ``meta``. Values are taken as they are (the
layout's checker, ``formats.check_record``, reports wrong types with the line they came from).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import EchoError

ROW_FIELDS = ("id", "audio", "question", "choices", "answer", "cot", "spans", "task", "difficulty", "duration_s", "meta")
_NEEDED = ("id", "audio", "question", "choices")  # an item without an answer is a test set's withheld one


class DataFormatError(EchoError):
    """A dataset file or record that does not follow its layout (named with the file, line or id, and the reason)."""


@dataclass(slots=True)
class QuestionItem:
    """A multiple-choice question about one clip. ``audio`` is the row's path, resolved against the file's folder
    when read with a ``base_dir``; ``spans`` are the reference chain of thought's ``[start_s, end_s]`` ground truth."""

    id: str
    audio: str
    question: str
    choices: list[str]
    answer: str | None
    cot: str | None = None
    spans: list[list[float]] | None = None
    task: str | None = None
    difficulty: str | None = None
    duration_s: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any], base_dir: str | os.PathLike | None = None, *,
                 audio_key: str = "audio") -> QuestionItem:
        """The item of one row (fields outside :data:`ROW_FIELDS` are ignored). ``audio_key`` names the audio field
        of layouts that call it otherwise (MMAR ``audio_path``, MMAU ``audio_id``); a relative audio path is joined to
        ``base_dir`` when one is given, and kept as written otherwise (so ``to_row`` gives the row back).

        Raises:
            DataFormatError: ``id``, the audio, ``question`` or ``choices`` is missing.
        """
        missing = [k for k in _NEEDED if (audio_key if k == "audio" else k) not in row]
        if missing:
            raise DataFormatError(f"missing fields {missing}")
        values = {k: row[k] for k in ROW_FIELDS if k in row and k != "audio"}
        audio = row[audio_key]
        if base_dir is not None and not os.path.isabs(audio):  # a non-string path raises TypeError here
            audio = os.path.join(os.fspath(base_dir), audio)
        if isinstance(values["choices"], list):
            values["choices"] = list(values["choices"])
        return cls(**{"answer": None, **values, "audio": audio})

    def to_row(self) -> dict[str, Any]:
        """The EAQA row: unset optional fields (None, empty ``meta``) are left out."""
        out = asdict(self)
        if not out["meta"]:
            del out["meta"]
        return {k: v for k, v in out.items() if v is not None}

    to_json = to_row  # the name EAQA's writers use
