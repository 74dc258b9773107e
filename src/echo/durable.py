"""Files that survive a kill: JSONL appended and fsync'd row by row (a partial last line is cut on restart), and
whole files replaced atomically."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator


def drop_partial_line(path: str | os.PathLike) -> None:
    """Cut a line left unfinished by a kill, so the next append starts on a fresh line."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_object_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a JSONL input file; the first line that is not JSON or not
    an object raises EchoError naming the file and the line (inputs are checked strictly, unlike ``read_jsonl``)."""
    from .errors import EchoError

    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EchoError(f"{path} line {n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise EchoError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
            yield n, row


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The complete object lines of ``path`` (none if it does not exist); a partial or non-object line is skipped."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # cut short by a kill
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row


def append_row(f, row: Any) -> None:
    """Write one JSON line and make it durable before returning (a kill -9 or power loss keeps it)."""
    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (readers see the old or the new file, never half of one)."""
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Raise OSError naming ``what`` when files cannot be created in directory ``path`` (created if missing)."""
    path = os.fspath(path) or "."
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{what} {path} is a file, not a directory")
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path} is not writable")
