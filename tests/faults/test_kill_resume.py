"""Every kill point resumes with nothing lost or duplicated, and the files of a killed-and-rerun command equal an
uninterrupted run's: data synth (a real SIGKILL, and a kill mid-item), SFT and GRPO (a kill between a logged step
and its checkpoint, and a kill inside the checkpoint swap), eval and generate --input. A rerun into a directory
holding another run or dataset is refused, naming what differs, unless told to start over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_checkpoints as tc
import torch
from helpers import AnswerOracle, tree
from safetensors.torch import load_file

import echo.engine.llm as llm
from echo.cli import main
from echo.data import synthetic
from echo.train import grpo as grpo_mod
from echo.train import sft as sft_mod

PRESET = "omni-tiny-gqa2"
SYNTH = ["--families", "beep_count", "pitch_at", "--clip-s", "3", "4", "--no-progress"]


def log_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(d / "model.safetensors")


class Killed(BaseException):
    """Stands for SIGKILL at a chosen point: nothing after it runs (not even except/finally that catch Exception)."""


def kill_on_call(monkeypatch, owner, name: str, at: int, after: bool = False):
    """Make ``owner.name`` raise Killed on its ``at``-th call (after running it when ``after``); returns the call
    counter."""
    real, calls = getattr(owner, name), {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at and not after:
            raise Killed(name)
        out = real(*args, **kwargs)
        if calls["n"] == at:
            raise Killed(name)
        return out

    monkeypatch.setattr(owner, name, wrapper)
    return calls


# ---- data synth ----------------------------------------------------------------------------------------------------

def test_synth_killed_mid_dataset_resumes_by_item(tmp_path, monkeypatch):
    argv = ["data", "synth", "--n", "8", "--seed", "3", *SYNTH]
    assert main(argv + ["--out", str(tmp_path / "straight")]) == 0
    calls = kill_on_call(monkeypatch, synthetic, "make_item", at=6)
    with pytest.raises(Killed):
        main(argv + ["--out", str(tmp_path / "resumed")])
    assert not (tmp_path / "resumed" / "synthetic.jsonl").exists()  # no dataset claims to be complete
    monkeypatch.undo()
    made = kill_on_call(monkeypatch, synthetic, "make_item", at=10**9)
    assert main(argv + ["--out", str(tmp_path / "resumed")]) == 0
    assert calls["n"] == 6 and made["n"] == 3  # items 0-4 were kept; 5, 6, 7 made on the rerun
    assert tree(tmp_path / "resumed") == tree(tmp_path / "straight")


@pytest.mark.slow
def test_synth_sigkilled_process_resumes_to_the_same_files(tmp_path):
    argv = ["data", "synth", "--n", "120", "--seed", "5", "--families", "beep_count", "--clip-s", "2", "3",
            "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "echo", *argv, "--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "killed" / synthetic.PARTIAL_NAME
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.is_file() and partial.read_text().count("\n") >= 10:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "synthetic.jsonl").exists(), "the process finished before it was killed"
    kept = partial.read_text().count("\n")
    assert main(argv + ["--out", str(tmp_path / "killed")]) == 0
    assert main(argv + ["--out", str(tmp_path / "straight")]) == 0
    assert kept >= 10 and tree(tmp_path / "killed") == tree(tmp_path / "straight")


def test_synth_refuses_another_config_and_overwrite_never_mixes_two(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ds"
    assert main(["data", "synth", "--n", "6", "--seed", "1", *SYNTH, "--out", str(out)]) == 0
    first = tree(out)
    assert main(["data", "synth", "--n", "6", "--seed", "2", *SYNTH, "--out", str(out)]) == 2
    assert "another config: seed (1 -> 2)" in capsys.readouterr().err
    assert tree(out) == first
    kill_on_call(monkeypatch, synthetic, "make_item", at=4)  # --overwrite killed half-way: the old set stays whole
    with pytest.raises(Killed):
        main(["data", "synth", "--n", "6", "--seed", "2", *SYNTH, "--out", str(out), "--overwrite"])
    monkeypatch.undo()
    assert tree(out) == first
    assert main(["data", "synth", "--n", "6", "--seed", "2", *SYNTH, "--out", str(out), "--overwrite"]) == 0
    assert main(["data", "synth", "--n", "6", "--seed", "2", *SYNTH, "--out", str(tmp_path / "fresh")]) == 0
    assert tree(out) == tree(tmp_path / "fresh")
    assert main(["data", "synth", "--n", "6", "--seed", "2", *SYNTH, "--out", str(out)]) == 0  # same config: kept
    assert tree(out) == tree(tmp_path / "fresh")


# ---- SFT -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def task(tmp_path_factory, checkpoint):
    d = tmp_path_factory.mktemp("kill")
    base, _ = checkpoint(PRESET)
    tc.write_sft_task(d, ["How many beeps?", "Is there speech?", "Which bird?"],
                      ["<think><seg>0.5, 1.5</seg>two</think><answer>B</answer>",
                       "<think>none</think><answer>A</answer>", "<think>owl</think><answer>C</answer>"], seed=40)
    tc.write_rl_task(d, ["How many beeps?", "Is there speech?", "Which bird?", "How loud?"], seed=50)
    (d / "data2.jsonl").write_text((d / "data.jsonl").read_text().replace("Which bird?", "Which fish?"))
    return d, base


def sft_argv(d: Path, base: Path, out: str, *extra) -> list[str]:
    return ["train", "sft", "--model", str(base), "--data", str(d / "data.jsonl"), "--out", str(d / out),
            "--lr", "1e-3", "--epochs", "2", "--save-every", "2", "--dtype", "fp32", *extra]


@pytest.fixture(scope="module")
def sft_straight(task):
    d, base = task
    assert main(sft_argv(d, base, "sft_straight")) == 0
    return d / "sft_straight"


def test_sft_killed_after_a_logged_step_resumes_without_duplicate_rows(task, sft_straight, monkeypatch):
    d, base = task
    kill_on_call(monkeypatch, sft_mod, "sequence_loss", at=4)  # in step 4: step 3 logged, checkpoint at step 2
    with pytest.raises(Killed):
        main(sft_argv(d, base, "sft_killed"))
    assert log_steps(d / "sft_killed") == [1, 2, 3]
    monkeypatch.undo()
    calls = kill_on_call(monkeypatch, sft_mod, "sequence_loss", at=10**9)
    assert main(sft_argv(d, base, "sft_killed")) == 0
    assert calls["n"] == 4  # steps 3-6 only: resumed from the step-2 checkpoint
    assert log_steps(d / "sft_killed") == [1, 2, 3, 4, 5, 6]
    a, b = weights(sft_straight / "final"), weights(d / "sft_killed" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sft_killed_inside_the_checkpoint_swap_resumes_from_that_checkpoint(task, sft_straight, monkeypatch):
    d, base = task
    out = d / "sft_swap"
    real_rename, renames = Path.rename, {"n": 0}

    def rename(self, target):
        if Path(target) == out / "checkpoint":  # the last rename of a save; the old version is already moved aside
            renames["n"] += 1
            if renames["n"] == 2:  # the step-4 checkpoint
                raise Killed("rename")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(Killed):
        main(sft_argv(d, base, "sft_swap"))
    monkeypatch.undo()
    assert not (out / "checkpoint").exists()
    calls = kill_on_call(monkeypatch, sft_mod, "sequence_loss", at=10**9)
    assert main(sft_argv(d, base, "sft_swap")) == 0
    assert calls["n"] == 2  # steps 5 and 6: the finished step-4 checkpoint was recovered, not lost
    assert log_steps(out) == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "feature_cache", "final", "log.jsonl", "run.json"]
    a, b = weights(sft_straight / "final"), weights(out / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("left", ["new+out", "new+old", "old only", "tmp+out", "old+out"])
def test_recover_dir_keeps_the_newest_whole_version(tmp_path, left):
    from echo.train.checkpoint import recover_dir

    out = tmp_path / "checkpoint"
    versions = {"old": "v1", "out": "v1", "new": "v2", "tmp": "v2 (partial)"}
    if left == "old+out":
        versions["out"] = "v2"  # killed while deleting the old version
    for part in left.replace(" only", "").split("+"):
        d = out if part == "out" else tmp_path / f"checkpoint.{part}"
        d.mkdir()
        (d / "version").write_text(versions[part])
    recover_dir(out)
    expected = "v2" if left in ("new+out", "new+old", "old+out") else "v1"
    assert (out / "version").read_text() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_sft_rerun_with_other_settings_is_refused_or_started_over(task, sft_straight, capsys):
    d, base = task
    before = tree(sft_straight)
    assert main(sft_argv(d, base, "sft_straight")[:-8] + ["--lr", "1e-2", "--epochs", "3", "--save-every", "2",
                                                          "--dtype", "fp32"]) == 2
    err = capsys.readouterr().err
    assert "lr (0.001 -> 0.01)" in err and "epochs (2 -> 3)" in err and "--overwrite" in err
    argv = sft_argv(d, base, "sft_straight")
    argv[argv.index("--data") + 1] = str(d / "data2.jsonl")
    assert main(argv) == 2
    assert "data (" in capsys.readouterr().err and tree(sft_straight) == before  # nothing changed
    assert main(sft_argv(d, base, "sft_straight", "--save-every", "3")) == 0  # cadence only: resumes (done)
    assert main(argv + ["--overwrite"]) == 0
    assert log_steps(sft_straight) == [1, 2, 3, 4, 5, 6]
    assert json.loads((sft_straight / "run.json").read_text())["data"]["path"].endswith("data2.jsonl")


# ---- GRPO ----------------------------------------------------------------------------------------------------------

def grpo_argv(d: Path, base: Path, out: str, *extra) -> list[str]:
    return ["train", "grpo", "--model", str(base), "--data", str(d / "rl.jsonl"), "--out", str(d / out),
            "--group-size", "2", "--prompts-per-step", "2", "--steps", "4", "--save-every", "2", "--lr", "1e-3",
            "--max-new-tokens", "8", "--kl-coef", "0", "--kv-cache-gb", "0.01", "--temperature", "1.0", *extra]


@pytest.mark.slow
def test_grpo_killed_after_a_logged_step_resumes_to_the_same_run(task, monkeypatch, capsys):
    d, base = task
    assert main(grpo_argv(d, base, "grpo_straight")) == 0
    kill_on_call(monkeypatch, grpo_mod, "response_logprobs", at=4)  # step 4's forward: 3 logged, checkpoint at 2
    with pytest.raises(Killed):
        main(grpo_argv(d, base, "grpo_killed"))
    monkeypatch.undo()
    assert log_steps(d / "grpo_killed") == [1, 2, 3]
    assert main(grpo_argv(d, base, "grpo_killed")) == 0
    assert log_steps(d / "grpo_killed") == [1, 2, 3, 4]
    a, b = weights(d / "grpo_straight" / "final"), weights(d / "grpo_killed" / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    straight = [json.loads(x) for x in (d / "grpo_straight" / "log.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (d / "grpo_killed" / "log.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in straight] == [r["reward"] for r in resumed]  # same rollouts, step by step
    assert main(grpo_argv(d, base, "grpo_killed")[:-14] + ["--group-size", "4"] + grpo_argv(d, base, "x")[-12:]) == 2
    assert "group_size (2 -> 4)" in capsys.readouterr().err


# ---- eval ----------------------------------------------------------------------------------------------------------

def test_eval_killed_mid_run_resumes_with_nothing_lost_or_repeated(tmp_path, monkeypatch):
    from echo.eval import cli as eval_cli

    assert main(["data", "synth", "--n", "6", "--seed", "4", *SYNTH, "--out", str(tmp_path / "ds")]) == 0
    argv = ["eval", "--benchmark", "synthetic", "--data", str(tmp_path / "ds"), "--model", "m", "--batch-size", "2",
            "--no-progress"]
    oracle = AnswerOracle.for_synthetic(tmp_path / "ds")
    monkeypatch.setattr(eval_cli, "load_model", lambda path: oracle)
    assert main(argv + ["--out", str(tmp_path / "straight")]) == 0
    killed = AnswerOracle.for_synthetic(tmp_path / "ds")
    monkeypatch.setattr(eval_cli, "load_model", lambda path: killed)
    kill_on_call(monkeypatch, killed, "generate", at=2, after=True)  # batch 2 generated, killed before written
    with pytest.raises(Killed):
        main(argv + ["--out", str(tmp_path / "resumed")])
    rerun = AnswerOracle.for_synthetic(tmp_path / "ds")
    monkeypatch.setattr(eval_cli, "load_model", lambda path: rerun)
    assert main(argv + ["--out", str(tmp_path / "resumed")]) == 0
    assert len(rerun.requests) == 4 and not set(rerun.requests) & set(oracle.requests[:2])  # batch 1 kept
    for name in ("predictions.json", "summary.json", "summary.md"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


# ---- generate --input ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_generate_input_killed_mid_batch_keeps_finished_results_and_resumes(task, tmp_path, monkeypatch, capsys):
    d, base = task
    rows = [{"id": f"r{i}", "audio": str(d / f"clip{i % 3}.wav"), "prompt": f"Question {i}?",
             "max_new_tokens": 3 + 4 * i} for i in range(5)]
    rows.insert(2, {"id": "bad", "audio": str(d / "missing.wav"), "prompt": "hi"})  # a per-request error row
    (tmp_path / "req.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["generate", "--model", str(base), "--input", str(tmp_path / "req.jsonl"), "--kv-cache-gb", "0.01",
            "--max-num-seqs", "2"]
    assert main(argv + ["--out", str(tmp_path / "straight.jsonl")]) == 0
    steps = kill_on_call(monkeypatch, llm.Engine, "step", at=9)  # some requests finished, others in flight
    with pytest.raises(Killed):
        main(argv + ["--out", str(tmp_path / "resumed.jsonl")])
    monkeypatch.undo()
    kept = [json.loads(x) for x in (tmp_path / "resumed.jsonl").read_text().splitlines()]
    assert steps["n"] == 9 and 2 <= len(kept) < len(rows)  # finished results were on disk before the kill
    added = kill_on_call(monkeypatch, llm.Engine, "add_request", at=10**9)
    assert main(argv + ["--out", str(tmp_path / "resumed.jsonl")]) == 0
    assert added["n"] == len(rows) - len(kept)  # only the missing lines ran again
    assert (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "straight.jsonl").read_bytes()
    out = [json.loads(x) for x in (tmp_path / "straight.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [r["id"] for r in rows] and [r["index"] for r in out] == list(range(6))
    assert "missing.wav" in out[2]["error"] and all(r["error"] is None for r in out if r["id"] != "bad")
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "resumed.jsonl")]) == 0  # everything there: nothing to run
    assert "all 6 results already in" in capsys.readouterr().out
