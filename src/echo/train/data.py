"""SFT records -> token sequences with loss labels, in two formats.

*Grounded*: the assistant's ``<seg>a, b</seg>`` tags are text only. *Interleaved*: right after each ``</seg>``
the span's ``<|audio_bos|> <|AUDIO|>×n <|audio_eos|>`` goes in exactly as the engine inserts it at inference
(the same ``relisten.decide`` and RelistenPolicy, the same token count for the span, so the same tokens at the
same positions); its n rows are the span's audio embeddings. The text up to each ``</seg>`` is tokenized on its
own, so no token straddles the tag: what the engine does with a sampled token that does (engine/postprocess.py:
``_cut_at_seg``), and what follows the splice starts a fresh tokenization, as after a re-listen. A clip
longer than the feature extractor's maximum is the part the model hears (its first ``chunk_length`` seconds, the
engine's ``long_audio="truncate"``); tags past it do not fit the clip. Labels are the token ids on the assistant's tokens
(up to and including ``<|im_end|>``) and -100 on the prompt and on every inserted audio token.

Records come in two layouts: the messages-JSONL of common SFT tools (``{"messages": [user with "<audio>",
assistant], "audios": [path]}``) and echo's synthetic JSONL (audio, question, choices, answer, cot; checked by
``formats.check_record``). A malformed line is skipped and reported (line and reason) and a run fails when more
than ``SFTConfig.max_bad_share`` of them are; a record whose audio is missing or unreadable, whose tags lie
outside its clip or do not parse, or whose sequence exceeds ``max_len`` is skipped and reported (id and reason);
it never stops a run.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterable, Literal

from ..audio import FeatureConfig, load as load_audio
from ..audio.features import min_audio_samples, num_mel_frames
from ..audio.io import SAMPLING_RATE
from ..config import RelistenPolicy
from ..engine.admission import truncation_warning
from ..engine.relisten import decide
from ..protocol import SEG_CLOSE, build_prompt
from ..data.item import QuestionItem
from ..data.formats import check_record
from ..durable import BadLine, read_lines, require_file
from ..errors import EchoError

IGNORE = -100
Format = Literal["grounded", "interleaved"]


@dataclasses.dataclass(slots=True)
class SFTRecord:
    id: str
    audio: str
    user: str        # the user's text (the audio comes first, as in Echo's prompts)
    assistant: str   # "<think>… <seg>a, b</seg> …</think><answer>…</answer>"


@dataclasses.dataclass(slots=True)
class SFTExample:
    """One training sequence. ``audio_spans`` lists, in order, the (start_sample, end_sample) of every audio whose
    tokens appear in ``input_ids``: the whole clip first, then each re-listened span (interleaved format)."""

    id: str
    audio: str
    input_ids: list[int]
    labels: list[int]
    audio_spans: list[tuple[int, int]]
    num_samples: int
    warnings: list[str] = dataclasses.field(default_factory=list)  # what was changed to train on it (truncation)


SYNTHETIC_FIELDS = ("id", "audio", "question", "choices", "cot")  # what the synthetic layout needs (check_record)


def read_records(path: str | os.PathLike, skipped: list[tuple[str, str]] | None = None) -> list[SFTRecord]:
    """Messages-JSONL or echo's synthetic JSONL (detected per line); audio paths resolve against the file's folder.
    Synthetic rows go through ``formats.check_record`` (the one checker). A malformed row raises EchoError naming
    its line, or, given ``skipped``, is left out and ``(id, "line N: reason")`` appended there."""
    path = require_file(path, "SFT data file")
    base = Path(path).parent
    out = []
    for n, row in read_lines(path, bad="report" if skipped is not None else "raise"):
        rid = str(row.get("id", f"line{n}")) if isinstance(row, dict) else f"line{n}"
        try:
            if isinstance(row, BadLine):
                raise EchoError(row.problem)
            out.append(_record(row, rid, base))
        except (EchoError, KeyError, TypeError, AttributeError) as exc:  # a field of the wrong type or shape
            reason = str(exc) if isinstance(exc, EchoError) else f"malformed record ({type(exc).__name__}: {exc})"
            if skipped is None:
                raise EchoError(f"{path} line {n} ({rid}): {reason}") from None
            skipped.append((rid, f"line {n}: {reason}"))
    return out


def _record(row: dict, rid: str, base: Path) -> SFTRecord:
    if "messages" in row:
        msgs = row["messages"]
        users = [m["content"] for m in msgs if m.get("role") == "user"]
        answers = [m["content"] for m in msgs if m.get("role") == "assistant"]
        audios = row.get("audios") or []
        if len(users) != 1 or len(answers) != 1 or len(audios) != 1:
            raise EchoError("expected one user turn, one assistant turn and one audio")
        if not all(isinstance(t, str) and t for t in (users[0], answers[0], audios[0])):
            raise EchoError("the user turn, the assistant turn and the audio must be non-empty strings")
        return SFTRecord(rid, str(base / audios[0]), users[0].replace("<audio>", "").strip(), answers[0])
    missing = [k for k in SYNTHETIC_FIELDS[1:] if k not in row]
    if missing:
        raise EchoError(f"neither messages nor synthetic layout; missing {missing}")
    item = QuestionItem.from_row({**row, "id": rid}, base)
    problems = check_record(item, SYNTHETIC_FIELDS)
    if problems:
        raise EchoError("; ".join(problems))
    return SFTRecord(item.id, item.audio, build_prompt(item.question, item.choices), item.cot)


def build_example(record: SFTRecord, processor, fmt: Format = "interleaved", *,
                  features: FeatureConfig = FeatureConfig(), policy: RelistenPolicy = RelistenPolicy(),
                  max_len: int = 8192, num_samples: int | None = None) -> SFTExample:
    """Tokenise one record. Raises EchoError naming the record and the reason when it must be skipped."""
    if num_samples is None:
        num_samples = len(load_audio(record.audio, name=f"{record.id}: {record.audio}"))
    warnings = [truncation_warning(num_samples, features)] if num_samples > features.max_audio_samples else []
    num_samples = min(num_samples, features.max_audio_samples)  # what the encoder hears, as in the engine
    if num_samples < min_audio_samples(features):
        raise EchoError(f"{record.id}: audio of {num_samples} samples is too short to give any audio token")
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": record.audio},
                                                 {"type": "text", "text": record.user}]}]
    prompt = processor(conversation, [num_mel_frames(num_samples, features)])
    ids, labels, spans = list(prompt), [IGNORE] * len(prompt), [(0, num_samples)]
    pieces = record.assistant.split(SEG_CLOSE)
    text_so_far = ""
    for i, piece in enumerate(pieces):
        closes = i < len(pieces) - 1
        chunk = piece + (SEG_CLOSE if closes else "")
        toks = processor.tokenizer.encode(chunk, add_special_tokens=False).ids
        ids += toks
        labels += toks
        text_so_far += chunk
        if not closes:
            break
        d = decide(text_so_far, i, num_samples, policy, min_samples=min_audio_samples(features))
        if d.requested_s is not None and (min(d.requested_s) < 0 or max(d.requested_s) > num_samples / SAMPLING_RATE):
            raise EchoError(f"{record.id}: <seg> tag {i + 1} ({d.text!r}) lies outside the "
                            f"{num_samples / SAMPLING_RATE:.2f} s clip")
        if d.reason in ("malformed", "out of range", "outside clip", "reversed") or d.action == "stop":
            raise EchoError(f"{record.id}: <seg> tag {i + 1} is {d.reason} for a {num_samples / SAMPLING_RATE:.2f} s clip "
                            f"({d.text!r})")
        if fmt == "interleaved" and d.action == "relisten":
            s, e = d.applied_samples
            splice = processor.splice_ids(processor.num_audio_tokens(num_mel_frames(e - s, features)),
                                          s / features.sampling_rate)
            ids += splice
            labels += [IGNORE] * len(splice)
            spans.append((s, e))
    end = processor.tokenizer.token_to_id("<|im_end|>")
    ids.append(end)
    labels.append(end)
    if len(ids) > max_len:
        raise EchoError(f"{record.id}: {len(ids)} tokens exceed max_len={max_len}")
    return SFTExample(record.id, record.audio, ids, labels, spans, num_samples, warnings)


def build_dataset(records: Iterable[SFTRecord], processor, fmt: Format = "interleaved", **kwargs
                  ) -> tuple[list[SFTExample], list[tuple[str, str]]]:
    """Every record that can be used, plus (id, reason) for each skipped one."""
    examples, skipped = [], []
    for record in records:
        try:
            examples.append(build_example(record, processor, fmt, **kwargs))
        except EchoError as exc:
            skipped.append((record.id, str(exc)))
    return examples, skipped
