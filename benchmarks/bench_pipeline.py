"""The data pipeline's own overhead: requests per second held against the loopback scripted server (which answers
at once) at concurrency 1 / 8 / 64, for the bare ``AsyncOpenAI`` client (baseline) and for the caption and judge
stages (cache lookups, fsync'd cache writes, atomic chunks, audio base64); and the resume cost after a kill -9
(requests re-sent, and re-sent although answered).

Run: ``python benchmarks/bench_pipeline.py [--clips 200] [--repeats 3]`` (prints the machine and a table; also
runs under pytest).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import describe  # noqa: E402

TESTS = ROOT / "tests" / "data" / "pipeline"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


async def bare_client(url: str, n: int, concurrency: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            await client.chat.completions.create(model="r1", messages=[
                {"role": "user", "content": f"You check a multiple-choice question {i}"}])

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - t
    await client.close()
    return n / elapsed


def stage_rps(server, scripted, audio, meta, work: Path, stage: str, concurrency: int) -> tuple[float, int]:
    from echo.data.pipeline.caption import run_caption
    from echo.data.pipeline.config import EndpointConfig, PipelineConfig
    from echo.data.pipeline.judge import run_filter

    ep = EndpointConfig(server.url, "omni", concurrency=concurrency)
    cfg = PipelineConfig(audio, work, meta=meta, caption=ep, llm=ep, progress=False, chunk_size=64)
    t = time.perf_counter()
    ctx = run_caption(cfg) if stage == "caption" else run_filter(cfg)
    elapsed = time.perf_counter() - t
    return ctx.usage.requests / elapsed, ctx.usage.requests


def resume_cost(server, scripted, audio, meta, work: Path, n_clips: int) -> dict:
    """kill -9 the whole pipeline once the caption stage has had a third of its answers, then rerun."""
    argv = [sys.executable, "-m", "echo", "data", "pipeline", "--audio", str(audio), "--meta", str(meta), "--out",
            str(work), "--caption-endpoint", server.url, "--caption-model", "omni", "--llm-endpoint", server.url,
            "--llm-model", "r1", "--concurrency", "8", "--no-progress"]
    server.script(scripted.plain(n_clips), delay=0.002)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while server.counts()["rules"].get("caption", 0) < n_clips:
        if proc.poll() is not None:
            raise RuntimeError("the pipeline ended before the kill")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    seen = server.counts()["digests"]
    stored = set()
    for path in (work / "cache").glob("*.jsonl"):
        stored |= {json.loads(x)["request"] for x in path.read_bytes().splitlines(keepends=True) if x.endswith(b"\n")}
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    final = server.counts()["digests"]
    return {"requests": sum(final.values()), "unique": len(final),
            "stored_at_kill": len(stored), "sent_before_kill": sum(seen.values()),
            "resent": sum(final.values()) - len(final),
            "resent_although_answered": sum(final[d] - seen[d] for d in stored)}


def main(clips: int = 200, repeats: int = 3) -> dict:
    fixtures = _load("pipeline_fixtures", TESTS / "conftest.py")
    scripted = _load("scripted", TESTS / "scripted.py")
    server = fixtures.FakeServer()
    results = {"machine": describe(), "clips": clips, "rows": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            audio, meta = fixtures.write_clips(tmp, clips, seconds=2.0)
            for c in (1, 8, 64):
                best = {"bare": 0.0, "caption": 0.0, "judge": 0.0}
                for rep in range(repeats):  # interleaved repeats, best of each: the machine is shared
                    server.script(scripted.plain(clips))
                    best["bare"] = max(best["bare"], asyncio.run(bare_client(server.url, 3 * clips, c)))
                    work = tmp / f"run{c}-{rep}"
                    server.script(scripted.plain(clips))
                    cap, n_cap = stage_rps(server, scripted, audio, meta, work, "caption", c)
                    # the judge stage needs synthesised items: synthesise them first (not timed)
                    from echo.data.pipeline.config import EndpointConfig, PipelineConfig
                    from echo.data.pipeline.synthesize import run_synthesize

                    ep = EndpointConfig(server.url, "r1", concurrency=64)
                    run_synthesize(PipelineConfig(audio, work, meta=meta, llm=ep, progress=False))
                    jud, n_jud = stage_rps(server, scripted, audio, meta, work, "filter", c)
                    best["caption"], best["judge"] = max(best["caption"], cap), max(best["judge"], jud)
                results["rows"].append({"concurrency": c, "bare_client_rps": round(best["bare"], 1),
                                        "caption_rps": round(best["caption"], 1), "caption_requests": n_cap,
                                        "judge_rps": round(best["judge"], 1), "judge_requests": n_jud})
            results["resume"] = resume_cost(server, scripted, audio, meta, tmp / "resume", clips)
    finally:
        server.close()
    print(f"machine: {results['machine']}")
    print(f"{clips} clips of 2 s; loopback scripted server (Python ThreadingHTTPServer, answers at once); "
          f"best of {repeats} interleaved repeats")
    print("| concurrency | bare AsyncOpenAI req/s | caption stage req/s | judge stage req/s |")
    print("|---:|---:|---:|---:|")
    for r in results["rows"]:
        print(f"| {r['concurrency']} | {r['bare_client_rps']} | {r['caption_rps']} ({r['caption_requests']} req) | "
              f"{r['judge_rps']} ({r['judge_requests']} req) |")
    print("resume after kill -9 during captioning:", json.dumps(results["resume"]))
    return results


def test_pipeline_throughput_and_resume():
    results = main(clips=int(os.environ.get("ECHO_BENCH_CLIPS", "60")), repeats=1)
    assert results["resume"]["resent_although_answered"] == 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    main(args.clips, args.repeats)
