"""Training throughput on an echo-demo-shaped random model (Whisper tiny encoder + SmolLM2-135M decoder shapes, in
the Qwen2-Audio layout echo-demo uses), in one run:

- SFT (interleaved: every cited span re-listened), LoRA 16, records/s and labelled tokens/s, for echo now (bf16
  autocast where the CPU has AVX512-BF16/AMX, and fp32), echo now without its feature cache (the tower re-run on
  every clip and span, as before the cache), echo at an older commit (``--old``, default 778ab90, taken with
  ``git archive``), and the plain transformers + peft loop a user would write for the same model, data and LoRA
  (padded batches, loss on every text token, the audio tower run on 30 s padded windows as transformers does);
- the step losses of echo's bf16 and fp32 runs (what autocast changes), and the first ``--parity-steps`` fp32
  losses of echo and of that plain loop configured identically (one record per step, loss on the assistant's
  tokens, the same initial adapter): their largest relative differences;
- seconds per GRPO step (rollouts through the engine + policy update; same group size and token budget) for a full
  fine-tune and LoRA 16 now (and LoRA 16 with a bf16 update where the CPU has bf16), and a full fine-tune at the
  older commit, with each one's ratio to that.

Every run is its own process (this file in ``--worker`` mode), so each starts cold the same way. Sizes are small;
run it with ``nice -n 10`` on a shared machine and say so beside the figures:
    nice -n 10 python benchmarks/bench_train.py [--records 8 --epochs 2 --grad-accum 4 --grpo-steps 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SR = 16000
TARGETS = ["<think>First <seg>{a}, {b}</seg>a dog barks, then <seg>{c}, {d}</seg>a bell.</think><answer>B</answer>",
           "<think>The tone at <seg>{a}, {b}</seg>is high.</think><answer>A</answer>",
           "<think>Speech starts at <seg>{c}, {d}</seg>and stops.</think><answer>C</answer>"]


# ---- the model and the data ------------------------------------------------------------------------------------------

def demo_shaped_config():
    """Qwen2-Audio layout, Whisper tiny's encoder (4 layers, width 384) and SmolLM2-135M's decoder (30 layers, width
    576, 9 heads over 3 KV heads, vocabulary 49161 with echo-demo's added tokens); 128 mel bins (echo's tiny
    feature extractor; echo-demo's Whisper reads 80)."""
    import dataclasses

    from echo.models.config import AudioEncoderConfig, DecoderConfig, ModelConfig
    from echo.models.tiny import special_ids

    ids = special_ids()
    decoder = DecoderConfig(vocab_size=49161, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                            num_kv_heads=3, head_dim=64, rope_theta=100000.0, tie_word_embeddings=False,
                            max_position_embeddings=8192)
    audio = AudioEncoderConfig(num_mel_bins=128, d_model=384, num_layers=4, num_heads=6, ffn_dim=1536,
                               max_source_positions=1500, n_window=0, output_dim=384)
    cfg = ModelConfig(family="qwen2_audio", decoder=decoder, audio=audio, audio_token_id=3, audio_bos_token_id=4,
                      audio_eos_token_id=5)
    spec = cfg.spec
    return dataclasses.replace(cfg, audio_token_id=ids[spec.audio_token], audio_bos_token_id=ids.get(
        spec.audio_bos_token), audio_eos_token_id=ids.get(spec.audio_eos_token))


def make_model(path: Path) -> None:
    from echo.models.tiny import hf_model_for, save_tokenizer_files

    cfg = demo_shaped_config()
    hf_model_for(cfg, seed=0).save_pretrained(path)
    save_tokenizer_files(path, cfg.family)


def write_data(d: Path, n: int, clip_s: float) -> None:
    """``n`` messages-JSONL records (two re-listened spans in most) and an EAQA file for GRPO over the same clips."""
    rng = np.random.default_rng(0)
    rows, rl = [], []
    for i in range(n):
        t = np.arange(int(clip_s * SR)) / SR
        wave = 0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t) + 0.05 * rng.standard_normal(t.size)
        import soundfile as sf

        sf.write(d / f"clip{i}.wav", wave.astype(np.float32), SR, subtype="FLOAT")
        a = round(float(rng.uniform(0.2, clip_s / 2 - 1.2)), 1)
        c = round(float(rng.uniform(clip_s / 2, clip_s - 1.2)), 1)
        target = TARGETS[i % len(TARGETS)].format(a=a, b=a + 1.0, c=c, d=c + 1.0)
        rows.append({"id": f"r{i}", "audios": [f"clip{i}.wav"], "messages": [
            {"role": "user", "content": f"<audio>What is heard in clip {i}? Choose A, B, C or D."},
            {"role": "assistant", "content": target}]})
        rl.append({"id": f"q{i}", "audio": f"clip{i}.wav", "question": f"What is heard in clip {i}?",
                   "choices": ["a dog", "a bell", "a tone", "speech"], "answer": "a bell"})
    (d / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl))


# ---- workers (each in its own process; echo imported from PYTHONPATH) -------------------------------------------------

def _log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def worker_sft(a: dict) -> dict:
    from echo.train.sft import SFTConfig, train_sft

    kw = dict(lr=a["lr"], epochs=a["epochs"], grad_accum=a["grad_accum"], lora_rank=a["lora"], seed=0,
              progress=False, dtype=a["dtype"])
    if not a["cache"]:
        kw["feature_cache"] = False
    started = time.perf_counter()
    result = train_sft(a["model"], a["data"], a["out"], SFTConfig(**kw))
    rows = _log_rows(Path(a["out"]))
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in rows)  # the steps alone (no load, no save)
    return {"records": result["examples"] * a["epochs"], "tokens": sum(r["tokens"] for r in rows),
            "seconds": seconds, "process_s": time.perf_counter() - started, "losses": [r["loss"] for r in rows]}


def _plain_batches(a: dict):
    """What the plain loop trains on: echo's interleaved sequences (ids with every span's audio tokens) and the
    waveform of each audio in them, in echo's data order."""
    import echo
    from echo.audio import load as load_audio
    from echo.train.data import build_dataset, read_records

    model = echo.load(a["model"])
    features = model.resolve_feature_config(a["model"])
    examples, skipped = build_dataset(read_records(a["data"]), model.processor, "interleaved", features=features,
                                      max_len=8192)
    assert not skipped, skipped
    per_epoch = math.ceil(len(examples) / a["grad_accum"])
    for step in range(per_epoch * a["epochs"]):
        epoch, k = divmod(step, per_epoch)
        order = list(range(len(examples)))
        random.Random(epoch).shuffle(order)  # SFTConfig(seed=0)'s order
        batch = [examples[i] for i in order[k * a["grad_accum"]:(k + 1) * a["grad_accum"]]]
        yield [(ex, [load_audio(ex.audio)[s:e] for s, e in ex.audio_spans]) for ex in batch]


def _initial_adapter(a: dict) -> dict:
    """echo's initial LoRA factors (the same RNG draws ``train_sft`` makes), by (layer, module path, factor)."""
    import torch

    from echo.models.loader import load
    from echo.train.lora import DEFAULT_TARGETS, add_lora, adapter_state, lora_config

    torch.manual_seed(0)
    model = load(a["model"], dtype=torch.float32)
    add_lora(model, lora_config(a["model"], a["lora"], None, 0.0, DEFAULT_TARGETS))
    return {k.removeprefix("decoder.").replace(".weight", ""): v for k, v in adapter_state(model).items()}


def worker_plain(a: dict) -> dict:
    """The transformers + peft loop: Qwen2AudioForConditionalGeneration, peft LoRA on the decoder, AdamW + cosine,
    batches padded to their longest record. ``parity``: labels are echo's (assistant tokens only) and the adapter
    starts as echo's; otherwise every text token is labelled."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(a["model"], dtype=torch.float32)
    fe = WhisperFeatureExtractor.from_pretrained(a["model"])
    cfg = model.config
    targets = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
    where = rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({targets})"
    model = get_peft_model(model, LoraConfig(r=a["lora"], lora_alpha=2 * a["lora"], lora_dropout=0.0,
                                             target_modules=where))
    if a["parity"]:
        init = _initial_adapter(a)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_" in name:
                    key = name.split("language_model.", 1)[1].replace(".default", "").replace(".weight", "")
                    p.copy_(init[key])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a["lr"], weight_decay=0.0)
    batches = list(_plain_batches(a))
    total = len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    pad, audio_id = 0, cfg.audio_token_id
    losses, seconds, tokens, records = [], 0.0, 0, 0
    for batch in batches:
        started = time.perf_counter()
        width = max(len(ex.input_ids) for ex, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        waves = []
        for b, (ex, wavs) in enumerate(batch):
            n = len(ex.input_ids)
            ids[b, :n], mask[b, :n] = torch.tensor(ex.input_ids), 1
            if a["parity"]:
                labels[b, :n] = torch.tensor(ex.labels)
            else:
                labels[b, :n] = torch.where(ids[b, :n] == audio_id, -100, ids[b, :n])
            waves += wavs
        feats = fe(waves, sampling_rate=SR, return_attention_mask=True, return_tensors="pt")
        out = model(input_ids=ids, attention_mask=mask, input_features=feats["input_features"],
                    feature_attention_mask=feats["attention_mask"], labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        seconds += time.perf_counter() - started
        losses.append(float(out.loss))
        tokens += int((labels[:, 1:] != -100).sum())
        records += len(batch)
    return {"records": records, "tokens": tokens, "seconds": seconds, "losses": losses}


def worker_grpo(a: dict) -> dict:
    from echo.config import EngineConfig
    from echo.train.grpo import GRPOConfig, train_grpo
    from echo.train.grpo_loss import PolicyLossConfig
    from echo.train.rewards import RewardFn, format_reward

    kw = dict(group_size=a["group"], prompts_per_step=a["prompts"], steps=a["steps"], lr=1e-5,
              max_new_tokens=a["new_tokens"], micro_batch=a["group"], progress=False,
              loss=PolicyLossConfig(kl_coef=0.0), engine=EngineConfig(kv_cache_bytes=256 << 20))
    if a["lora"]:
        kw["lora_rank"] = a["lora"]
    if a.get("dtype"):  # the update's compute dtype (older commits have no such setting: fp32)
        kw["dtype"] = a["dtype"]
    result = train_grpo(a["model"], a["data"], a["out"], GRPOConfig(**kw), RewardFn([("format", format_reward, 1.0)]))
    rows = result["history"][1:]  # the first step warms the engine up
    return {"step_s": [r["time/rollout"] + r["time/logprob"] + r["time/update"] for r in rows],
            "rollout_s": [r["time/rollout"] for r in rows], "update_s": [r["time/update"] for r in rows],
            "tokens": [r["response_tokens"] for r in rows]}


WORKERS = {"sft": worker_sft, "plain": worker_plain, "grpo": worker_grpo}


def _import_from(src: str) -> None:
    """Make ``import echo`` read ``src`` (an older tree): an editable install of this checkout puts an import hook
    before PYTHONPATH, which would run this checkout's code under the older commit's name."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
    sys.path.insert(0, src)


def _run(kind: str, src: Path, args: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}
    if src != SRC:
        env["BENCH_ECHO_SRC"] = str(src)
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(args)], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _old_src(commit: str, into: Path) -> Path | None:
    """``src/`` of ``commit``, unpacked with ``git archive`` (None when git cannot), with this build's native module
    (``echo._C``) copied in when the commit's csrc/ is this checkout's (else the older tree runs without it, on the
    torch fallbacks, and says so)."""
    import importlib.util
    import shutil

    proc = subprocess.run(f"git -C {HERE.parent} archive {commit} src | tar -x -C {into}", shell=True,
                          capture_output=True, text=True)
    if proc.returncode or not (into / "src" / "echo").is_dir():
        return None
    same = subprocess.run(["git", "-C", str(HERE.parent), "diff", "--quiet", commit, "--", "csrc", "CMakeLists.txt"])
    native = importlib.util.find_spec("echo._C")
    if same.returncode == 0 and native is not None and native.origin:
        shutil.copy2(native.origin, into / "src" / "echo" / Path(native.origin).name)
    else:
        print(f"  note: {commit} runs without echo's native kernels (its csrc/ differs or this build has none)")
    return into / "src"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--clip-s", type=float, default=6.0)
    ap.add_argument("--lora", type=int, default=16)
    ap.add_argument("--parity-steps", type=int, default=20)
    ap.add_argument("--grpo-steps", type=int, default=3, help="the first is a warm-up, not counted")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--old", default="778ab90", help="the older echo commit to time (empty: skip)")
    ap.add_argument("--parts", default="sft,parity,grpo", help="which of sft, parity, grpo to run")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import resource

        if os.environ.get("BENCH_ECHO_SRC"):
            _import_from(os.environ["BENCH_ECHO_SRC"])
        out = WORKERS[args.worker[0]](json.loads(args.worker[1]))
        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        print(json.dumps(out))
        return
    sys.path.insert(0, str(SRC))
    sys.path.insert(0, str(HERE))
    from machine import describe, has_cpu_flag

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    make_model(tmp / "model")
    write_data(tmp, args.records, args.clip_s)
    old = _old_src(args.old, tmp) if args.old else None
    bf16 = has_cpu_flag("avx512_bf16") or has_cpu_flag("amx_bf16")
    sft = dict(model=str(tmp / "model"), data=str(tmp / "sft.jsonl"), lr=1e-4, epochs=args.epochs,
               grad_accum=args.grad_accum, lora=args.lora, cache=True, dtype="fp32", parity=False)
    print(f"machine: {describe()}")
    print(f"echo-demo-shaped random model; SFT: {args.records} records x {args.epochs} epochs, {args.grad_accum} per "
          f"step, LoRA {args.lora}, clips {args.clip_s} s with two re-listened spans in most")
    parts = set(args.parts.split(","))
    runs = {}
    if "sft" in parts:
        if bf16:
            runs["echo bf16"] = ("sft", SRC, {**sft, "dtype": "bf16"})
        runs["echo fp32"] = ("sft", SRC, sft)
        runs["echo fp32, no feature cache"] = ("sft", SRC, {**sft, "cache": False})
        if old is not None:
            runs[f"echo {args.old} fp32"] = ("sft", old, sft)
        runs["transformers + peft fp32"] = ("plain", SRC, sft)
    results = {}
    for name, (kind, src, a) in runs.items():
        results[name] = r = _run(kind, src, {**a, "out": str(tmp / name.replace(" ", "_").replace(",", ""))})
        print(f"  SFT {name:34s} {r['records'] / r['seconds']:6.3f} records/s  {r['tokens'] / r['seconds']:7.1f} "
              f"tokens/s  ({r['seconds']:.1f} s of steps, peak RSS {r.get('peak_mb', 0):.0f} MB)", flush=True)
    best = "echo bf16" if bf16 else "echo fp32"
    rate = {k: v["records"] / v["seconds"] for k, v in results.items()}
    for k in rate:
        if k != best:
            print(f"  {best} / {k}: {rate[best] / rate[k]:.2f}x records/s")
    if "echo bf16" in results:  # the same records, order and initial adapter: what bf16 autocast changes
        lb, lf = results["echo bf16"]["losses"], results["echo fp32"]["losses"]
        rel = max(abs(x - y) / abs(y) for x, y in zip(lb, lf))
        print(f"  {len(lb)} step losses, echo bf16 autocast vs fp32: max relative difference {rel:.2e} (last "
              f"{lb[-1]:.4f} vs {lf[-1]:.4f})")
    if "parity" in parts:
        parity(sft, args, tmp)
    if "grpo" in parts:
        grpo_steps(args, tmp, old, bf16)


def parity(sft: dict, args, tmp: Path) -> None:
    # loss parity: one record a step, the same labels and initial adapter, fp32
    n = args.parity_steps
    per = dict(sft, grad_accum=1, epochs=math.ceil(n / args.records), parity=True)
    ours = _run("sft", SRC, {**per, "out": str(tmp / "parity_echo")})["losses"][:n]
    plain = _run("plain", SRC, {**per, "out": str(tmp / "parity_plain")})["losses"][:n]
    rel = max(abs(x - y) / abs(y) for x, y in zip(ours, plain))
    print(f"  first {len(ours)} fp32 losses, echo vs transformers + peft configured identically: max relative "
          f"difference {rel:.2e} (first {ours[0]:.4f} vs {plain[0]:.4f}, last {ours[-1]:.4f} vs {plain[-1]:.4f})")


def grpo_steps(args, tmp: Path, old: Path | None, bf16: bool) -> None:
    grpo = dict(model=str(tmp / "model"), data=str(tmp / "rl.jsonl"), group=args.group, prompts=args.prompts,
                steps=args.grpo_steps, new_tokens=args.new_tokens, lora=0)
    print(f"GRPO: {args.prompts} prompts x {args.group} samples, {args.new_tokens} new tokens, no KL; rollouts "
          "fp32, the update fp32 unless named")
    lora = f"echo LoRA {args.lora}"
    g = {"echo full": (SRC, grpo), lora: (SRC, {**grpo, "lora": args.lora})}
    if bf16:
        g[lora + ", bf16 update"] = (SRC, {**grpo, "lora": args.lora, "dtype": "bf16"})
    if old is not None:
        g[f"echo {args.old} full"] = (old, grpo)
    step = {}
    for name, (src, a) in g.items():
        r = _run("grpo", src, {**a, "out": str(tmp / ("grpo_" + name.replace(" ", "_")))})
        step[name] = sum(r["step_s"]) / len(r["step_s"])
        print(f"  GRPO {name:20s} {step[name]:6.2f} s/step (rollout {sum(r['rollout_s']) / len(r['rollout_s']):.2f} "
              f"s, update {sum(r['update_s']) / len(r['update_s']):.2f} s; {r['tokens'][0]:.0f} tokens/sample; "
              f"peak RSS {r.get('peak_mb', 0):.0f} MB)",
              flush=True)
    base = f"echo {args.old} full" if old is not None else "echo full"
    for name in step:
        if name != base:
            print(f"  {base} / {name}: {step[base] / step[name]:.2f}x s/step")


if __name__ == "__main__":
    main()
