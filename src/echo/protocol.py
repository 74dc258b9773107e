"""The Echo text format, defined once: the tags, the span grammar, the think/answer patterns, Echo's prompt and the
ids a re-listen splices in. The engine, the data tools, the trainers and the evaluation all read the format here.

A reasoning step cites audio as ``<seg>a, b</seg>`` (seconds); the engine cuts that span out of the clip and splices
``<|audio_bos|> <|AUDIO|> x n <|audio_eos|>`` right after ``</seg>``. A response is
``<think>…</think><answer>…</answer>``.

Span grammar (the text between ``<seg>`` and ``</seg>``), decided once for everyone:

- two decimal numbers separated by one comma, spaces allowed around each: ``"3.0, 5.5"``, ``"3,5"`` (the comma
  separates the numbers; it is never a decimal comma) -> (3.0, 5.5), (3.0, 5.0);
- each number may carry a sign, an exponent and a trailing ``s`` (seconds): ``"1.0s, 2s"`` -> (1.0, 2.0);
  ``"-1, 2"`` parses to (-1.0, 2.0): whether a span lies inside the clip, is reversed or is long enough is the
  caller's question (the engine's ``RelistenPolicy``, the data validator's checks), not the grammar's;
- ``"nan"``, ``"inf"`` and other words are not numbers in this grammar ("not two numbers"); a number that overflows
  (``"1e999"``) is "not finite"; an empty body is "empty".

:func:`read_span` gives the span or the name of what is wrong; :func:`parse_span` just the span or None.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import ClassVar, Sequence

SEG_OPEN, SEG_CLOSE = "<seg>", "</seg>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (SEG_OPEN, SEG_CLOSE, THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

SPAN_DECIMALS = 2  # spans are written to 10 ms, the precision a model writes them with
SPAN_REASONS = ("empty", "not two numbers", "not finite")  # what read_span names when there is no span

_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*s?"
_SPAN = re.compile(rf"^\s*{_NUMBER}\s*,\s*{_NUMBER}\s*$")

# group 1: a span's body as written, from the last <seg> before each </seg> (as the engine reads it)
SEG_BLOCK = re.compile(r"<seg>((?:(?!<seg>).)*?)</seg>", re.S)
THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.S)  # group 1: the thinking
ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.S)  # group 1: the answer
# a whole reference chain of thought: group 1 the thinking, group 2 the answer
COT = re.compile(r"^<think>(.*)</think>\s*<answer>(.*)</answer>$", re.S)

ECHO_PROMPT = (
    "{question} Choose the answer from {choices}. Think step-by-step. Refer to the specific audio segments while "
    "thinking, and indicate the corresponding timestamps. Answer in the format of "
    "<think>...</think><answer>...</answer>."
)  # verbatim from the Echo paper's evaluation: the trained model learned its tags from exactly this text


def build_prompt(question: str, choices: Sequence[str], template: str = ECHO_PROMPT) -> str:
    """The user text for one item. ``choices`` appear as a Python list literal (``['Man', 'Woman']``), as in Echo."""
    return template.format(question=question, choices=str([str(c) for c in choices]))


def read_span(inner: str) -> tuple[tuple[float, float] | None, str]:
    """The span of one ``<seg>`` body: ``((start_s, end_s), "ok")``, or ``(None, reason)`` with a reason from
    ``SPAN_REASONS`` (see the module doc for the grammar)."""
    if not inner.strip():
        return None, "empty"
    m = _SPAN.match(inner)
    if m is None:
        return None, "not two numbers"
    a, b = float(m.group(1)), float(m.group(2))
    if not (math.isfinite(a) and math.isfinite(b)):
        return None, "not finite"
    return (a, b), "ok"


def parse_span(inner: str) -> tuple[float, float] | None:
    """``"3.0, 5.5"`` -> (3.0, 5.5); anything the grammar rejects -> None."""
    return read_span(inner)[0]


def span_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two ``(start_s, end_s)`` spans; 0 when they do not overlap or both are empty."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def cited_span_ious(text: str, truth) -> list[float]:
    """Each span ``text`` cites (a parsable ``<seg>a, b</seg>``), scored by its best IoU with the ground-truth
    ``(start_s, end_s)`` spans in ``truth`` (0 when it overlaps none, or there are none)."""
    truth = [tuple(t) for t in truth or ()]
    cited = [s for s in (parse_span(b) for b in seg_bodies(text)) if s is not None]
    return [max((span_iou(s, t) for t in truth), default=0.0) for s in cited]


def format_span(start_s: float, end_s: float) -> str:
    """A span as the model writes it: ``<seg>2.50, 3.10</seg>``."""
    return f"{SEG_OPEN}{start_s:.{SPAN_DECIMALS}f}, {end_s:.{SPAN_DECIMALS}f}{SEG_CLOSE}"


def on_marks(start_s: float, end_s: float, every_s: float, clip_s: float) -> tuple[float, float]:
    """``(start_s, end_s)`` widened to the time marks around it (multiples of ``every_s``), the end at most the
    clip's: a span whose ends a model with time marks reads off the marks' text instead of counting audio rows."""
    scale = 10 ** SPAN_DECIMALS
    start = math.floor(start_s / every_s + 1e-9) * every_s
    end = min(math.ceil(end_s / every_s - 1e-9) * every_s, math.floor(clip_s * scale + 1e-6) / scale)
    return round(start, SPAN_DECIMALS), round(end, SPAN_DECIMALS)  # the clip's end rounded down: never past it


def format_marks_span(start_s: float, end_s: float) -> str:
    """A span on the marks' grid written as the marks write a time (``<seg>2.0, 4.5</seg>``, as in ``"2.0s"``); an
    end that is not a multiple of 0.1 s (the clip's end) keeps ``SPAN_DECIMALS``."""
    text = [f"{x:.1f}" if abs(x * 10 - round(x * 10)) < 1e-6 else f"{x:.{SPAN_DECIMALS}f}" for x in (start_s, end_s)]
    return f"{SEG_OPEN}{text[0]}, {text[1]}{SEG_CLOSE}"


def seg_bodies(text: str) -> list[str]:
    """The body of every closed ``<seg>…</seg>`` in ``text``, in order, as written."""
    return SEG_BLOCK.findall(text)


def last_seg_text(text: str) -> str | None:
    """The text between the last ``<seg>`` and the closing ``</seg>`` that ends ``text``; None if there is none."""
    if not text.endswith(SEG_CLOSE):
        return None
    body = text[: -len(SEG_CLOSE)]
    start = body.rfind(SEG_OPEN)
    return None if start < 0 else body[start + len(SEG_OPEN):]


def find_seg_close(text: str, new_from: int) -> int | None:
    """End index (exclusive) of the first ``</seg>`` in ``text`` that ends after ``text[:new_from]``, the part
    already seen; None when there is none. The tag may start in the seen part and end inside a token that also
    holds what follows it (``</seg>.`` or ``</seg><`` as one token)."""
    pos = text.find(SEG_CLOSE, max(0, new_from - len(SEG_CLOSE) + 1))
    return None if pos < 0 else pos + len(SEG_CLOSE)


def split_cot(cot: str) -> tuple[str, str] | None:
    """``(thinking, answer)`` of a reference chain of thought ``<think>…</think><answer>…</answer>``; None if it is
    not in that format."""
    m = COT.match(cot.strip())
    return None if m is None else (m.group(1), m.group(2).strip())


def format_cot(thinking: str, answer: str) -> str:
    """A reference chain of thought: ``<think>thinking</think><answer>answer</answer>``."""
    return f"{THINK_OPEN}{thinking}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


@dataclasses.dataclass(frozen=True)
class TimeMarks:
    """Time written into an audio run, so that a model reads where a sound is instead of counting audio tokens.

    A run of ``n`` audio rows that starts at ``start_s`` seconds of the clip is laid out as the mark of
    ``start_s``, then the rows, with the mark of every multiple of ``every_s`` inside the run put before the row
    that starts there (row ``j`` starts at ``start_s + j / tokens_per_s``). A mark is the text ``"3.0s"`` (the time
    to 0.1 s), as the tokenizer's ids of its single characters (``char_ids``), so it reads the same in the clip,
    in a re-listened span and after any text. The prompt's clip starts at 0; a re-listened span at its own start.
    """

    every_s: float
    tokens_per_s: float
    char_ids: tuple[tuple[str, int], ...]  # (character, token id) for "0123456789.s"

    CHARS: ClassVar[str] = "0123456789.s"

    def __post_init__(self):
        if not (math.isfinite(self.every_s) and self.every_s > 0 and self.tokens_per_s > 0):
            raise ValueError(f"time marks need every_s > 0 and tokens_per_s > 0, got {self.every_s}, "
                             f"{self.tokens_per_s}")
        missing = set(self.CHARS) - {c for c, _ in self.char_ids}
        if missing:
            raise ValueError(f"time marks need a token id for each of {sorted(missing)}")

    def mark(self, t: float) -> list[int]:
        ids = dict(self.char_ids)
        return [ids[c] for c in time_mark_text(t)]

    def run(self, num_tokens: int, audio_id: int, start_s: float = 0.0) -> list[int]:
        """The ids of one audio run: marks and ``num_tokens`` audio tokens."""
        at = {0: start_s}
        k = math.floor(start_s / self.every_s + 1e-9) + 1
        while True:  # the multiples of every_s after start_s, at the row that starts there
            j = round((k * self.every_s - start_s) * self.tokens_per_s)
            if j >= num_tokens:
                break
            if j > 0:
                at[j] = k * self.every_s
            k += 1
        rows = sorted(at)  # each mark's row, then the rows up to the next mark
        out = []
        for j, nxt in zip(rows, rows[1:] + [num_tokens]):
            out += self.mark(at[j]) + [audio_id] * (nxt - j)
        return out


def time_mark_text(t: float) -> str:
    """The text of a time mark: ``"3.0s"``."""
    return f"{max(t, 0.0):.1f}s"


def audio_run_ids(num_audio_tokens: int, audio_id: int, start_s: float = 0.0,
                  marks: TimeMarks | None = None) -> list[int]:
    """The ids standing for one audio: ``<|AUDIO|> x n``, with the time marks laid in when the model has them."""
    return [audio_id] * num_audio_tokens if marks is None else marks.run(num_audio_tokens, audio_id, start_s)


def splice_ids(num_audio_tokens: int, bos_id: int | None, audio_id: int, eos_id: int | None, start_s: float = 0.0,
               marks: TimeMarks | None = None) -> list[int]:
    """The ids a re-listen inserts after ``</seg>``: ``<|audio_bos|> <|AUDIO|> x n <|audio_eos|>`` (with the span's
    time marks inside when the model has them); a family without bos/eos tokens (None) lays its audio out bare,
    as its processor does (Audio Flamingo 3)."""
    run = audio_run_ids(num_audio_tokens, audio_id, start_s, marks)
    return ([] if bos_id is None else [bos_id]) + run + ([] if eos_id is None else [eos_id])


def audio_pieces(ids: Sequence[int], audio_id: int, first: int, num_audio_tokens: int
                 ) -> tuple[tuple[int, int, int], ...]:
    """Where the rows of one audio run go: ``(token offset from first, first row, end row)`` for each block of
    consecutive ``<|AUDIO|>`` tokens from ``ids[first]`` on, until ``num_audio_tokens`` rows are placed (time marks
    sit between the blocks)."""
    pieces, row, i = [], 0, first
    while row < num_audio_tokens:
        if i >= len(ids):
            raise ValueError(f"the audio run from {first} has {row} of its {num_audio_tokens} <|AUDIO|> tokens")
        if ids[i] != audio_id:
            i += 1
            continue
        j = i
        while j < len(ids) and ids[j] == audio_id and row + j - i < num_audio_tokens:
            j += 1
        pieces.append((i - first, row, row + j - i))
        row += j - i
        i = j
    return tuple(pieces)


def without_audio_runs(ids: Sequence[int], bos_id: int | None, eos_id: int | None) -> list[int]:
    """``ids`` less everything from each ``<|audio_bos|>`` to its ``<|audio_eos|>``: the text of a response whose
    re-listens spliced audio (and time marks) in."""
    if bos_id is None or eos_id is None or bos_id not in ids:
        return list(ids)
    out, inside = [], False
    for t in ids:
        if t == bos_id:
            inside = True
        elif t == eos_id and inside:
            inside = False
        elif not inside:
            out.append(t)
    return out
