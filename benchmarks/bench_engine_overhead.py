"""Engine overhead per decode step: the wall time of ``Engine.step`` minus the time spent in the model's own calls
(``embed`` or ``embed_gathered``, ``forward_flat``, ``compute_logits``), on a tiny random model whose arithmetic costs almost nothing.
That remainder (scheduling, per-step metadata, sampling, stop checks, bookkeeping) is what a GPU run pays on top
of its roofline, so it is measured at batch 1, 8 and 64, greedy, with fixed lengths (EOS ignored, re-listening
off), every prompt prefilled before the timed steps. Torch runs one thread, so the step's CPU time is all on the
calling thread: that CPU time is the figure (a loaded host's other processes do not count in it); wall time is
printed too.

It runs against any checkout (only public names and ``Engine.step`` are used):
  PYTHONPATH=<checkout>/src python benchmarks/bench_engine_overhead.py             # this checkout alone
  python benchmarks/bench_engine_overhead.py --checkouts A B --rounds 3             # A and B alternating, one run
The second form builds one checkpoint, then runs each checkout in its own process (``PYTHONPATH=<checkout>/src``),
alternating A, B, A, B ... so both see the same load, and prints the median of the rounds side by side with the
machine line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCHES = (1, 8, 64)
PRESET = "omni-tiny-gqa2"


def _timed(fn, spent: list[float]):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t
            spent[1] += time.thread_time() - c

    return wrapper


def measure(checkpoint: str, batch: int, steps: int) -> dict:
    """Medians over ``steps`` decode steps (microseconds) of the step's time, the model's calls' time and their
    difference, as CPU time of this thread (torch runs one thread here, so that is all the step's work, and other
    processes on a loaded host do not count) and as wall time."""
    import numpy as np
    import torch

    import echo
    from echo.config import EngineConfig, RelistenPolicy, SamplingParams
    from echo.engine.llm import Engine

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the tiny model's ops gain nothing from threads; one keeps a loaded host's noise down
    model = echo.load(checkpoint)
    spent = [0.0, 0.0]  # wall, thread CPU
    for name in ("embed", "embed_gathered", "forward_flat", "compute_logits"):  # instance attributes shadow methods
        if hasattr(model, name):  # embed_gathered: checkouts whose engine gathers the audio rows
            object.__setattr__(model, name, _timed(getattr(model, name), spent))
    engine = Engine(model, EngineConfig(num_blocks=batch * 8 + 64, max_num_seqs=max(batch, 1),
                                        max_num_batched_tokens=4096, relisten=RelistenPolicy(max_turns=0)))
    clip = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)).astype(np.float32)
    params = SamplingParams(temperature=0, max_new_tokens=steps + 16, ignore_eos=True)
    for i in range(batch):
        engine.add_request(clip, f"Question {i}: what is heard?", params)
    sched = engine.scheduler
    while sched.waiting or any(s.num_cached < len(s.token_ids) - 1 for s in sched.running):  # prefill everything
        engine.step()
    assert len(sched.running) == batch, "every request must be decoding before the timed steps"
    wall, cpu, model_wall, model_cpu = [], [], [], []
    for _ in range(steps):
        spent[:] = [0.0, 0.0]
        t, c = time.perf_counter(), time.thread_time()
        finished = engine.step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
        model_wall.append(spent[0])
        model_cpu.append(spent[1])
        assert not finished, "a sequence finished during the timed steps: lengths were not fixed"

    def us(xs):
        return statistics.median(xs) * 1e6

    return {"batch": batch, "model_us": us(model_cpu), "overhead_us": us([a - b for a, b in zip(cpu, model_cpu)]),
            "wall_model_us": us(model_wall), "wall_overhead_us": us([a - b for a, b in zip(wall, model_wall)])}


def _child(args) -> None:
    print(json.dumps([measure(args.checkpoint, b, args.steps) for b in args.batches]))


def _build_checkpoint(path: Path) -> None:
    from echo.models.tiny import make_checkpoint

    make_checkpoint(path, PRESET)


def _run_checkout(checkout: str, checkpoint: str, args) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(Path(checkout) / "src"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--child", "--checkpoint", checkpoint, "--steps", str(args.steps),
           "--batches", *map(str, args.batches)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _commit(checkout: str) -> str:
    try:
        return subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkouts", nargs="+", default=[str(HERE.parent)], help="repository roots to compare")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs per checkout (medians reported)")
    parser.add_argument("--steps", type=int, default=64, help="timed decode steps per batch size")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--checkpoint", help="an existing checkpoint directory (default: a fresh tiny one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    sys.path.insert(0, str(HERE))
    from machine import describe

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or tmp
        if args.checkpoint is None:
            _build_checkpoint(Path(tmp))
        runs: dict[str, list[list[dict]]] = {c: [] for c in args.checkouts}
        for r in range(args.rounds):
            for c in args.checkouts:
                runs[c].append(_run_checkout(c, checkpoint, args))
                print(f"round {r + 1}/{args.rounds} {c}: overhead (CPU) " + ", ".join(
                    f"b{m['batch']} {m['overhead_us']:.0f} us" for m in runs[c][-1]), flush=True)
    print(f"\nengine overhead per decode step ({PRESET}, greedy, 1 torch thread, {args.steps} steps, median of "
          f"{args.rounds} round(s)); machine: {describe()}")
    for key, what in (("", "CPU time of the step's thread"), ("wall_", "wall time (counts other processes' load)")):
        print(f"\n{what}: overhead per step (model's calls)")
        head = "| batch | " + " | ".join(f"{Path(c).name} @{_commit(c)}" for c in args.checkouts)
        print(head + (" | ratio first/last |" if len(args.checkouts) > 1 else " |"))
        print("|---:|" + "---:|" * (len(args.checkouts) + (len(args.checkouts) > 1)))
        for i, b in enumerate(args.batches):
            cells, medians = [], []
            for c in args.checkouts:
                over = statistics.median(run[i][key + "overhead_us"] for run in runs[c])
                model = statistics.median(run[i][key + "model_us"] for run in runs[c])
                cells.append(f"{over:,.0f} us ({model:,.0f} us)")
                medians.append(over)
            ratio = f" {medians[0] / medians[-1]:.2f}x |" if len(medians) > 1 else ""
            print(f"| {b} | " + " | ".join(cells) + " |" + ratio)


if __name__ == "__main__":
    main()
