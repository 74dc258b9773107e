"""Scoring exactly as the official MMAU and MMAR scripts do, per task / difficulty / category / sub-category / modality.

Both official scripts read one prediction string per item (MMAU: ``model_output``; MMAR: ``answer_prediction``) and
call it correct when every lower-cased word token of the answer is in it and none of the tokens that only wrong
choices have is (:func:`string_match`). Items without the prediction key are skipped, as those scripts skip them;
echo always writes the key (``""`` when nothing was extractable), so its "no answer" items count as wrong and are
also reported separately.

Next to each accuracy the summary gives uniform chance (the mean of ``1 / len(choices)``) and the Wilson 95% interval;
over the whole run, how answers use the audio (:func:`grounding_metrics`) and which ``--audio`` control it heard.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..answers import prediction_correct, word_tokens
from ..protocol import cited_span_ious
from ..stats import uniform_chance, wilson

# Per benchmark: the key the official scorer reads, and the record fields accuracy is broken down by
# (the official scripts' dimensions first; ``category`` on MMAU is echo's addition, the official script has none).
BENCHMARKS: dict[str, dict[str, Any]] = {
    "mmau-test-mini": {"prediction_key": "model_output", "dims": ("task", "difficulty", "sub-category", "category")},
    "mmau-test": {"prediction_key": "model_output", "dims": ("task", "difficulty", "sub-category", "category")},
    "mmar": {"prediction_key": "answer_prediction", "dims": ("modality", "category", "sub-category")},
    "synthetic": {"prediction_key": "model_output", "dims": ("task", "difficulty")},
}

# Column order of the paper's result tables (Echo, Table 1-2): MMAU by task, MMAR by modality; then the average.
PAPER_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mmau-test-mini": ("task", ("sound", "music", "speech")),
    "mmau-test": ("task", ("sound", "music", "speech")),
    "mmar": (
        "modality",
        (
            "sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
            "mix-sound-music-speech",
        ),
    ),
}


@dataclass(slots=True)
class Tally:
    """Correct / total counts of one group, plus how many of its items had no extractable answer, and each item's
    choices (what a uniform guesser's accuracy depends on)."""

    correct: int = 0
    total: int = 0
    no_answer: int = 0
    choice_lists: list[Sequence[Any]] = field(default_factory=list, repr=False)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def chance(self) -> float:
        """Uniform chance: the mean of ``1 / len(choices)`` over the group's items."""
        return uniform_chance(self.choice_lists)

    @property
    def ci95(self) -> tuple[float, float]:
        """The Wilson 95% interval of the accuracy."""
        return wilson(self.correct, self.total)

    def as_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "total": self.total, "accuracy": self.accuracy, "no_answer": self.no_answer,
                "chance": self.chance, "ci95": list(self.ci95)}


@dataclass(slots=True)
class Score:
    """Everything :func:`score_records` computes. Accuracies are fractions in [0, 1]."""

    benchmark: str
    overall: Tally = field(default_factory=Tally)
    breakdown: dict[str, dict[str, Tally]] = field(default_factory=dict)
    not_predicted: int = 0  # records without the prediction key (skipped, as the official scripts skip them)
    no_ground_truth: int = 0  # records without an answer (MMAU test: answers withheld; submit predictions instead)
    audio_control: str = "original"  # what the model heard (``echo eval --audio``); "mixed" if the records disagree
    grounding: dict[str, Any] = field(default_factory=dict)  # see grounding_metrics
    warnings: dict[str, list[str]] = field(default_factory=dict)  # item id -> the engine's warnings (truncated clip)

    def paper_row(self) -> dict[str, float | None] | None:
        """Accuracy per column of the paper's table (percent; None for a column without items), or None when the
        benchmark has no such table."""
        spec = PAPER_COLUMNS.get(self.benchmark)
        if spec is None:
            return None
        dim, columns = spec
        groups = self.breakdown.get(dim, {})
        row: dict[str, float | None] = {col: 100.0 * groups[col].accuracy if col in groups else None for col in columns}
        row["avg"] = 100.0 * self.overall.accuracy
        return row

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "overall": self.overall.as_dict(),
            "not_predicted": self.not_predicted,
            "no_ground_truth": self.no_ground_truth,
            "breakdown": {
                dim: {name: tally.as_dict() for name, tally in sorted(groups.items())}
                for dim, groups in self.breakdown.items()
            },
            "paper_row": self.paper_row(),
            "audio_control": self.audio_control,
            **self.grounding,
            "warnings": {"count": len(self.warnings), "items": self.warnings},
        }


def group_key(value: Any) -> str | None:
    """A record field as a group name: lists (a few MMAU items have ``"category": ["Reasoning"]``) are joined."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def score_records(records: Sequence[Mapping[str, Any]], benchmark: str) -> Score:
    """Score prediction records (original benchmark fields + the benchmark's prediction key).

    ``no_answer`` is taken from the record's ``no_answer`` flag when echo wrote it, else it means a prediction
    string without any word token (what the official rule can never count as correct).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(BENCHMARKS)}")
    key = BENCHMARKS[benchmark]["prediction_key"]
    dims = BENCHMARKS[benchmark]["dims"]
    result = Score(benchmark=benchmark, breakdown={dim: defaultdict(Tally) for dim in dims})
    scored = []
    for record in records:
        if key not in record:
            result.not_predicted += 1
            continue
        if record.get("answer") is None:
            result.no_ground_truth += 1
            continue
        prediction = record[key] if record[key] is not None else ""
        correct = prediction_correct(record["answer"], prediction, record.get("choices") or [])
        no_answer = bool(record["no_answer"]) if "no_answer" in record else not word_tokens(prediction)
        tallies = [result.overall]
        for dim in dims:
            name = group_key(record.get(dim))
            if name is not None:
                tallies.append(result.breakdown[dim][name])
        for tally in tallies:
            tally.total += 1
            tally.correct += int(correct)
            tally.no_answer += int(no_answer)
            tally.choice_lists.append(record.get("choices") or [])
        scored.append(record)
    result.breakdown = {dim: dict(groups) for dim, groups in result.breakdown.items() if groups}
    result.audio_control = audio_control_mode(records)
    result.grounding = grounding_metrics(scored)
    result.warnings = {str(r.get("id")): list(r["warnings"]) for r in records if r.get("warnings")}
    return result


def audio_control_mode(records: Iterable[Mapping[str, Any]]) -> str:
    """The ``--audio`` mode the records were generated with (``original`` when they carry none), or ``mixed``."""
    modes = {(r.get("audio_control") or {}).get("mode", "original") for r in records}
    return modes.pop() if len(modes) == 1 else "mixed" if modes else "original"


def grounding_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How the scored ``records`` use the audio, beyond accuracy (None where no record can tell):

    * over records with ground-truth ``spans`` and a response: spans cited per answer, their mean IoU with the best
      ground-truth span (:func:`echo.protocol.cited_span_ious`), and the share of cited spans that overlap one;
    * over records with ``relistens`` (written from the engine's results): spans re-listened to per answer.
    """
    ious: list[float] = []
    answers = 0
    for r in records:
        response = r.get("response", r.get("model_response"))
        if r.get("spans") is not None and response is not None:
            answers += 1
            ious += cited_span_ious(str(response), r["spans"])
    engine = [r["relistens"] for r in records if isinstance(r.get("relistens"), (int, float))]
    return {
        "spans_cited_per_answer": len(ious) / answers if answers else None,
        "span_iou": sum(ious) / len(ious) if ious else None,
        "span_hit_rate": sum(x > 0 for x in ious) / len(ious) if ious else None,
        "relistens_per_answer": sum(engine) / len(engine) if engine else None,
    }


def summary_markdown(score: Score) -> str:
    """A human-readable summary: overall line, the paper's table row, then one table per breakdown dimension."""
    o = score.overall
    lo, hi = o.ci95
    lines = [
        f"# {score.benchmark}" + ("" if score.audio_control == "original" else f" (audio: {score.audio_control})"),
        "",
        f"Accuracy: **{100 * o.accuracy:.2f}%** ({o.correct}/{o.total}; 95% CI {100 * lo:.1f}-{100 * hi:.1f}%, "
        f"chance {100 * o.chance:.1f}%); no extractable answer: {o.no_answer}"
        + (f"; not predicted: {score.not_predicted}" if score.not_predicted else "")
        + (f"; without ground truth: {score.no_ground_truth}" if score.no_ground_truth else ""),
        "",
    ]
    g = score.grounding
    if g.get("spans_cited_per_answer") is not None:
        lines.append(f"Cited spans per answer: {g['spans_cited_per_answer']:.2f}"
                     + ("" if g["span_iou"] is None else f"; span IoU {g['span_iou']:.3f}; on a ground-truth span "
                        f"{100 * g['span_hit_rate']:.1f}%"))
    if g.get("relistens_per_answer") is not None:
        lines.append(f"Re-listens per answer: {g['relistens_per_answer']:.2f}")
    if score.warnings:
        lines.append(f"Items with warnings: {len(score.warnings)} (summary.json lists them)")
    if lines[-1]:
        lines.append("")
    row = score.paper_row()
    if row is not None:
        lines += ["## Paper table", "", "| " + " | ".join(row) + " |", "|" + "---|" * len(row)]
        lines += ["| " + " | ".join("-" if v is None else f"{v:.2f}" for v in row.values()) + " |", ""]
    for dim, groups in score.breakdown.items():
        lines += [f"## By {dim}", "", f"| {dim} | accuracy (%) | chance (%) | correct | total | no answer |",
                  "|---|---|---|---|---|---|"]
        for name, t in sorted(groups.items()):
            lines.append(f"| {name} | {100 * t.accuracy:.2f} | {100 * t.chance:.1f} | {t.correct} | {t.total} | "
                         f"{t.no_answer} |")
        lines.append("")
    return "\n".join(lines)
