"""The GPU figures run.sh collects, each section against its physical limit, written to one results file.

Sections: decode at batch 1/8/64 of a 7B-shaped random model (``presets``: omni-7b, bf16) against the HBM roofline
(bytes a step must read / measured read bandwidth), with CUDA graphs (the default) and eagerly; Triton ``store_kv``
against copy bandwidth; the CUDA log-mel against the CPU kernel (with their parity); the engine on each backend,
with and without CUDA graphs (same greedy tokens as the torch one, re-listens included); the engine against the
transformers re-submission loop at batch 8.
Every section runs on its own: a failure is written to the file and the others still run (exit status 1).
``--smoke`` runs the same code on a tiny preset, on whatever device there is, in seconds: what CI checks on a
CPU machine (the GPU-only sections then report that they were skipped and why).
Run: python benchmarks/gpu/bench_gpu.py --results FILE [--smoke]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # machine.py, roofline.py, bench_engine.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

import roofline  # noqa: E402
from machine import describe  # noqa: E402


BUFFER_BYTES: int | None = None  # bandwidth buffers: roofline's default (far past the caches); small in --smoke


class Results:
    def __init__(self, path: Path):
        self.path, self.failed = path, []
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, line: str) -> None:
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def section(self, name: str, fn) -> None:
        self.write(f"\n## {name}")
        t = time.perf_counter()
        try:
            fn(self)
            self.write(f"({name}: {time.perf_counter() - t:.0f} s)")
        except Exception as e:  # every section runs; the failure is the figure
            self.failed.append(name)
            self.write(f"FAILED: {type(e).__name__}: {e}")
            self.write("".join(traceback.format_exception(e)[-6:]).rstrip())


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# --- decode vs the HBM roofline ---------------------------------------------------------------------------------


def decode(r: Results, bench, batches: list[int], steps: int, kv_bytes: int) -> None:
    from bench_engine import _clip

    from echo.config import EngineConfig, SamplingParams
    from echo.engine.llm import Engine

    model, device = bench.model, bench.device
    high = torch.arange(300, model.config.decoder.vocab_size, device=device)

    def text_only(history, logits):  # keep greedy tokens inside the small tokenizer's text ids
        return logits.index_fill(0, high, float("-inf"))

    bandwidth = roofline.read_bandwidth(device, BUFFER_BYTES)
    r.write(f"read bandwidth {bandwidth / 1e9:.0f} GB/s (sum over a "
            f"{(BUFFER_BYTES or roofline.default_buffer_bytes(device)) >> 20} "
            f"MiB buffer, best of 10); model {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, "
            f"{model.dtype}")
    clip = _clip(0)

    def step_time(batch: int, eager: bool) -> tuple[float, list[int], int]:
        """Median decode step at ``batch``, the contexts of the middle step, and the steps replayed from graphs."""
        engine = Engine(model, EngineConfig(kv_cache_bytes=kv_bytes, max_num_batched_tokens=8192,
                                            max_num_seqs=max(batch, 1), enforce_eager=eager),
                        logits_processors=[text_only])
        seqs = []
        for i in range(batch):
            idx = engine.add_request(clip, bench.prompt(clip) + [bench.text_ids[i % 50]],
                                     SamplingParams(temperature=0, max_new_tokens=steps + 10, ignore_eos=True))
            seqs.append(engine.request(idx).samples[0])
        while any(s.num_cached < len(s.token_ids) - 1 for s in seqs):
            engine.step()
        times, contexts = [], []
        for _ in range(steps):
            contexts.append([s.num_cached for s in seqs])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            engine.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        graphs = engine.runner.graphs
        return statistics.median(times[3:]), contexts[len(contexts) // 2], graphs.replays if graphs else 0

    for batch in batches:
        step, contexts, replays = step_time(batch, eager=False)
        nbytes = roofline.decode_step_bytes(model, contexts)
        line = f"decode batch {batch:3d}: {roofline.describe_limit(step, nbytes, bandwidth)}; {batch / step:.0f} tok/s"
        if device.type == "cuda":  # the same steps with every kernel launched eagerly
            eager, _, _ = step_time(batch, eager=True)
            line += (f"; CUDA graphs ({replays} of {steps} steps replayed) vs eager {eager * 1e3:.2f} ms: "
                     f"{eager / step:.2f}x")
        r.write(line)


# --- Triton store_kv vs copy bandwidth -----------------------------------------------------------------------------


def store_kv(r: Results, device: torch.device, dtype: torch.dtype) -> None:
    from echo.ops import _backend
    from echo.ops import store_kv as skv

    backends = [b for b in ("triton", "torch") if b in _backend.available(skv.BACKENDS, device)]
    if device.type != "cuda":
        backends = [b for b in backends if b != "triton"]
        r.write("Triton store_kv: skipped, no CUDA device (on the CPU Triton only runs interpreted)")
    copy = roofline.copy_bandwidth(device, BUFFER_BYTES)
    r.write(f"copy bandwidth {copy / 1e9:.0f} GB/s (copy_ of a large buffer, bytes read + written)")
    heads, dim, block, blocks = 4, 128, 16, 256 if BUFFER_BYTES else 4096
    k_cache = torch.zeros(blocks, block, heads, dim, device=device, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    for tokens in (64, 800, 4096):
        k = torch.randn(tokens, heads, dim, device=device, dtype=dtype)
        v = torch.randn_like(k)
        slots = torch.randperm(block * blocks, device=device)[:tokens]
        moved = 2 * 2 * k.numel() * k.element_size()  # K and V, each read and written
        for b in backends:
            s = _timed(lambda: skv.store_kv(k, v, k_cache, v_cache, slots, backend=b), device, 50)
            r.write(f"store_kv {b:6s} {tokens:5d} tokens: {s * 1e6:8.1f} us, {moved / s / 1e9:7.1f} GB/s = "
                    f"{moved / s / copy:.2f} of copy bandwidth")


# --- CUDA log-mel vs the CPU kernel -----------------------------------------------------------------------------


def log_mel_section(r: Results, device: torch.device) -> None:
    from bench_engine import _clip

    from echo.audio import FeatureConfig, log_mel
    from echo.ops import _backend
    from echo.ops.log_mel import BACKENDS

    clip = torch.from_numpy(_clip(0)[: 30 * 16_000].copy())
    rng = np.random.default_rng(1)
    spans = [(0, int(a * 16_000), int((a + d) * 16_000)) for a, d in zip(rng.uniform(0, 25, 8), rng.uniform(2, 5, 8))]
    cases = {"30 s clip (30 s max)": (FeatureConfig(chunk_length=30), None),
             "8 spans of 2-5 s (300 s max)": (FeatureConfig(chunk_length=300), spans)}
    have_cuda = device.type == "cuda" and "cuda" in _backend.available(BACKENDS, device)
    if not have_cuda:
        r.write("CUDA log-mel: skipped, " + ("no CUDA device" if device.type != "cuda" else
                                              "echo._C was built without CUDA kernels"))
    for name, (cfg, sp) in cases.items():
        cpu = _timed(lambda: log_mel(clip, sp, config=cfg, backend="cpu"), torch.device("cpu"), 20)
        line = f"log-mel {name}: cpu kernel {cpu * 1e3:.2f} ms ({torch.get_num_threads()} threads)"
        if have_cuda:
            wave = clip.to(device)
            gpu = _timed(lambda: log_mel(wave, sp, config=cfg, backend="cuda"), device, 50)
            diff = (log_mel(wave, sp, config=cfg, backend="cuda").features.cpu()
                    - log_mel(clip, sp, config=cfg, backend="cpu").features).abs().max().item()
            line += f"; cuda {gpu * 1e3:.3f} ms = {cpu / gpu:.1f}x; max |cuda - cpu| {diff:.1e}"
        r.write(line)


# --- the engine on each backend -----------------------------------------------------------------------------------


def engine_backends(r: Results, device: torch.device, tmp: Path) -> None:
    """A tiny fp32 model on the device: scripted text with two re-listens, then 30 free greedy tokens that read
    the spliced K/V; every backend (ECHO_BACKEND) must give the torch reference's tokens."""
    from bench_engine import Bench, _clip

    from echo.config import EngineConfig, SamplingParams
    from echo.engine.llm import Engine, Request

    bench = Bench(tmp, "omni-tiny-gqa2", device, torch.float32, new_tokens=50, seg_steps=(10, 30))
    clips = [_clip(i)[: 6 * 16_000] for i in range(2)]
    scripts = {tuple(bench.prompt(c)): bench.trajectory(i)[:-1] for i, c in enumerate(clips)}
    high = torch.arange(300, bench.model.config.decoder.vocab_size, device=device)

    def script_then_free(history, logits):
        for prompt, traj in scripts.items():
            if tuple(history[: len(prompt)]) == prompt:
                n = sum(1 for t in history[len(prompt):] if t not in bench.audio_ids)
                if n < len(traj):
                    out = torch.full_like(logits, float("-inf"))
                    out[traj[n]] = 0.0
                    return out
        return logits.index_fill(0, high, float("-inf"))

    def run(backend: str, eager: bool = False) -> tuple[list[list[int]], int]:
        os.environ["ECHO_BACKEND"] = backend
        try:
            engine = Engine(bench.model, EngineConfig(kv_cache_bytes=1 << 26, enforce_eager=eager),
                            logits_processors=[script_then_free])
            params = SamplingParams(temperature=0, max_new_tokens=80, ignore_eos=True)
            out = engine.generate([Request(c, bench.prompt(c), params) for c in clips])
        finally:
            os.environ.pop("ECHO_BACKEND", None)
        graphs = engine.runner.graphs
        return [res.samples[0].token_ids for res in out], graphs.replays if graphs else 0

    reference, _ = run("torch")
    runs = [("cuda", False), ("triton", False), ("triton", True)] if device.type == "cuda" else [("cpu", False)]
    for b, eager in runs:
        tokens, replays = run(b, eager)
        same = tokens == reference
        how = f"{replays} decode steps from CUDA graphs" if replays else "eager"
        r.write(f"engine with ECHO_BACKEND={b} on {device} ({how}): same tokens as the torch backend: {same}")
        if not same:
            raise AssertionError(f"backend {b} (eager={eager}) changed the engine's greedy tokens")


# --- engine vs the transformers loop at batch 8 -----------------------------------------------------------------


def engine_vs_loop(r: Results, bench, batch: int, kv_bytes: int) -> None:
    from bench_engine import _clip

    clips = [_clip(i) for i in range(batch)]
    trajs = {tuple(bench.prompt(c)): bench.trajectory(i) for i, c in enumerate(clips)}
    step_token, echo_proc = bench.forced(trajs)
    sync = torch.cuda.synchronize if bench.device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    results, engine = bench.echo_run(clips, echo_proc, kv_cache_bytes=kv_bytes)
    sync()
    echo_s = time.perf_counter() - t
    t = time.perf_counter()
    reference = [bench.reference(c, step_token) for c in clips]
    sync()
    ref_s = time.perf_counter() - t
    same = all(res.samples[0].token_ids == ref for res, ref in zip(results, reference))
    relistens = [sum(x.decision.action == "relisten" for x in res.samples[0].relistens) for res in results]
    sampled = sum(sum(res.samples[0].mask) for res in results)
    r.write(f"batch {batch}, {bench.new_tokens} tokens and {len(bench.seg_steps)} re-listens each: echo {echo_s:.1f} s "
            f"({sampled / echo_s:.0f} tok/s), transformers loop {ref_s:.1f} s ({sampled / ref_s:.0f} tok/s): "
            f"{ref_s / echo_s:.2f}x; same tokens: {same}; re-listens per sample {relistens}")
    if not same:
        raise AssertionError("echo and the transformers loop produced different tokens (bf16 greedy ties?)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny preset, few steps: checks the code paths anywhere")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--sections", default="decode,store_kv,log_mel,engine_backends,engine_vs_loop")
    args = ap.parse_args(argv)
    global BUFFER_BYTES
    BUFFER_BYTES = (32 << 20) if args.smoke else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    r = Results(args.results)
    r.write(f"# echo GPU check — {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'no CUDA device'}"
            f"{' (smoke run: tiny shapes, figures mean nothing)' if args.smoke else ''}")
    r.write(describe())
    if device.type != "cuda" and not args.smoke:
        r.write("no CUDA device: the GPU sections need one; run with --smoke to check the code paths here")
        return 0
    sections = set(args.sections.split(","))
    preset = args.preset or ("omni-tiny-gqa2" if args.smoke else "omni-7b")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kv_bytes = (1 << 26) if args.smoke else (40 << 30)
    holder: dict = {}

    def bench(new_tokens=300, seg_steps=(40, 100, 160, 220)):
        from bench_engine import Bench

        if "b" not in holder:
            t = time.perf_counter()
            holder["b"] = Bench(Path(tempfile.mkdtemp()), preset, device, dtype, new_tokens, seg_steps)
            r.write(f"built random {preset} on {device} in {dtype} in {time.perf_counter() - t:.0f} s")
        return holder["b"]

    new_tokens, seg_steps = (50, (10, 30)) if args.smoke else (300, (40, 100, 160, 220))
    if "decode" in sections:
        r.section("decode vs the HBM roofline",
                  lambda r: decode(r, bench(new_tokens, seg_steps), [1, 8] if args.smoke else [1, 8, 64],
                                   4 if args.smoke else 30, kv_bytes))
    if "store_kv" in sections:
        r.section("store_kv vs copy bandwidth", lambda r: store_kv(r, device, dtype))
    if "log_mel" in sections:
        r.section("log-mel: CUDA vs the CPU kernel", lambda r: log_mel_section(r, device))
    if "engine_backends" in sections:
        r.section("engine on each backend", lambda r: engine_backends(r, device, Path(tempfile.mkdtemp())))
    if "engine_vs_loop" in sections:
        r.section("engine vs the transformers loop", lambda r: engine_vs_loop(r, bench(new_tokens, seg_steps),
                                                                                2 if args.smoke else 8, kv_bytes))
    r.write(f"\nsections failed: {', '.join(r.failed) or 'none'}")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
