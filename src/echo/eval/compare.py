"""``echo eval --compare``: two runs' predictions on the items both hold, side by side: both accuracies and the paired
exact McNemar test, overall and per the benchmark's first breakdown dimension (MMAU / synthetic: task; MMAR:
modality). Typical use: a run against its ``--audio silence`` or ``shuffled`` control, or one checkpoint against
another.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from ..durable import read_json_rows, write_atomic
from ..errors import EchoError
from ..stats import mcnemar
from .runner import MERGED_FILE
from ..answers import prediction_correct
from .scoring import BENCHMARKS, group_key


def read_records(path: str | os.PathLike) -> list[dict]:
    """Prediction records from a predictions file (a JSON list or JSONL, gzipped when it ends in ``.gz``) or from an
    ``echo eval`` output directory (its ``predictions.json``).

    Raises:
        EchoError: missing file or directory, a directory without predictions.json, not JSON, not a list of
            objects, or no records.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        merged = os.path.join(path, MERGED_FILE)
        if not os.path.isfile(merged):
            raise EchoError(f"{path}: no {MERGED_FILE} in this directory (not a finished `echo eval` output?)")
        path = merged
    if not os.path.isfile(path):
        raise EchoError(f"{path}: predictions file not found")
    try:
        records, bad = read_json_rows(path)
    except json.JSONDecodeError as exc:
        raise EchoError(f"{path}: not JSON or JSONL (line {exc.lineno}: {exc.msg})") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # a corrupt or truncated .gz
        raise EchoError(f"{path}: cannot read ({exc})") from None
    if bad:
        raise EchoError(f"{path}: not JSON or JSONL (line {bad[0][0]}: {bad[0][1]})")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise EchoError(f"{path}: expected a list of JSON objects")
    if not records:
        raise EchoError(f"{path}: no predictions to score (the file is empty)")
    return records


def compare(mine: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]], benchmark: str,
            labels: tuple[str, str] = ("this", "other")) -> dict[str, Any]:
    """Both accuracies and McNemar's exact p (:func:`echo.stats.mcnemar`) over the ids both record lists hold,
    scored by the official rule; overall and per the benchmark's first breakdown dimension.

    Raises:
        EchoError: no shared ids (with an answer to score), or a shared id whose ``answer`` or ``choices`` differ
            ("mismatched predictions files": not the same items).
    """
    if benchmark not in BENCHMARKS:
        raise EchoError(f"unknown benchmark {benchmark!r}; expected one of {sorted(BENCHMARKS)}")
    key, dim = BENCHMARKS[benchmark]["prediction_key"], BENCHMARKS[benchmark]["dims"][0]
    a, b = _by_id(mine), _by_id(other)
    shared = [i for i in a if i in b]
    for i in shared:
        for field in ("answer", "choices"):
            if a[i].get(field) != b[i].get(field):
                raise EchoError(f"mismatched predictions files: item {i!r} has {field} {a[i].get(field)!r} in "
                                f"{labels[0]} but {b[i].get(field)!r} in {labels[1]}")
    scored = [i for i in shared if _scorable(a[i], key) and _scorable(b[i], key)]
    if not scored:
        raise EchoError(f"no shared ids: {labels[0]} and {labels[1]} have no scored item in common "
                        "(the same benchmark's predictions?)")
    right_a = {i: _correct(a[i], key) for i in scored}
    right_b = {i: _correct(b[i], key) for i in scored}
    groups: dict[str, list[str]] = {}
    for i in scored:
        name = group_key(a[i].get(dim))
        if name is not None:
            groups.setdefault(name, []).append(i)
    return {
        "benchmark": benchmark, "this": labels[0], "other": labels[1], "by": dim,
        "only_in_this": len(a) - len(shared), "only_in_other": len(b) - len(shared),
        "overall": _row(scored, right_a, right_b),
        "groups": {name: _row(ids, right_a, right_b) for name, ids in sorted(groups.items())},
    }


def _by_id(records: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for r in records:
        if "id" in r:
            out.setdefault(str(r["id"]), r)  # first one wins, as the runner reads its shards
    return out


def _scorable(record: Mapping[str, Any], key: str) -> bool:
    return key in record and record.get("answer") is not None  # what score_records counts


def _correct(record: Mapping[str, Any], key: str) -> bool:
    return prediction_correct(record["answer"], record[key] if record[key] is not None else "",
                              record.get("choices") or [])


def _row(ids: list[str], right_a: dict[str, bool], right_b: dict[str, bool]) -> dict[str, Any]:
    gain, loss, p = mcnemar({i: right_a[i] for i in ids}, {i: right_b[i] for i in ids})
    return {"items": len(ids), "accuracy": sum(right_a[i] for i in ids) / len(ids),
            "other_accuracy": sum(right_b[i] for i in ids) / len(ids),
            "only_this_correct": gain, "only_other_correct": loss, "p": p}


def compare_markdown(result: Mapping[str, Any]) -> str:
    """The comparison as a markdown table: one row for all shared items, then one per group."""
    o = result["overall"]
    lines = [
        f"## Compared with {result['other']}",
        "",
        f"{o['items']} items in both (only in this run: {result['only_in_this']}; only in the other: "
        f"{result['only_in_other']}); p: exact McNemar test on the items exactly one of them gets right.",
        "",
        f"| {result['by']} | items | accuracy (%) | other (%) | only this right | only other right | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in [("all", o), *result["groups"].items()]:
        lines.append(f"| {name} | {r['items']} | {100 * r['accuracy']:.2f} | {100 * r['other_accuracy']:.2f} | "
                     f"{r['only_this_correct']} | {r['only_other_correct']} | {r['p']:.4g} |")
    return "\n".join(lines) + "\n"


def write_compare(result: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[str, str]:
    """``compare.json`` and ``compare.md`` in ``out_dir``."""
    out_dir = os.fspath(out_dir)
    json_path, md_path = os.path.join(out_dir, "compare.json"), os.path.join(out_dir, "compare.md")
    write_atomic(json_path, json.dumps(result, indent=2, allow_nan=False))
    write_atomic(md_path, compare_markdown(result))
    return json_path, md_path
