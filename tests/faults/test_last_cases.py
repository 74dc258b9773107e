"""The last reliability cases, one test (or table) each: warnings reach the user from every command and the server;
malformed training and evaluation records are skipped by line and reason, and a file that is mostly wrong fails in
one line; ``echo.audio.load`` takes every float dtype; a step that fails because of one sequence ends that sequence
alone; a kill between the two renames of a directory swap is recovered by the next run. (Directories given where a
file is expected are rows of test_cli_inputs' table.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tiny_checkpoints as tc
import torch
from helpers import assert_close, tree

import echo
from echo.cli import main
from echo.config import EngineConfig, SamplingParams
from echo.engine import runner
from echo.engine.llm import Engine, Request

PRESET = "omni-tiny-gqa2"
SYNTH = ["--families", "beep_count", "pitch_at", "--clip-s", "3", "4", "--no-progress"]
TRUNCATED = "audio of 5.0 s truncated to its first 4 s, the feature extractor's maximum"


@pytest.fixture(scope="module")
def short(tmp_path_factory, checkpoint):
    """A checkpoint whose feature extractor takes 4 s at most, a 5 s clip (truncated) and a 2 s one (not)."""
    d = tmp_path_factory.mktemp("short")
    base, _ = checkpoint(PRESET)
    shutil.copytree(base, d / "model")
    pre = json.loads((d / "model" / "preprocessor_config.json").read_text())
    pre.update(chunk_length=4, n_samples=4 * 16000, nb_max_frames=400)
    (d / "model" / "preprocessor_config.json").write_text(json.dumps(pre))
    sf.write(d / "long.wav", tc.sine_clip(5.0, seed=1), 16000, subtype="FLOAT")
    sf.write(d / "ok.wav", tc.sine_clip(2.0, seed=2), 16000, subtype="FLOAT")
    return d


def warning_lines(err: str, command: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"echo {command}: warning: ")]


# ---- 1. warnings reach the user ------------------------------------------------------------------------------------

def test_generate_prints_the_warning_once_and_every_output_row_carries_warnings(short, capsys):
    argv = ["generate", "--model", str(short / "model"), "--max-new-tokens", "3"]
    assert main(argv + [str(short / "long.wav"), "Hi?"]) == 0
    out, err = capsys.readouterr()
    [line] = warning_lines(err, "generate")
    assert TRUNCATED in line and out.strip()  # the answer still comes, on stdout; the warning on stderr
    (short / "req.jsonl").write_text(json.dumps({"id": "a", "audio": str(short / "long.wav"), "prompt": "Hi?"}) + "\n"
                                     + json.dumps({"id": "b", "audio": str(short / "ok.wav"), "prompt": "Hi?"}) + "\n")
    assert main(argv + ["--input", str(short / "req.jsonl"), "--out", str(short / "res.jsonl")]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(x) for x in (short / "res.jsonl").read_text().splitlines()]
    assert [len(r["warnings"]) for r in rows] == [1, 0] and TRUNCATED in rows[0]["warnings"][0]
    [line] = warning_lines(err, "generate")
    assert line.startswith("echo generate: warning: line 1 (a): " + TRUNCATED) and "1 warnings" in out


def test_eval_warnings_go_to_each_record_the_summary_and_stderr(short, tmp_path, capsys):
    shutil.copytree(short / "model", tmp_path / "model")
    pre = json.loads((tmp_path / "model" / "preprocessor_config.json").read_text())
    pre.update(chunk_length=3, n_samples=3 * 16000, nb_max_frames=300)  # the synthetic clips last 3.5-4 s
    (tmp_path / "model" / "preprocessor_config.json").write_text(json.dumps(pre))
    assert main(["data", "synth", "--n", "2", "--seed", "1", "--families", "beep_count", "--clip-s", "3.5", "4",
                 "--no-progress", "--out", str(tmp_path / "ds")]) == 0
    capsys.readouterr()
    assert main(["eval", "--benchmark", "synthetic", "--data", str(tmp_path / "ds"), "--model", str(tmp_path / "model"),
                 "--out", str(tmp_path / "ev"), "--max-new-tokens", "3", "--no-progress"]) == 0
    err = capsys.readouterr().err
    records = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    assert all(len(r["warnings"]) == 1 and "truncated to its first 3 s" in r["warnings"][0] for r in records)
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["warnings"]["count"] == 2 and set(summary["warnings"]["items"]) == {r["id"] for r in records}
    lines = warning_lines(err, "eval")
    assert sorted(line.split(": ")[2] for line in lines) == sorted(r["id"] for r in records)  # each item once
    assert "Items with warnings: 2" in (tmp_path / "ev" / "summary.md").read_text()


def test_train_sft_and_grpo_print_each_record_warning_once(short, capsys):
    d = short / "train"
    d.mkdir()
    tc.write_sft_task(d, ["How many beeps?"], ["<think>none</think><answer>A</answer>"], seed=3)
    tc.write_rl_task(d, ["How many beeps?", "How loud?"], seed=3)
    sf.write(d / "clip0.wav", tc.sine_clip(5.0, seed=1), 16000, subtype="FLOAT")  # both tasks' first clip: 5 s
    model = str(short / "model")
    assert main(["train", "sft", "--model", model, "--data", str(d / "data.jsonl"), "--out", str(d / "sft"),
                 "--epochs", "2", "--dtype", "fp32"]) == 0
    [line] = warning_lines(capsys.readouterr().err, "train sft")  # two epochs, one line
    assert line == f"echo train sft: warning: r0: {TRUNCATED}; re-listens are limited to them"
    assert main(["train", "grpo", "--model", model, "--data", str(d / "rl.jsonl"), "--out", str(d / "grpo"),
                 "--group-size", "2", "--prompts-per-step", "2", "--steps", "2", "--max-new-tokens", "4",
                 "--kv-cache-gb", "0.01", "--kl-coef", "0"]) == 0
    [line] = warning_lines(capsys.readouterr().err, "train grpo")  # two steps of rollouts, one line
    assert line.startswith(f"echo train grpo: warning: q0: {TRUNCATED}")


def test_the_server_returns_warnings_in_the_body_and_a_header(short):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import base64

    from fastapi.testclient import TestClient

    from echo.serve import ServeConfig, build_app

    engine = Engine(echo.load(short / "model"), EngineConfig(num_blocks=64, block_size=16))
    data = base64.b64encode((short / "long.wav").read_bytes()).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data,
                                                                                               "format": "wav"}},
                                                      {"type": "text", "text": "Hi?"}]}], "max_tokens": 3}
    with TestClient(build_app(engine, ServeConfig(model_name="tiny"))) as client:
        plain = client.post("/v1/chat/completions", json=body)
        assert plain.status_code == 200, plain.text
        [warning] = plain.json()["echo"]["warnings"]
        assert TRUNCATED in warning and plain.headers["x-echo-warnings"] == warning
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as streamed:
            assert streamed.headers["x-echo-warnings"] == warning
            first = json.loads(next(line for line in streamed.iter_lines() if line.startswith("data: "))[6:])
        assert first["echo"] == {"warnings": [warning]}
        ok = {**body, "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode((short / "ok.wav").read_bytes()).decode(),
                                                    "format": "wav"}}, {"type": "text", "text": "Hi?"}]}]}
        clean = client.post("/v1/chat/completions", json=ok)
        assert clean.json()["echo"] == {"warnings": []} and "x-echo-warnings" not in clean.headers


# ---- 2. malformed records ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth(tmp_path_factory, checkpoint):
    """A synthetic set of 3 items, its copy with every ``choices`` the string "x" (the issue's file), and its copy
    with line 2 so."""
    d = tmp_path_factory.mktemp("records")
    assert main(["data", "synth", "--n", "3", "--seed", "1", *SYNTH, "--out", str(d)]) == 0
    rows = [json.loads(x) for x in (d / "synthetic.jsonl").read_text().splitlines()]
    bad = [{**r, "choices": "x", "answer": "5"} for r in rows]
    (d / "all_bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    (d / "one_bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [rows[0], bad[1], rows[2]]))
    return d, rows, checkpoint(PRESET)[0]


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_training_refuses_a_malformed_file_in_one_line_and_skips_a_few_bad_lines(synth, kind, capsys):
    d, rows, base = synth
    extra = ["--epochs", "1", "--dtype", "fp32"] if kind == "sft" else [
        "--group-size", "2", "--prompts-per-step", "2", "--steps", "1", "--max-new-tokens", "4",
        "--kv-cache-gb", "0.01"]

    def train(data: str, out: str, *more: str) -> int:
        return main(["train", kind, "--model", str(base), "--data", str(d / data), "--out", str(d / out), *extra,
                     *more])

    assert train("all_bad.jsonl", f"{kind}_all") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3 of 3 records are malformed, more than the 1% allowed" in err
    assert f"{rows[0]['id']}: line 1: choices must be a list of at least 2 strings" in err
    assert train("one_bad.jsonl", f"{kind}_one") == 2  # 1 of 3 is over 1%
    assert "1 of 3 records are malformed" in capsys.readouterr().err
    assert train("one_bad.jsonl", f"{kind}_one", "--max-bad-share", "0.5") == 0
    out = capsys.readouterr().out
    assert f"skipped {rows[1]['id']}: line 2: choices must be a list of at least 2 strings" in out
    assert "(1 skipped)" in out and "on 2 " in out


def test_evaluation_skips_a_few_malformed_items_and_refuses_a_malformed_file(synth):
    from echo.eval.datasets import BenchmarkError, load_benchmark

    d, rows, _ = synth
    with pytest.raises(BenchmarkError) as raised:
        load_benchmark("synthetic", d, d / "one_bad.jsonl")
    assert "\n" not in str(raised.value) and "1 of 3 records are malformed" in str(raised.value)
    bench = load_benchmark("synthetic", d, d / "one_bad.jsonl", max_bad_share=0.5)
    assert [i.id for i in bench.items] == [rows[0]["id"], rows[2]["id"]]
    [(where, why)] = bench.skipped
    assert where == f"line 2 (id {rows[1]['id']!r})" and why.startswith("choices must be a list of at least 2")


def test_the_one_checker_takes_each_readers_required_fields():
    from echo.data.formats import check_record
    from echo.data.item import QuestionItem

    item = QuestionItem("q", "a.wav", "Which?", ["one", "two"], "two")
    assert check_record(item, ("answer",)) == []  # an RL prompt: no cot, spans or task needed
    assert "cot must be a non-empty string" in check_record(item)  # EAQA needs them all
    assert check_record(QuestionItem("q", "a.wav", "Which?", ["x"], "5"), ()) == [
        "choices must be a list of at least 2 strings"]
    repeated = QuestionItem("q", "a.wav", "Which?", ["one", "one", "two"], "two")
    assert check_record(repeated, ()) and not check_record(repeated, (), repeats_ok=True)  # as MMAU publishes


# ---- 3. audio dtypes -----------------------------------------------------------------------------------------------

TORCH_FLOATS = [getattr(torch, name) for name in ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn",
                                                  "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
                if hasattr(torch, name)]
NUMPY_FLOATS = [np.float16, np.float32, np.float64, np.longdouble]


@pytest.mark.parametrize("dtype", TORCH_FLOATS, ids=str)
def test_load_takes_every_torch_float_dtype(dtype):
    from echo.audio import load

    wave = torch.from_numpy(tc.sine_clip(0.5, seed=3)).to(dtype)
    got = load(wave)
    assert got.dtype == np.float32 and got.shape == (8000,)
    np.testing.assert_array_equal(got, wave.float().numpy())  # widening is exact
    load(torch.zeros(16000, dtype=dtype))


@pytest.mark.parametrize("dtype", NUMPY_FLOATS, ids=lambda t: np.dtype(t).name)
def test_load_takes_every_numpy_float_dtype(dtype):
    from echo.audio import load

    wave = tc.sine_clip(0.5, seed=3).astype(dtype)
    got = load(wave)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, wave.astype(np.float32))


def test_load_refuses_complex_tensors():
    from echo.audio import load
    from echo.errors import AudioError

    with pytest.raises(AudioError, match="complex samples are not audio"):
        load(torch.zeros(16000, dtype=torch.complex64))


# ---- 4. containment ------------------------------------------------------------------------------------------------

def test_a_step_failing_because_of_one_sequence_ends_that_sequence_alone(checkpoint, monkeypatch):
    """The failure comes with the culprit's fourth decode step, inside a step that decodes all three: the engine
    reruns that step in halves, ends the culprit with its message and the tokens it had, and the others finish
    with exactly the tokens (and log-probs) of a run without the failure."""
    model = echo.load(checkpoint(PRESET)[0])
    clip = tc.sine_clip(2.0, seed=5)
    greedy = SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True, logprobs=True)
    sampled = SamplingParams(temperature=1.0, seed=11, max_new_tokens=10, ignore_eos=True, logprobs=True)
    culprit = SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True, logprobs=True)
    requests = [Request(clip, "First?", greedy), Request(clip, "Culprit?", culprit), Request(clip, "Third?", sampled)]
    config = EngineConfig(num_blocks=96, block_size=16, max_model_len=512)
    reference = Engine(model, config).generate(requests)

    real, runs = runner.run_step, []

    def failing(model_, kv, bm, chunks):
        runs.append(len(chunks))
        if any(c.seq.params is culprit and c.seq.num_generated >= 3 for c in chunks):
            raise RuntimeError("injected failure of the culprit's step")
        return real(model_, kv, bm, chunks)

    monkeypatch.setattr(runner, "run_step", failing)
    engine = Engine(model, config)
    first, bad, third = engine.generate(requests)
    failed = next(i for i in range(1, len(runs)) if runs[i - 1] == 3 and runs[i] < 3)
    assert max(runs[failed:]) <= 2  # the step of all three failed, then ran in parts; the culprit never again
    [s] = bad.samples
    assert (s.finish_reason, s.error) == ("error", "RuntimeError: injected failure of the culprit's step")
    assert s.token_ids == reference[1].samples[0].token_ids[:3]
    for got, want in ((first, reference[0]), (third, reference[2])):
        g, w = got.samples[0], want.samples[0]
        assert (g.token_ids, g.finish_reason) == (w.token_ids, w.finish_reason) and len(g.token_ids) == 10
        assert_close("log-probs beside the failed sequence", torch.tensor(w.logprobs), torch.tensor(g.logprobs),
                     atol=1e-5)
    assert engine.bm.num_free == engine.bm.num_blocks and not engine.pending()


# ---- 5. interrupted directory swaps --------------------------------------------------------------------------------

def kill_at_rename(monkeypatch, target: Path):
    """SIGKILL stand-in at the swap's last rename: the old version is already moved aside, the new one not in place."""
    real = Path.rename

    class Killed(BaseException):
        pass

    def rename(self, dest):
        if Path(dest) == target:
            raise Killed(f"killed before renaming {self} to {dest}")
        return real(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    return Killed


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_synth_overwrite_killed_between_the_renames_is_recovered_by_the_next_run(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    argv = ["data", "synth", "--n", "4", *SYNTH, "--out", str(out)]
    assert main(argv + ["--seed", "1"]) == 0
    killed = kill_at_rename(monkeypatch, out)
    with pytest.raises(killed):
        main(argv + ["--seed", "2", "--overwrite"])
    monkeypatch.undo()
    assert not out.exists() and siblings(out) == ["ds.synth-new", "ds.synth-old"]  # two full copies left
    assert main(argv + ["--seed", "2", "--overwrite"]) == 0
    assert siblings(out) == ["ds"]
    assert main(argv + ["--seed", "2", "--out", str(tmp_path / "fresh")]) == 0
    assert tree(out) == tree(tmp_path / "fresh")
    killed = kill_at_rename(monkeypatch, out)  # again; a rerun without --overwrite keeps the finished new set
    with pytest.raises(killed):
        main(argv + ["--seed", "3", "--overwrite"])
    monkeypatch.undo()
    assert main(argv + ["--seed", "3"]) == 0 and siblings(out) == ["ds"]
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 3


def test_make_tiny_force_killed_between_the_renames_is_recovered_by_the_next_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "tiny"
    assert main(["make-tiny", str(out)]) == 0
    first = (out / "model.safetensors").read_bytes()
    killed = kill_at_rename(monkeypatch, out)
    with pytest.raises(killed):
        main(["make-tiny", str(out), "--seed", "1", "--overwrite"])
    monkeypatch.undo()
    assert not out.exists() and siblings(out) == ["tiny.new", "tiny.old"]
    assert main(["make-tiny", str(out), "--seed", "1"]) == 2  # the finished new checkpoint is back, and kept
    assert "not empty" in capsys.readouterr().err and siblings(out) == ["tiny"]
    assert (out / "model.safetensors").read_bytes() != first
    echo.load(out)
