"""Files that survive a kill: JSONL appended and fsync'd row by row (a partial last line is cut on restart), whole
files and whole directories replaced atomically (a directory swap a kill interrupts is finished or undone by the
next run); and the one check that an input path names a file."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


def drop_partial_line(path: str | os.PathLike) -> None:
    """Cut a line left unfinished by a kill, so the next append starts on a fresh line."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


@dataclass(frozen=True, slots=True)
class BadLine:
    """A JSONL line that cannot be used: ``kind`` is ``json`` (does not parse), ``object`` (parses to something other
    than an object; ``detail`` is its type) or ``utf-8`` (undecodable bytes); ``detail`` is the reason."""

    line: int
    kind: str
    detail: str

    @property
    def problem(self) -> str:
        if self.kind == "object":
            return f"expected a JSON object, got {self.detail}"
        return f"not JSON ({self.detail})" if self.kind == "json" else f"not UTF-8 text ({self.detail})"


def read_lines(path: str | os.PathLike, *, bad: str = "raise", objects: bool = True,
               torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-blank line of the JSONL file ``path``: the one reader of echo's JSONL.

    Args:
        bad: what a line that is not JSON (or, with ``objects``, not an object) does: ``raise`` an EchoError naming
            the file and the line, ``report`` it as a (line number, :class:`BadLine`) pair, or ``skip`` it.
        objects: only JSON objects are good lines (otherwise any JSON value is yielded as it is).
        torn_tail: a last line without its newline was cut short by a kill: drop it, whatever it holds.
    """
    if bad not in ("raise", "report", "skip"):
        raise ValueError(f"bad must be 'raise', 'report' or 'skip', got {bad!r}")
    from .errors import EchoError

    with _open_bytes(path) as f:  # bytes: a kill can tear a line inside a multi-byte character
        for n, raw in enumerate(f, 1):
            if torn_tail and not raw.endswith(b"\n"):
                return
            if not raw.strip():
                continue
            problem = None
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                problem = BadLine(n, "utf-8", exc.reason)
            except json.JSONDecodeError as exc:
                problem = BadLine(n, "json", exc.msg)
            else:
                if objects and not isinstance(value, dict):
                    problem = BadLine(n, "object", type(value).__name__)
            if problem is None:
                yield n, value
            elif bad == "raise":
                raise EchoError(f"{path} line {n}: {problem.problem}")
            elif bad == "report":
                yield n, problem


def read_object_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a JSONL input file; the first line that is not JSON or not
    an object raises EchoError naming the file and the line (inputs are checked strictly, unlike ``read_jsonl``)."""
    return read_lines(path)


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The complete object lines of a file this process appends to (none if it does not exist); a line torn by a kill
    and any other non-object line are skipped."""
    if os.path.exists(path):
        yield from (row for _, row in read_lines(path, bad="skip", torn_tail=True))


def _open_bytes(path: str | os.PathLike):
    """``path`` opened for reading bytes, decompressed when it ends in ``.gz`` (kept predictions are gzipped)."""
    return gzip.open(path, "rb") if os.fspath(path).endswith(".gz") else open(path, "rb")


def starts_json_list(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds one JSON list (``[`` first) rather than JSON lines; both layouts are published."""
    with _open_bytes(path) as f:
        while chunk := f.read(4096):
            if stripped := chunk.lstrip():
                return stripped.startswith(b"[")
    return False


def read_json_rows(path: str | os.PathLike) -> tuple[Any, list[tuple[int, str]]]:
    """A published file in either layout: ``(rows, [(line, why) for every line that is not JSON])``. A JSON list is
    parsed whole (a ``json.JSONDecodeError`` when it does not parse, and whatever it holds as ``rows``); JSON lines
    are read line by line, values of any type. Either may be gzipped (``.gz``)."""
    if starts_json_list(path):
        with _open_bytes(path) as f:
            return json.loads(f.read().decode("utf-8")), []
    rows, bad = [], []
    for n, row in read_lines(path, bad="report", objects=False):
        if isinstance(row, BadLine):
            bad.append((n, row.detail))
        else:
            rows.append(row)
    return rows, bad


def append_row(f, row: Any) -> None:
    """Write one JSON line and make it durable before returning (a kill -9 or power loss keeps it)."""
    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike, text: str | bytes) -> None:
    """Replace ``path`` with ``text`` (str as UTF-8, or bytes) in one rename: readers see the old or the new file,
    never half of one, and a kill leaves one of them. The one atomic file writer; a missing parent directory is
    created. The temporary name carries the pid, so processes writing the same file at once do not mix."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # the write or the rename failed: leave no temporary file behind
            os.unlink(tmp)


def require_file(path: str | os.PathLike, what: str = "file", error: type[Exception] | None = None,
                 name: str | None = None) -> str:
    """``path`` (a str) unless it is missing or a directory: then ``error`` (EchoError) saying, after ``name``
    (default: the path), that it is a directory or that the ``what`` is not found. The one check of every input
    file, so a directory given where a file is expected is never called "not found"."""
    from .errors import EchoError

    path = os.fspath(path)
    name = path if name is None else name
    if os.path.isdir(path):
        raise (error or EchoError)(f"{name}: is a directory, not a file" + ("" if what == "file" else f" ({what})"))
    if not os.path.exists(path):
        raise (error or EchoError)(f"{name}: {what} not found")
    return path


def _swap_names(out: Path, tag: str) -> tuple[Path, Path, Path]:
    return tuple(out.with_name(f"{out.name}.{tag}{kind}") for kind in ("tmp", "new", "old"))


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, tag: str = ""):
    """Yield a fresh temporary directory beside ``out``; on success it replaces ``out``. The finished directory is
    first renamed to ``out.<tag>new``, so at every instant of the swap one whole version exists by a known name and
    ``recover_dir`` (run here, and by callers before they read ``out``) puts it back in place after a kill.
    ``tag`` keeps the names of unrelated swaps apart (``out.synth-tmp``, not a user's ``out.tmp``)."""
    out = Path(out)
    recover_dir(out, tag)
    tmp, new, old = _swap_names(out, tag)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    tmp.rename(new)  # complete from here on
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(out: str | os.PathLike, tag: str = "") -> None:
    """Finish or undo a swap of ``atomic_dir`` that a kill interrupted: a complete ``out.new`` becomes ``out``;
    else a lone ``out.old`` (the previous version, moved aside) goes back; a partial ``out.tmp`` is dropped."""
    out = Path(out)
    tmp, new, old = _swap_names(out, tag)
    if new.is_dir():
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        new.rename(out)
    elif not out.exists() and old.is_dir():
        old.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Raise OSError naming ``what`` when files cannot be created in directory ``path`` (created if missing)."""
    path = os.fspath(path) or "."
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{what} {path} is a file, not a directory")
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path} is not writable")
