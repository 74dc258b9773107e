"""``echo generate --input requests.jsonl --out results.jsonl``: a batch of requests through one engine.

Everything that can be checked is checked before the model is loaded and the KV cache allocated: the output is
writable, every input line is a JSON object with ``audio`` and ``prompt`` and valid sampling fields. Each result is
appended to the output (fsync'd) as soon as its request finishes, so a kill loses only requests in flight, and
rerunning the same command skips the input lines already written (each result carries its input line's
``index``, and ``warnings``: what was changed to serve it, e.g. a truncated clip). Once every line is done the
output is rewritten in input order, so an interrupted and resumed run ends with the same file as an uninterrupted
one.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .durable import (append_row, check_writable_dir, drop_partial_line, read_jsonl, read_object_lines, require_file,
                      write_atomic)
from .errors import ConfigError, EchoError

_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_new_tokens", "seed")


def read_requests(path: str, defaults) -> list[tuple[int, dict, Any]]:
    """(input line index, row, SamplingParams) of every request line; raises EchoError naming the line at fault."""
    from .config import SamplingParams

    require_file(path, "requests file")
    out = []
    for n, row in read_object_lines(path):
        if "audio" not in row or "prompt" not in row:
            raise EchoError(f"{path} line {n}: needs 'audio' and 'prompt'")
        fields = {k: row[k] for k in SamplingParams.__dataclass_fields__ if k in row}
        try:
            params = SamplingParams(**{**{k: getattr(defaults, k) for k in _SAMPLING_FIELDS}, **fields})
        except (TypeError, ValueError) as exc:
            raise EchoError(f"{path} line {n}: {exc}") from None
        out.append((len(out), row, params))
    if not out:
        raise EchoError(f"{path}: no requests")
    return out


def result_row(index: int, row: dict, result) -> dict:
    return {"index": index, "id": row.get("id"), "error": result.error, "warnings": list(result.warnings),
            "samples": [{"text": s.text, "finish_reason": s.finish_reason,
                         "relistens": [{"turn": r.turn, "action": r.decision.action, "reason": r.decision.reason,
                                        "requested_s": r.decision.requested_s,
                                        "applied_samples": r.decision.applied_samples,
                                        "num_audio_tokens": r.num_audio_tokens} for r in s.relistens]}
                        for s in result.samples]}


def error_row(index: int, row: dict, message: str) -> dict:
    return {"index": index, "id": row.get("id"), "error": message, "warnings": [], "samples": []}


def row_warnings(out_row: dict) -> list[str]:
    """A result row's warnings as the command prints them, each naming its input line (and id)."""
    name = f"line {out_row['index'] + 1}" + (f" ({out_row['id']})" if out_row.get("id") is not None else "")
    return [f"{name}: {w}" for w in out_row["warnings"]]


def prepare(input_path: str, output_path: str, defaults) -> tuple[list, dict[int, dict]]:
    """Validate the requests and the output before any model time; returns (pending requests, rows done)."""
    requests = read_requests(input_path, defaults)
    if os.path.isdir(output_path):
        raise IsADirectoryError(f"--out {output_path} is a directory, not a file")
    check_writable_dir(os.path.dirname(output_path) or ".", "--out directory")
    drop_partial_line(output_path)
    with open(output_path, "a", encoding="utf-8"):  # fails now, not after hours, on a read-only file
        pass
    done = {int(r["index"]): r for r in read_jsonl(output_path) if isinstance(r.get("index"), int)}
    if done and max(done) >= len(requests):
        raise EchoError(f"{output_path} holds results for {max(done) + 1} input lines but {input_path} has "
                        f"{len(requests)}: it belongs to another input (use another --out)")
    return [r for r in requests if r[0] not in done], done


def run(engine, pending: list, output_path: str, total: int, progress: bool = True) -> tuple[int, int, list[str]]:
    """Decode ``pending`` with continuous batching, appending each result as it finishes; returns (written, errors,
    the written rows' warnings). Requests are admitted as slots free up, so only a bounded number of clips is
    encoded and held at a time."""
    from tqdm import tqdm

    window = 2 * engine.config.max_num_seqs
    queue = list(pending)
    live: dict[int, tuple[int, dict, int]] = {}  # engine request index -> (input index, row, samples left)
    written = errors = 0
    warnings: list[str] = []
    bar = tqdm(total=total, initial=total - len(pending), disable=not progress, desc="generate", unit="request")
    with open(output_path, "a", encoding="utf-8") as f, bar:
        def emit(out_row: dict) -> None:
            nonlocal written, errors
            append_row(f, out_row)
            written += 1
            errors += out_row["error"] is not None
            warnings.extend(row_warnings(out_row))
            bar.update(1)

        while queue or live:
            while queue and len(live) < window:
                index, row, params = queue.pop(0)
                try:
                    rid = engine.add_request(row["audio"], row["prompt"], params)
                except EchoError as exc:  # a bad request is reported in its row; the batch goes on
                    emit(error_row(index, row, str(exc)))
                    continue
                live[rid] = (index, row, params.n)
            if not live:
                continue
            for seq in engine.step():
                index, row, left = live[seq.request_index]
                if left > 1:
                    live[seq.request_index] = (index, row, left - 1)
                    continue
                del live[seq.request_index]
                emit(result_row(index, row, engine.result(seq.request_index)))
    return written, errors, warnings


def finish(output_path: str, total: int) -> None:
    """Every input line done: rewrite the output in input order (one row per line, no duplicates)."""
    rows = {int(r["index"]): r for r in read_jsonl(output_path) if isinstance(r.get("index"), int)}
    if len(rows) == total:
        write_atomic(output_path, "".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in range(total)))


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before anything is loaded."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: echo runs on cpu or cuda")
