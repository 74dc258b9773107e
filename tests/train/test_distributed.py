"""Two processes (torchrun, gloo, FSDP2) give the same GRPO step as one process with the same global batch: the
same rollouts and rewards, the same gradients, the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import echo
import tiny_checkpoints as tc
from helpers import assert_close

WORKER = Path(__file__).with_name("grpo_worker.py")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tc.train_workdir(tmp_path_factory, "dist")
    tc.write_rl_task(d, [f"Which, {i}?" for i in range(2)], seed=60)
    return d


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.slow
def test_two_processes_equal_one(workdir):
    args = [str(workdir / "base"), str(workdir / "rl.jsonl")]
    _run([sys.executable, str(WORKER), *args, str(workdir / "one"), "1"], workdir)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), *args,
          str(workdir / "two"), "1"], workdir)
    one, two = [json.loads((workdir / d / "log.jsonl").read_text()) for d in ("one", "two")]
    assert one["reward"] == two["reward"] and one["reward_std"] == two["reward_std"]
    assert one["relistens_per_trajectory"] == two["relistens_per_trajectory"] == 1.0
    assert one["reward_std"] > 0  # the advantages are not all zero: there is a gradient to compare
    assert abs(one["loss"] - two["loss"]) <= 1e-6 and abs(one["grad_norm"] - two["grad_norm"]) <= 1e-5 * one[
        "grad_norm"]
    g1, g2 = (load_file(workdir / d / "step1_grads.safetensors") for d in ("one", "two"))
    assert g1.keys() == g2.keys() and len(g1) > 10
    scale = max(float(g.abs().max()) for g in g1.values())
    for name in g1:
        assert_close(f"gradient {name}", g1[name], g2[name], atol=1e-5 * scale)
    a, b = echo.load(workdir / "one" / "final"), echo.load(workdir / "two" / "final")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        # AdamW's first step is g / (|g| + eps): summation-order noise on near-zero gradients is scaled up to
        # a fraction of lr (1e-3); the gradients above carry the exact comparison
        assert_close(f"weights {name}", p, q, atol=2e-4)


@pytest.mark.slow
def test_lora_two_processes_equal_one_over_two_steps(workdir):
    """LoRA under torchrun: the trained adapters reach each rank's engine replica, which decodes them folded into
    its base weights (``lora.merged``); the second step's rollouts, rewards and loss then equal one process's."""
    args = [str(workdir / "base"), str(workdir / "rl.jsonl")]
    _run([sys.executable, str(WORKER), *args, str(workdir / "lora-one"), "2", "4"], workdir)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), *args,
          str(workdir / "lora-two"), "2", "4"], workdir)
    one, two = [[json.loads(x) for x in (workdir / d / "log.jsonl").read_text().splitlines()]
                for d in ("lora-one", "lora-two")]
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert a["reward"] == b["reward"] and a["relistens_per_trajectory"] == b["relistens_per_trajectory"]
        assert abs(a["loss"] - b["loss"]) <= 1e-6 and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * a["grad_norm"]
    assert one[0]["reward_std"] > 0 and one[0]["grad_norm"] > 0  # the adapters moved before the second rollouts
    g = load_file(workdir / "lora-one" / "step1_grads.safetensors")
    assert g and all(".lora_" in name for name in g)  # only the adapters trained


@pytest.fixture(scope="module")
def sft_data(workdir):
    rows = []
    for i in range(5):  # 5 records, 4 per step: the second step leaves one process a zero-weight pad
        seg = f"<seg>0.{i + 2}, 1.{i + 1}</seg>" if i % 2 else ""
        rows.append({"id": f"s{i}", "audios": [f"clip{i % 2}.wav"], "messages": [
            {"role": "user", "content": f"<audio>Item {i}: what is heard?"},
            {"role": "assistant", "content": f"<think>{seg}tone {i}</think><answer>{'ABCD'[i % 4]}</answer>"}]})
    (workdir / "sft.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return workdir / "sft.jsonl"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_sft_two_processes_equal_one(workdir, sft_data, mode):
    args = ["-m", "echo", "train", "sft", "--model", str(workdir / "base"), "--data", str(sft_data),
            "--epochs", "2", "--grad-accum", "4", "--lr", "1e-3", "--save-every", "1"]
    args += ["--lora", "4"] if mode == "lora" else []
    one_dir, two_dir = workdir / f"sft1-{mode}", workdir / f"sft2-{mode}"
    _run([sys.executable, *args, "--out", str(one_dir)], workdir)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args,
          "--out", str(two_dir)], workdir)
    one, two = [[json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()] for d in (one_dir, two_dir)]
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"] and abs(a["loss"] - b["loss"]) <= 1e-5 * a["loss"], (a, b)
    if mode == "lora":
        a, b = (load_file(d / "final" / "adapter_model.safetensors") for d in (one_dir, two_dir))
        assert a.keys() == b.keys() and len(a) > 0
        pairs = [(k, a[k], b[k]) for k in a]
    else:
        m1, m2 = echo.load(one_dir / "final"), echo.load(two_dir / "final")
        pairs = [(n, p, q) for (n, p), q in zip(m1.named_parameters(), m2.parameters())]
    for name, p, q in pairs:
        assert_close(f"sft {mode} {name}", p, q, atol=1e-5)
