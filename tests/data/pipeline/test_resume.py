"""kill -9 in the middle of each stage, then rerun: the same final files as an uninterrupted run, and no request
sent twice for anything whose answer the killed run had already received (the server's counts say so)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import write_clips
from scripted import plain

from echo.cli import main

N_CLIPS = 8


def args(url: str, audio: Path, meta: Path, out: Path) -> list[str]:
    return ["data", "pipeline", "--audio", str(audio), "--meta", str(meta), "--out", str(out),
            "--caption-endpoint", url, "--caption-model", "omni", "--llm-endpoint", url, "--llm-model", "r1",
            "--concurrency", "2", "--chunk-size", "2", "--no-progress"]


def answered(out: Path) -> set[str]:
    """Digests of the requests whose answers the run had stored (every stage)."""
    rows = []
    for path in sorted((out / "cache").glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]
    return {r["request"] for r in rows}


def kill_during(server, argv: list[str], rule: str, after: int) -> None:
    """Start the pipeline, SIGKILL it once the server has seen ``after`` requests matching ``rule``."""
    proc = subprocess.Popen([sys.executable, "-m", "echo", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while server.counts()["rules"].get(rule, 0) < after:
            assert proc.poll() is None, f"the run ended before {after} {rule} requests"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kill_each_stage_then_resume(server, tmp_path):
    audio, meta = write_clips(tmp_path, N_CLIPS)
    server.script(plain(N_CLIPS))
    assert main(args(server.url, audio, meta, tmp_path / "out_ref")) == 0
    reference = server.counts()["digests"]
    assert len(reference) == N_CLIPS * 3 + N_CLIPS + N_CLIPS * 2 and set(reference.values()) == {1}

    out = tmp_path / "out_kill"
    server.script(plain(N_CLIPS), delay=0.05)
    stored: set[str] = set()
    at_kill = {}  # digest -> times the server had seen it when a kill found its answer stored
    for rule, after in (("caption", 7), ("synth", 3), ("judge", 5)):
        kill_during(server, args(server.url, audio, meta, out), rule, after)
        now = answered(out)
        assert stored <= now and len(now) > len(stored)  # every kill happened after new answers were stored
        stored, seen = now, server.counts()["digests"]
        at_kill.update({d: seen[d] for d in stored if d not in at_kill})
    assert not (out / "export").exists()  # the kills came before the end
    assert main(args(server.url, audio, meta, out)) == 0

    counts = server.counts()["digests"]
    assert set(counts) == set(reference)                  # the same requests as the uninterrupted run ...
    # ... and nothing whose answer was stored before a kill was sent again (only requests in flight at a kill are)
    assert {d: counts[d] for d in at_kill if counts[d] != at_kill[d]} == {}
    assert sum(counts.values()) - len(counts) <= 3 * 2    # at most the requests in flight at each kill re-sent
    for name in ("eaqa_sft.jsonl", "sft_messages.jsonl", "eaqa_rl.jsonl", "eaqa_rl.parquet"):
        assert (out / "export" / name).read_bytes() == (tmp_path / "out_ref" / "export" / name).read_bytes(), name
    assert (out / "report.json").read_bytes() == (tmp_path / "out_ref" / "report.json").read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["filter"]["sft"] == 2 * N_CLIPS
