"""The engine against the reference re-listen loop on transformers, on the ~108M-parameter CPU config.

The reference (the public Echo loop, one sample at a time): transformers' ``generate`` with a stop on
``</seg>``, then the span cut out and featurised alone (WhisperFeatureExtractor, padded to 300 s), appended as one
more audio, and the whole extended prompt re-prefilled. echo: one engine, all samples in one continuous batch,
re-listens spliced into each sequence's paged KV. Both follow the same scripted trajectory (every token forced,
4 re-listens), and the run checks they produce the same tokens before timing anything.
Run: python -m pytest benchmarks/bench_engine.py -s   (several minutes on 2 cores)
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

import echo
from echo.config import EngineConfig, SamplingParams
from echo.engine.llm import Engine, Request
from echo.engine.relisten import decide, ends_with_seg
from echo.config import RelistenPolicy
from echo.models import num_audio_tokens
from echo.models.prompting import PromptProcessor
from echo.ops.linear import few_row_forward
from echo.models.tiny import SPECIALS, config_for, feature_extractor, hf_model_for, make_checkpoint, save_tokenizer_files

import roofline
from machine import describe

SR = 16_000
CLIP_S = 30.0
NEW_TOKENS = 300
SEG_STEPS = (40, 100, 160, 220)


def _clip(seed: int, seconds: float = CLIP_S) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (200 + 30 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


class Bench:
    """A random model of a preset with a tokenizer, plus both sides of the comparison. The default is the CPU
    benchmark's (omni-bench saved and loaded back, fp32); gpu/bench_gpu.py builds the model in memory on a device
    and in a dtype instead (random 7B weights are not worth writing to disk)."""

    def __init__(self, tmp, preset: str = "omni-bench", device: str = "cpu", dtype: torch.dtype = torch.float32,
                 new_tokens: int = NEW_TOKENS, seg_steps: tuple[int, ...] = SEG_STEPS):
        self.path, self.device, self.new_tokens, self.seg_steps = tmp, torch.device(device), new_tokens, seg_steps
        if self.device.type == "cpu" and dtype == torch.float32:
            self.hf = make_checkpoint(tmp, preset)
            self.model = echo.load(tmp)
        else:
            with torch.device(self.device):
                self.hf = hf_model_for(config_for(preset)).to(dtype)
            save_tokenizer_files(tmp, config_for(preset).family)
            self.model = echo.from_transformers(self.hf)
            self.model.processor = PromptProcessor.from_dir(tmp)
        self.proc = self.model.processor
        cfg = self.model.config
        self.audio_ids = {cfg.audio_token_id, cfg.audio_bos_token_id, cfg.audio_eos_token_id}
        self.fe = feature_extractor(cfg.family)
        self.eos = self.proc.tokenizer.token_to_id("<|im_end|>")
        specials = {self.proc.tokenizer.token_to_id(t) for t in SPECIALS}
        self.text_ids = [i for i in range(300) if i not in specials]

    def trajectory(self, seed: int, short_spans: bool = False, shift: int = 0) -> list[int]:
        """new_tokens forced tokens: text, with '<seg>a, b</seg>' (2-5 s spans) at seg_steps, then <|im_end|>.
        ``short_spans``: the same text with every span 0.1 s long, which the engine skips (below the policy's
        0.2 s minimum): the same sampled tokens without any re-listen. ``shift`` moves every tag that many tokens
        later, so that the sequences of a batch re-listen in different steps."""
        rng = np.random.default_rng(seed)
        out: list[int] = []
        for step in self.seg_steps:
            step += shift
            out += rng.choice(self.text_ids, step - len(out)).tolist()
            a = float(rng.integers(0, 24))
            b = a + 0.1 if short_spans else a + rng.integers(2, 6)
            if short_spans:
                rng.integers(2, 6)  # keep the random stream, so the text is the same
            out += self.proc.tokenizer.encode(f" <seg>{a:.1f}, {b:.1f}</seg>", add_special_tokens=False).ids
        out += rng.choice(self.text_ids, self.new_tokens - 1 - len(out)).tolist()
        return out + [self.eos]

    def prompt(self, clip) -> list[int]:
        conv = [{"role": "user", "content": [{"type": "audio", "audio": "a"}, {"type": "text", "text": "Q?"}]}]
        return self.proc(conv, [int(-(-len(clip) // 160))])

    # --- forcing, shared by both sides ---
    def forced(self, prompts_to_traj: dict[tuple, list[int]]):
        audio_ids = self.audio_ids

        def step_token(history):
            for prompt, traj in prompts_to_traj.items():
                if tuple(history[: len(prompt)]) == prompt:
                    n = sum(1 for t in history[len(prompt):] if t not in audio_ids)
                    return traj[min(n, len(traj) - 1)]
            raise AssertionError("unknown prompt")

        def echo_proc(history, logits):
            out = torch.full_like(logits, float("-inf"))
            out[step_token(history)] = 0.0
            return out

        return step_token, echo_proc

    # --- the reference loop on transformers ---
    def reference(self, clip, step_token) -> list[int]:
        proc, hf = self.proc, self.hf
        ids = self.prompt(clip)
        n_prompt = len(ids)
        dev, dtype = self.device, self.model.dtype
        feats = self.fe([clip], sampling_rate=SR, return_attention_mask=True, padding="max_length",
                        return_tensors="pt")
        features, fmask = feats["input_features"].to(dev, dtype), feats["attention_mask"].to(dev)

        class Force(LogitsProcessor):
            def __call__(self, input_ids, scores):
                out = torch.full_like(scores, float("-inf"))
                out[0, step_token(input_ids[0].tolist())] = 0.0
                return out

        class StopOnSeg(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return torch.tensor([ends_with_seg(proc.decode(input_ids[0, -16:].tolist()))], device=input_ids.device)

        turns = 0
        while True:
            inp = torch.tensor([ids], device=dev)
            with torch.no_grad():
                out = hf.generate(input_ids=inp, attention_mask=torch.ones_like(inp), input_features=features,
                                  feature_attention_mask=fmask, max_new_tokens=self.new_tokens, do_sample=False,
                                  logits_processor=LogitsProcessorList([Force()]),
                                  stopping_criteria=StoppingCriteriaList([StopOnSeg()]), eos_token_id=self.eos)
            ids = out[0].tolist()
            if ids[-1] == self.eos or len(ids) - n_prompt >= self.new_tokens + 400:
                return ids[n_prompt:]
            d = decide(proc.decode(ids[n_prompt:]), turns, len(clip), RelistenPolicy())
            turns += 1
            if d.action == "relisten":
                s, e = d.applied_samples
                span = self.fe([clip[s:e]], sampling_rate=SR, return_attention_mask=True, padding="max_length",
                               return_tensors="pt")
                ids += proc.splice_ids(num_audio_tokens(int(span["attention_mask"].sum())))
                features = torch.cat([features, span["input_features"].to(dev, dtype)])
                fmask = torch.cat([fmask, span["attention_mask"].to(dev)])

    def echo_run(self, clips, echo_proc, kv_cache_bytes: int = 1 << 30):
        engine = Engine(self.model, EngineConfig(kv_cache_bytes=kv_cache_bytes, max_num_batched_tokens=2048),
                        logits_processors=[echo_proc])
        params = SamplingParams(temperature=0, max_new_tokens=self.new_tokens)
        return engine.generate([Request(c, self.prompt(c), params) for c in clips]), engine


_BENCH: list[Bench] = []


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    if not _BENCH:
        torch.manual_seed(0)
        _BENCH.append(Bench(tmp_path_factory.mktemp("omni-bench")))
    return _BENCH[0]


@pytest.mark.parametrize("clip_s", [30.0, 120.0], ids=["30s", "120s"])
@pytest.mark.parametrize("batch", [1, 8])
def test_engine_vs_resubmission_loop(bench, batch, clip_s, record_property):
    """Both sides on the same scripted trajectories; 120 s clips are the long-audio case (MMAR runs to 300 s):
    3,000 audio tokens a prompt, which the reference prefills again after every re-listen."""
    clips = [_clip(i, clip_s) for i in range(batch)]
    trajs = {tuple(bench.prompt(c)): bench.trajectory(i) for i, c in enumerate(clips)}
    step_token, echo_proc = bench.forced(trajs)
    t0 = time.perf_counter()
    results, engine = bench.echo_run(clips, echo_proc)
    echo_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = [bench.reference(c, step_token) for c in clips]
    ref_s = time.perf_counter() - t0
    for res, ref in zip(results, reference):
        assert res.samples[0].token_ids == ref  # same tokens, so the times compare like for like
        assert sum(r.decision.action == "relisten" for r in res.samples[0].relistens) == len(bench.seg_steps)
    sampled = sum(sum(r.samples[0].mask) for r in results)
    line = (f"batch {batch}, {clip_s:.0f} s clips: echo {echo_s:.1f} s ({sampled / echo_s:.1f} tok/s), reference "
            f"loop {ref_s:.1f} s ({sampled / ref_s:.1f} tok/s): {ref_s / echo_s:.2f}x; preemptions "
            f"{engine.scheduler.num_preemptions}")
    print("\n" + line)
    record_property("result", line)


@pytest.mark.parametrize("batch", [1, 8, 32])
def test_relisten_cost(bench, batch):
    """What re-listening costs: a generation with 4 re-listens (2-5 s spans) per sequence against the same
    sampled tokens with spans too short to re-listen, same model, same 30 s clips, interleaved rounds. The tags of
    sequence i sit 3*i tokens later than sequence 0's, so the splices of a batch fall in different steps."""
    clips = [_clip(i) for i in range(batch)]
    prompts = [bench.prompt(c) + [bench.text_ids[i % 50], bench.text_ids[i // 50]] for i, c in enumerate(clips)]
    procs = {}
    for short in (False, True):
        trajs = {tuple(p): bench.trajectory(i, short_spans=short, shift=3 * (i % 20)) for i, p in enumerate(prompts)}
        procs[short] = bench.forced(trajs)[1]
    params = SamplingParams(temperature=0, max_new_tokens=bench.new_tokens)
    wall, cpu = {False: [], True: []}, {False: [], True: []}
    for _ in range(2 if batch <= 8 else 1):
        for short in (False, True):
            engine = Engine(bench.model, EngineConfig(kv_cache_bytes=max(1 << 30, batch << 26),
                                                      max_num_batched_tokens=2048), logits_processors=[procs[short]])
            t, c = time.perf_counter(), time.process_time()
            results = engine.generate([Request(clip, p, params) for clip, p in zip(clips, prompts)])
            wall[short].append(time.perf_counter() - t)
            cpu[short].append(time.process_time() - c)
            samples = [r.samples[0] for r in results]
            assert all(sum(r.decision.action == "relisten" for r in s.relistens) == (0 if short else 4)
                       for s in samples)
            assert engine.scheduler.num_preemptions == 0
            sampled = sum(sum(s.mask) for s in samples)
            assert sampled == batch * bench.new_tokens
    w = {k: min(v) for k, v in wall.items()}
    c = {k: min(v) for k, v in cpu.items()}
    print(f"\nre-listen cost at batch {batch} ({torch.get_num_threads()} threads, {bench.new_tokens} tokens, 4 "
          f"re-listens per sequence): with {w[False]:.1f} s, without {w[True]:.1f} s: {w[False] / w[True]:.2f}x wall; "
          f"process CPU {c[False]:.1f} s vs {c[True]:.1f} s: {c[False] / c[True]:.2f}x\n  on {describe()}")


def _gemm_alone(model, rows: int, repeats: int = 20) -> float:
    """Median time of every decoder linear and the LM head on ``rows`` tokens, nothing else (no attention, no
    elementwise work): what the decode step's matmuls cost on their own, threaded as the engine's step runs them."""
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.startswith("audio_tower")]
    inputs = {m.in_features: torch.randn(rows, m.in_features, dtype=model.dtype) for m in linears}
    times = []
    with torch.inference_mode(), few_row_forward(rows, model.device, model.dtype):
        for _ in range(repeats):
            t = time.perf_counter()
            for m in linears:
                m(inputs[m.in_features])
            times.append(time.perf_counter() - t)
    return statistics.median(times[3:])


@pytest.mark.parametrize("batch", [1, 8])
def test_decode_step_vs_weight_read(bench, batch):
    """echo's decode step (30 s prompts cached) against the bytes it must read / the measured read bandwidth; at
    batch 8 also the GEMMs alone against their byte and FLOP limits (roofline.py, all measured in this run)."""
    model = bench.model
    clips = [_clip(i) for i in range(batch)]
    trajs = {tuple(bench.prompt(c)): [bench.text_ids[0]] * 64 for c in clips}
    _, echo_proc = bench.forced(trajs)
    engine = Engine(model, EngineConfig(kv_cache_bytes=1 << 30, max_num_batched_tokens=8192),
                    logits_processors=[echo_proc])
    seqs = []
    for c in clips:
        idx = engine.add_request(c, bench.prompt(c), SamplingParams(temperature=0, max_new_tokens=60, ignore_eos=True))
        seqs.append(engine.request(idx).samples[0])
    while any(s.num_cached < len(s.token_ids) - 1 for s in seqs):  # prefill every prompt
        engine.step()
    bandwidth = roofline.read_bandwidth()  # measured before and after the steps, the best kept: a shared host's
    steps, contexts = [], []              # memory bandwidth varies with its other tenants
    for _ in range(40):
        contexts.append([s.num_cached for s in seqs])
        t = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - t)
    step = statistics.median(steps[5:])
    nbytes = roofline.decode_step_bytes(model, contexts[len(contexts) // 2])
    bandwidth = max(bandwidth, roofline.read_bandwidth())
    line = f"decode step at batch {batch}: " + roofline.describe_limit(step, nbytes, bandwidth)
    if batch > 1:
        gemm = _gemm_alone(model, batch)
        flops = roofline.gemm_flops(model, batch)
        rate = roofline.matmul_rate(dtype=model.dtype)
        byte_limit, flop_limit = nbytes.weights / bandwidth, flops / rate
        line += (f"\n  GEMMs alone at {batch} rows: {gemm * 1e3:.1f} ms; weight read {byte_limit * 1e3:.1f} ms, "
                 f"{flops / 1e9:.1f} GFLOP at a measured {rate / 1e9:.0f} GFLOP/s {flop_limit * 1e3:.1f} ms: GEMMs "
                 f"{gemm / max(byte_limit, flop_limit):.2f}x their bound; step {step / gemm:.2f}x the GEMMs")
    print(f"\n{line}\n  on {describe()}")


def _decode_steps(model, bench, batch: int, steps: int) -> tuple[list[float], list[float], list[list[int]]]:
    """Greedy decode of ``batch`` 30 s prompts, free (no forcing, text ids only): per-step wall and CPU times
    (the CPU time of this thread: the whole step's when torch runs one thread) and the sampled tokens."""
    high = torch.arange(300, model.config.decoder.vocab_size)
    engine = Engine(model, EngineConfig(kv_cache_bytes=1 << 30, max_num_batched_tokens=8192),
                    logits_processors=[lambda history, logits: logits.index_fill(0, high, float("-inf"))])
    seqs = []
    for i in range(batch):
        clip = _clip(i)
        idx = engine.add_request(clip, bench.prompt(clip), SamplingParams(temperature=0, max_new_tokens=steps + 5,
                                                                         ignore_eos=True))
        seqs.append(engine.request(idx).samples[0])
    while any(s.num_cached < len(s.token_ids) - 1 for s in seqs):
        engine.step()
    wall, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.thread_time()
        engine.step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    return wall, cpu, [s.token_ids[s.num_prompt_tokens:] for s in seqs]


@pytest.mark.parametrize("batch", [1, 8])
def test_decode_bf16_vs_fp32(bench, batch):
    """The same checkpoint loaded in bf16 (half the weight bytes) and in fp32: decode step times side by side
    (interleaved rounds, so load on the machine hits both) and the greedy tokens of the first steps. With
    OMP_NUM_THREADS=1 the per-step CPU time is printed too, which other processes on the machine barely move."""
    import echo.models.loader as loader

    models = {torch.float32: bench.model, torch.bfloat16: echo.load(bench.path, dtype=torch.bfloat16)}
    wall, cpu, tokens = {d: [] for d in models}, {d: [] for d in models}, {}
    for _ in range(2):  # interleaved rounds
        for d, m in models.items():
            w, c, tokens[d] = _decode_steps(m, bench, batch, 12)
            wall[d] += w[2:]
            cpu[d] += c[2:]
    med = {d: (statistics.median(wall[d]), statistics.median(cpu[d])) for d in models}
    (w32, c32), (w16, c16) = med[torch.float32], med[torch.bfloat16]
    same = [a[:8] == b[:8] for a, b in zip(tokens[torch.float32], tokens[torch.bfloat16])]
    line = (f"decode step at batch {batch}, {torch.get_num_threads()} threads: wall fp32 {w32 * 1e3:.1f} ms, bf16 "
            f"{w16 * 1e3:.1f} ms: {w32 / w16:.2f}x")
    if torch.get_num_threads() == 1:
        line += f"; CPU time fp32 {c32 * 1e3:.1f} ms, bf16 {c16 * 1e3:.1f} ms: {c32 / c16:.2f}x"
    line += (f" (CPU has bf16 instructions: {loader.cpu_has_native_bf16()}); first 8 greedy tokens equal to fp32's "
             f"in {sum(same)}/{len(same)} sequences")
    print(f"\n{line}\n  on {describe()}")


@pytest.mark.parametrize("context", [512, 2048, 8192])
def test_relisten_latency_vs_context(bench, context):
    """A 3 s re-listen (mel + encoder + splice prefill of 77 tokens) with 512 to 8192 tokens already cached."""
    model, proc = bench.model, bench.proc
    clip = _clip(1)[: 4 * SR]
    prompt = bench.prompt(clip)
    filler = bench.text_ids[: 50] * (context // 50 + 1)
    prompt = prompt[:-5] + filler[: context - len(prompt)] + prompt[-5:]
    seg = proc.tokenizer.encode(" <seg>0.5, 3.5</seg>", add_special_tokens=False).ids
    traj = {tuple(prompt): seg + [bench.text_ids[1]] * 20}
    _, echo_proc = bench.forced(traj)
    times = []
    for _ in range(3):
        engine = Engine(model, EngineConfig(kv_cache_bytes=1 << 29, max_num_batched_tokens=8192),
                        logits_processors=[echo_proc])
        idx = engine.add_request(clip, prompt, SamplingParams(temperature=0, max_new_tokens=30, ignore_eos=True))
        seq = engine.request(idx).samples[0]
        engine.step()
        while not seq.relistens:
            engine.step()
        engine.encoder_cache.clear()
        # the turn: the step that sampled '</seg>' already decided; time encoding + the splice step
        t = time.perf_counter()
        seq.token_ids = seq.token_ids[: -seq.relistens[-1].num_audio_tokens - 2]  # undo the splice ...
        seq.mask = seq.mask[: len(seq.token_ids)]
        seq.audio.pop()
        engine.scheduler.post.relisten(engine.scheduler, [(seq, seq.relistens[-1].decision)])  # ... and redo it
        engine.step()
        times.append(time.perf_counter() - t)
    # what the splice prefill must compute: its tokens through every linear (the LM head on one row) plus their
    # attention over the context, which grows with it: the floor under the latency's growth with context
    d, n = model.config.decoder, seq.relistens[-1].num_audio_tokens + 2
    head = model.lm_head.weight.numel()
    linear = roofline.gemm_flops(model, n) - 2 * head * (n - 1)
    attention = 4 * d.num_layers * d.num_heads * d.head_dim * n * (context + n / 2)
    line = (f"re-listen of 3 s with {context} tokens of context: {statistics.median(times) * 1e3:.0f} ms; splice "
            f"prefill of {n} tokens: {linear / 1e9:.1f} GFLOP of linears + {attention / 1e9:.1f} GFLOP of attention")
    print(f"\n{line}\n  on {describe()}")


def test_encoder_cache_hit_rate_for_a_group(bench):
    """8 samples of one question re-listening overlapping spans (3 distinct spans among 16 re-listens)."""
    clip = _clip(2)[: 10 * SR]
    spans = ["<seg>1.0, 3.0</seg>", "<seg>4.0, 6.0</seg>", "<seg>1.0, 3.0</seg>", "<seg>7.0, 9.0</seg>"]
    trajs, reqs = {}, []
    for i in range(8):
        prompt = bench.prompt(clip) + [bench.text_ids[i]]  # distinct prompts so each sample has its own script
        toks = []
        for j in range(2):
            toks += [bench.text_ids[5]] * 3 + bench.proc.tokenizer.encode(
                " " + spans[(i + j) % 4], add_special_tokens=False).ids
        trajs[tuple(prompt)] = toks + [bench.eos]
        reqs.append(Request(clip, prompt, SamplingParams(temperature=0, max_new_tokens=60)))
    _, echo_proc = bench.forced(trajs)
    engine = Engine(bench.model, EngineConfig(kv_cache_bytes=1 << 29), logits_processors=[echo_proc])
    results = engine.generate(reqs)
    records = [r for res in results for r in res.samples[0].relistens]
    hits = sum(r.cache_hit for r in records)
    line = (f"encoder cache: {hits}/{len(records)} re-listens were hits ({hits / len(records):.0%}); "
            f"cache stats {engine.encoder_cache.stats}")
    print("\n" + line)
    assert len(records) == 16
