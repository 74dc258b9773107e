"""Run a model over a benchmark: batched, resumable, sharded across processes, scored at the end.

The model is anything with the engine's batched ``generate`` (see :class:`SupportsGenerate`). Predictions go to
``OUT/predictions-<rank>-of-<world>.jsonl``, one line per item, appended and flushed to disk after every batch, so a
crash or kill loses at most the batch in flight; a rerun skips every id already predicted in any shard. Under
torchrun each process (``RANK``/``WORLD_SIZE``) takes every ``world_size``-th item; whichever process finds all items
predicted merges the shards into ``predictions.json`` (the layout the official scorers read) and writes
``summary.json`` / ``summary.md``.

Controls (``RunConfig.audio``): the same items and prompts with the audio taken away (``silence``: zeros as long as
the item's clip) or swapped for another item's clip (``shuffled``: a seeded derangement of the evaluated items,
computed before sharding so every rank agrees). Accuracy that survives them is not coming from the audio. Each
record says what was heard (``audio_control``), and one output directory never mixes modes.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from ..answers import extract_answer
from ..audio.io import SAMPLING_RATE  # what echo.audio.load returns, and so what a silence control is made at
from ..durable import drop_partial_line, read_jsonl, write_atomic
from ..errors import ConfigError
from ..launch import dist_env
from ..protocol import ECHO_PROMPT, build_prompt
from .datasets import Benchmark, EvalItem, check_audio
from .prompts import build_messages
from .scoring import BENCHMARKS, Score, score_records, summary_markdown

SHARD_GLOB_PREFIX = "predictions-"
MERGED_FILE = "predictions.json"
AUDIO_MODES = ("original", "silence", "shuffled")


@dataclass(frozen=True, slots=True)
class EvalRequest:
    """One generation request: ``audio`` is a file path (or, for the silence control, a float32 16 kHz waveform),
    ``prompt`` the user text or chat messages (``prompt_style``)."""

    id: str
    audio: str | np.ndarray
    prompt: str | list[dict]


class GenerationResult(Protocol):
    text: str  # the generated text only (not the prompt), with <seg> tags as the model wrote them


@runtime_checkable
class SupportsGenerate(Protocol):
    """What the runner needs from a model: ``echo.load(dir)`` returns one.

    ``generate(requests, sampling_params)`` takes a list of :class:`EvalRequest`-like objects (``.audio``,
    ``.prompt``) and returns one result per request, in order, each with ``.text``.
    ``sampling_params`` is passed through untouched (``echo.SamplingParams`` for echo's engine).
    """

    def generate(self, requests: Sequence[EvalRequest], sampling_params: Any = None) -> Sequence[Any]: ...


@dataclass(slots=True)
class RunConfig:
    """How to run. ``rank``/``world_size`` default to the ``RANK``/``WORLD_SIZE`` environment (torchrun sets them).

    Attributes:
        batch_size: requests per ``generate`` call (and per flush to disk).
        prompt_style: ``"text"`` (the prompt string; the engine applies the chat template) or ``"messages"``.
        check_audio: how hard to check the audio before generating: ``exists``, ``header`` or ``decode``.
        limit: evaluate only the first ``limit`` items of the benchmark (before sharding).
        audio: what the model hears: ``original``; ``silence`` (zeros of the clip's length); ``shuffled`` (another
            evaluated item's clip, a derangement seeded by ``shuffle_seed``).
        shuffle_seed: seeds the ``shuffled`` derangement (``echo eval`` passes ``--seed``).
    """

    batch_size: int = 16
    prompt_style: str = "text"
    check_audio: str = "header"
    limit: int | None = None
    audio: str = "original"
    shuffle_seed: int = 0
    progress: bool = True
    rank: int | None = None
    world_size: int | None = None
    template: str = ECHO_PROMPT

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.prompt_style not in ("text", "messages"):
            raise ConfigError(f"prompt_style must be 'text' or 'messages', got {self.prompt_style!r}")
        if self.check_audio not in ("exists", "header", "decode"):
            raise ConfigError(f"check_audio must be 'exists', 'header' or 'decode', got {self.check_audio!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        if self.audio not in AUDIO_MODES:
            raise ConfigError(f"audio must be one of {', '.join(AUDIO_MODES)}, got {self.audio!r}")
        env_rank, env_world = dist_env()
        self.rank = env_rank if self.rank is None else self.rank
        self.world_size = env_world if self.world_size is None else self.world_size
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside [0, world_size={self.world_size})")


@dataclass(slots=True)
class RunReport:
    shard_path: str
    generated: int  # items generated by this call
    skipped: int  # items of this shard already predicted before this call
    elapsed_s: float
    score: Score | None = None  # set by the process that merged all shards
    merged_path: str | None = None
    timings: list[float] = field(default_factory=list)  # seconds per batch
    warnings: list[str] = field(default_factory=list)  # "id: warning" of the items generated by this call


def shard_items(items: Sequence[EvalItem], rank: int, world_size: int) -> list[EvalItem]:
    """This process's items: every ``world_size``-th one from ``rank`` (balanced, and stable under resumption)."""
    return list(items[rank::world_size])


def shard_path(out_dir: str | os.PathLike, rank: int, world_size: int) -> str:
    return os.path.join(os.fspath(out_dir), f"{SHARD_GLOB_PREFIX}{rank:05d}-of-{world_size:05d}.jsonl")


def read_predictions(out_dir: str | os.PathLike) -> dict[str, dict]:
    """Every prediction record in ``out_dir``'s shard files, by id (first one wins). A line cut short by a kill is
    ignored (it is overwritten on the next append)."""
    out_dir = os.fspath(out_dir)
    found: dict[str, dict] = {}
    if not os.path.isdir(out_dir):
        return found
    for name in sorted(os.listdir(out_dir)):
        if not (name.startswith(SHARD_GLOB_PREFIX) and name.endswith(".jsonl")):
            continue
        for rec in read_jsonl(os.path.join(out_dir, name)):  # a partial last line: that item was not finished
            if "id" in rec:
                found.setdefault(str(rec["id"]), rec)
    return found


def prediction_record(item: EvalItem, response: str, benchmark: str, result: Any = None,
                      audio_control: dict[str, Any] | None = None) -> dict[str, Any]:
    """The item as published plus the extracted prediction under the key(s) the official scorer reads, the full
    response, and how the answer was extracted; with the engine's ``result`` (a GenerationResult), the number of
    spans it re-listened to (audio inserted, not just cited), the tokens it generated and its seconds (a batch's
    requests share their steps: the time from admission to the last token) and its ``warnings`` (``[]`` without
    any); with ``audio_control`` (a control run), what the model heard instead of the item's clip."""
    ex = extract_answer(response, item.choices)
    rec = dict(item.record)
    rec[BENCHMARKS[benchmark]["prediction_key"]] = ex.prediction
    if benchmark.startswith("mmau"):
        rec["model_prediction"] = ex.prediction  # the key MMAU's README names; identical value
    rec.update(response=response, no_answer=ex.no_answer, extracted_choice=ex.choice_index,
               extraction=f"{ex.source}/{ex.method}")
    sample = (getattr(result, "samples", None) or [None])[0]
    if sample is not None and hasattr(sample, "relistens"):
        rec.update(relistens=sum(bool(r.inserted) for r in sample.relistens),
                   generated_tokens=sum(sample.mask), seconds=round(float(result.seconds), 4))
    if audio_control is not None:
        rec["audio_control"] = audio_control
    rec["warnings"] = list(getattr(result, "warnings", None) or [])  # what the engine changed (a truncated clip)
    return rec


def evaluated_items(benchmark: Benchmark, config: RunConfig) -> list[EvalItem]:
    """The items a run evaluates, across all ranks: the first ``limit`` of the benchmark."""
    return benchmark.items[: config.limit] if config.limit else list(benchmark.items)


def derangement(items: Sequence[EvalItem], seed: int) -> dict[str, EvalItem]:
    """For the shuffled control: item id -> the item whose clip it hears instead. Deterministic in ``seed`` and the
    items' order; no item hears its own clip, nor another item's copy of the same audio file (MMAU asks several
    questions about one clip).

    A seeded shuffle, grouped by audio file (groups in their shuffled order), then each position takes the clip
    ``m`` places on, ``m`` the largest group: no group spans ``m`` places, so none meets itself. With distinct
    files this is a uniformly random cycle through all items.

    Raises:
        ConfigError: fewer than 2 items, or one audio file shared by more than half of them (no such derangement).
    """
    n = len(items)
    if n < 2:
        raise ConfigError(f"--audio shuffled needs at least 2 items to swap clips between, got {n}")
    order = list(items)
    random.Random(seed).shuffle(order)
    first_seen: dict[str, int] = {}
    for k, item in enumerate(order):
        first_seen.setdefault(item.audio_path, k)
    order.sort(key=lambda item: first_seen[item.audio_path])  # stable: shuffled order within a group
    m = max(Counter(item.audio_path for item in order).values())
    if m > n - m:
        raise ConfigError(f"--audio shuffled: {m} of {n} items share one audio file, so they cannot all hear "
                          "another item's clip")
    return {item.id: order[(k + m) % n] for k, item in enumerate(order)}


def audio_plan(benchmark: Benchmark, config: RunConfig) -> dict[str, EvalItem] | None:
    """The shuffled control's derangement over all evaluated items (so every rank computes the same), else None."""
    if config.audio != "shuffled":
        return None
    return derangement(evaluated_items(benchmark, config), config.shuffle_seed)


def pending_items(benchmark: Benchmark, out_dir: str | os.PathLike, config: RunConfig) -> list[EvalItem]:
    """This process's items (after ``limit`` and sharding) that no shard in ``out_dir`` has predicted yet.

    Raises:
        ConfigError: ``out_dir`` holds predictions made with another ``audio`` mode (or, shuffled, another
            derangement): one directory never mixes what the model heard.
    """
    done = read_predictions(out_dir)
    check_audio_control(done, config, audio_plan(benchmark, config), out_dir)
    items = evaluated_items(benchmark, config)
    return [item for item in shard_items(items, config.rank, config.world_size) if item.id not in done]


def check_audio_control(done: dict[str, dict], config: RunConfig, plan: dict[str, EvalItem] | None,
                        out_dir: str | os.PathLike) -> None:
    """Refuse to add ``config.audio`` predictions to shards holding another mode's (or another derangement's)."""
    for rec in done.values():
        control = rec.get("audio_control") or {}
        held = control.get("mode", "original")
        if held != config.audio:
            raise ConfigError(f"{os.fspath(out_dir)} holds --audio {held} predictions; this run asks for --audio "
                              f"{config.audio} (use another --out: a run never mixes them)")
        if plan is not None and rec["id"] in plan and control.get("from") != plan[rec["id"]].id:
            raise ConfigError(f"{os.fspath(out_dir)} holds --audio shuffled predictions from another derangement "
                              f"(item {rec['id']!r} heard {control.get('from')!r}, now {plan[rec['id']].id!r}): "
                              "rerun with the first run's --seed and --limit, or use another --out")


def heard_items(items: Sequence[EvalItem], plan: dict[str, EvalItem] | None) -> list[EvalItem]:
    """The items whose audio files the model hears for ``items`` (their donors, under the shuffled control)."""
    return list(items) if plan is None else [plan[item.id] for item in items]


def silence_like(path: str) -> np.ndarray:
    """Zeros as long as the clip at ``path`` lasts, at 16 kHz (its length read from the file header)."""
    import soundfile as sf

    info = sf.info(path)
    # as many samples as echo.audio.load's resampling of the clip gives
    return np.zeros(int(round(info.frames * SAMPLING_RATE / info.samplerate)), dtype=np.float32)


def run_eval(
    benchmark: Benchmark,
    model: SupportsGenerate,
    out_dir: str | os.PathLike,
    config: RunConfig | None = None,
    sampling_params: Any = None,
) -> RunReport:
    """Generate predictions for this process's pending items and, once every item is predicted, merge and score.

    Raises:
        BenchmarkError: an audio file of a pending item is missing or unreadable (all of them listed) — before any
            call to the model.
        RuntimeError: the model returned a different number of results than requests.
    """
    config = config or RunConfig()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    items = evaluated_items(benchmark, config)
    mine = shard_items(items, config.rank, config.world_size)
    pending = pending_items(benchmark, out_dir, config)
    plan = audio_plan(benchmark, config)
    check_audio(heard_items(pending, plan), config.check_audio)

    path = shard_path(out_dir, config.rank, config.world_size)
    drop_partial_line(path)
    report = RunReport(shard_path=path, generated=0, skipped=len(mine) - len(pending), elapsed_s=0.0)
    start = time.perf_counter()
    with open(path, "a", encoding="utf-8") as f, _progress(len(pending), benchmark.name, config) as bar:
        for batch in _chunks(pending, config.batch_size):
            t0 = time.perf_counter()
            heard = [_heard(item, config, plan) for item in batch]
            requests = [_request(item, config, audio) for item, (audio, _) in zip(batch, heard)]
            results = list(model.generate(requests, sampling_params))
            if len(results) != len(requests):
                raise RuntimeError(f"model returned {len(results)} results for {len(requests)} requests")
            for item, result, (_, control) in zip(batch, results, heard):
                rec = prediction_record(item, str(result.text), benchmark.name, result, control)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                report.warnings += [f"{item.id}: {w}" for w in rec["warnings"]]
            f.flush()
            os.fsync(f.fileno())  # a finished batch survives a kill -9 or a node failure
            report.generated += len(batch)
            report.timings.append(time.perf_counter() - t0)
            bar.update(len(batch))
    report.elapsed_s = time.perf_counter() - start

    predicted = read_predictions(out_dir)
    if all(item.id in predicted for item in items):
        report.merged_path, report.score = merge_and_score(benchmark, out_dir, items=items, predictions=predicted)
    return report


def merge_and_score(
    benchmark: Benchmark,
    out_dir: str | os.PathLike,
    *,
    items: Sequence[EvalItem] | None = None,
    predictions: dict[str, dict] | None = None,
) -> tuple[str, Score]:
    """Merge the shards into ``predictions.json`` (benchmark order; items never predicted are left out, as they would
    be skipped by the official scorers anyway), score it, and write ``summary.json`` / ``summary.md``."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    items = benchmark.items if items is None else items
    predictions = read_predictions(out_dir) if predictions is None else predictions
    records = [predictions[item.id] for item in items if item.id in predictions]
    merged = os.path.join(out_dir, MERGED_FILE)
    write_atomic(merged, json.dumps(records, ensure_ascii=False, indent=2))
    score = score_records(records, benchmark.name)
    score.not_predicted += len(items) - len(records)
    write_summary(score, out_dir)
    return merged, score


def write_summary(score: Score, out_dir: str | os.PathLike) -> tuple[str, str]:
    """``summary.json`` (machine-readable, fractions) and ``summary.md`` (tables, percent) in ``out_dir``."""
    out_dir = os.fspath(out_dir)
    json_path, md_path = os.path.join(out_dir, "summary.json"), os.path.join(out_dir, "summary.md")
    write_atomic(json_path, json.dumps(score.as_dict(), indent=2, allow_nan=False))
    write_atomic(md_path, summary_markdown(score))
    return json_path, md_path


def _heard(item: EvalItem, config: RunConfig, plan: dict[str, EvalItem] | None) -> tuple[Any, dict | None]:
    """What the model hears for ``item`` under ``config.audio``, and the record's ``audio_control``."""
    if config.audio == "silence":
        return silence_like(item.audio_path), {"mode": "silence"}
    if config.audio == "shuffled":
        donor = plan[item.id]
        return donor.audio_path, {"mode": "shuffled", "from": donor.id}
    return item.audio_path, None


def _request(item: EvalItem, config: RunConfig, audio: Any = None) -> EvalRequest:
    audio = item.audio_path if audio is None else audio
    if config.prompt_style == "messages":
        prompt: str | list[dict] = build_messages(audio, item.question, item.choices, config.template)
    else:
        prompt = build_prompt(item.question, item.choices, config.template)
    return EvalRequest(id=item.id, audio=audio, prompt=prompt)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _progress(total: int, name: str, config: RunConfig):
    if not config.progress:
        return _NoBar()
    from tqdm import tqdm

    desc = f"{name} [{config.rank}/{config.world_size}]" if config.world_size > 1 else name
    return tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True)
