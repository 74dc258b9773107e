"""Every bad command line a user is likely to type gives exit code 2 and one line ``echo <subcommand>: error: ...``
naming the problem, never a traceback, and fails before any model time (no load, no KV cache). Run in-process
through ``echo.cli.main``. The table of cases below is the suite: add a case for every new way of failing."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import tiny_checkpoints as tc
import torch
from safetensors.torch import load_file, save_file

import echo.models
from echo.cli import main

PRESET = "omni-tiny-gqa2"


@pytest.fixture(scope="module")
def env(tmp_path_factory, checkpoint):
    """A checkpoint, good and broken copies of it, a clip, a truncated clip, and good and bad data files."""
    d = tmp_path_factory.mktemp("faults")
    base, _ = checkpoint(PRESET)
    weights = load_file(base / "model.safetensors")
    name = sorted(k for k in weights if k.endswith("q_proj.weight"))[0]
    for label, change in (("nan", lambda t: t.index_fill(0, torch.tensor([0]), float("nan"))),
                          ("int32", lambda t: t.to(torch.int32))):
        shutil.copytree(base, d / label)
        save_file({**weights, name: change(weights[name])}, d / label / "model.safetensors", metadata={"format": "pt"})
    shutil.copytree(base, d / "good")
    shutil.copytree(base, d / "badtok")
    (d / "badtok" / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "nonsense"')
    shutil.copytree(base, d / "listcfg")
    (d / "listcfg" / "config.json").write_text("[1, 2]")
    sf.write(d / "clip.wav", tc.sine_clip(1.0), 16000, subtype="PCM_16")
    data = (d / "clip.wav").read_bytes()
    (d / "cut.wav").write_bytes(data[: len(data) // 2])
    tc.write_sft_task(d, ["How many beeps?"], ["<think>none</think><answer>A</answer>"], seed=3)
    tc.write_rl_task(d, ["How many beeps?"], seed=3)
    (d / "empty.jsonl").write_text("")
    (d / "list.jsonl").write_text("[1, 2]\n")
    (d / "garbage.jsonl").write_text("this is not json\n")
    (d / "noaudio.jsonl").write_text(json.dumps({"id": "x", "messages": [
        {"role": "user", "content": "<audio>hi"}, {"role": "assistant", "content": "<answer>A</answer>"}],
        "audios": ["missing.wav"]}) + "\n")
    (d / "badmsgs.jsonl").write_text(json.dumps({"id": "x", "messages": "hello", "audios": ["clip0.wav"]}) + "\n")
    (d / "req_list.jsonl").write_text("[1]\n")
    (d / "req_noprompt.jsonl").write_text(json.dumps({"audio": "clip.wav"}) + "\n")
    (d / "req_badtemp.jsonl").write_text(json.dumps({"audio": str(d / "clip.wav"), "prompt": "hi",
                                                     "temperature": -1}) + "\n")
    (d / "req_ok.jsonl").write_text(json.dumps({"audio": str(d / "clip.wav"), "prompt": "hi"}) + "\n")
    (d / "a_file").write_text("not a directory")
    (d / "full").mkdir()
    (d / "full" / "notes.txt").write_text("a trained checkpoint could live here")
    (d / "preds_empty.jsonl").write_text("")
    (d / "preds.jsonl").write_text(json.dumps({"id": "a", "question": "q", "choices": ["x", "y"], "answer": "x",
                                               "model_output": "x", "task": "t"}) + "\n")
    return d


def _generate(d, *extra, model=None):
    return ["generate", "--model", str(model or d / "nan"), *extra]


def _sft(d, *extra, data="data.jsonl", out="sft_out"):
    return ["train", "sft", "--model", str(d / "good"), "--data", str(d / data), "--out", str(d / out), *extra]


def _grpo(d, *extra, data="rl.jsonl"):
    return ["train", "grpo", "--model", str(d / "good"), "--data", str(d / data), "--out", str(d / "grpo_out"),
            *extra]


# (case id, argv builder, words the message must contain). A builder gets the fixture directory.
CASES = [
    # training data
    ("sft missing data", lambda d: _sft(d, data="nope.jsonl"), ["nope.jsonl", "not found"]),
    ("sft empty data", lambda d: _sft(d, data="empty.jsonl", out="o1"), ["empty.jsonl", "no records"]),
    ("sft non-object line", lambda d: _sft(d, data="list.jsonl", out="o2"), ["line 1", "JSON object"]),
    ("sft non-JSON line", lambda d: _sft(d, data="garbage.jsonl", out="o3"), ["line 1", "not JSON"]),
    ("sft unusable records", lambda d: _sft(d, data="noaudio.jsonl", out="o4"), ["no usable records"]),
    ("sft malformed messages", lambda d: _sft(d, data="badmsgs.jsonl", out="o5"), ["line 1", "malformed"]),
    ("sft out is a file", lambda d: _sft(d, out="a_file"), ["a_file", "not a directory"]),
    ("sft grad-accum 0", lambda d: _sft(d, "--grad-accum", "0"), ["--grad-accum", "positive"]),
    ("sft epochs -1", lambda d: _sft(d, "--epochs", "-1"), ["--epochs", "positive"]),
    ("sft lr 0", lambda d: _sft(d, "--lr", "0"), ["--lr", "positive"]),
    ("sft lr nan", lambda d: _sft(d, "--lr", "nan"), ["--lr", "positive"]),
    ("sft max-len abc", lambda d: _sft(d, "--max-len", "abc"), ["--max-len", "integer"]),
    ("sft model not a dir", lambda d: _sft(d, out="o6") + ["--model", str(d / "nope")], ["nope", "not a directory"]),
    ("grpo group-size 0", lambda d: _grpo(d, "--group-size", "0"), ["--group-size", "positive"]),
    ("grpo steps 0", lambda d: _grpo(d, "--steps", "0"), ["--steps", "positive"]),
    ("grpo micro-batch 0", lambda d: _grpo(d, "--micro-batch", "0"), ["--micro-batch", "positive"]),
    ("grpo unknown reward", lambda d: _grpo(d, "--reward", "bogus=1"), ["--reward", "bogus"]),
    ("grpo reward without weight", lambda d: _grpo(d, "--reward", "accuracy"), ["--reward", "NAME=WEIGHT"]),
    ("grpo reward module missing", lambda d: _grpo(d, "--reward", "no_such_mod:f=1"), ["--reward", "no_such_mod"]),
    ("grpo missing data", lambda d: _grpo(d, data="nope.jsonl"), ["nope.jsonl", "not found"]),
    ("grpo too few prompts", lambda d: _grpo(d, "--prompts-per-step", "4", "--overwrite"),
     ["usable records", "prompts_per_step=4"]),
    # checkpoints
    ("generate NaN weight", lambda d: _generate(d, str(d / "clip.wav"), "hi"), ["q_proj", "non-finite"]),
    ("generate int32 weight", lambda d: _generate(d, str(d / "clip.wav"), "hi", model=d / "int32"),
     ["q_proj", "int32"]),
    ("generate corrupt tokenizer", lambda d: _generate(d, str(d / "clip.wav"), "hi", model=d / "badtok"),
     ["tokenizer.json"]),
    ("generate config.json list", lambda d: _generate(d, str(d / "clip.wav"), "hi", model=d / "listcfg"),
     ["config.json", "JSON object"]),
    ("generate model missing", lambda d: _generate(d, str(d / "clip.wav"), "hi", model=d / "nope"),
     ["nope", "not a directory"]),
    # generate inputs and outputs
    ("generate truncated wav", lambda d: _generate(d, str(d / "cut.wav"), "hi"), ["cut.wav", "truncated"]),
    ("generate missing audio", lambda d: _generate(d, str(d / "nope.wav"), "hi"), ["nope.wav", "not found"]),
    ("generate no prompt", lambda d: _generate(d, str(d / "clip.wav")), ["AUDIO and PROMPT"]),
    ("generate input without output", lambda d: _generate(d, "--input", str(d / "req_ok.jsonl")), ["--out"]),
    ("generate input missing", lambda d: _generate(d, "--input", str(d / "nope.jsonl"), "--out",
                                                   str(d / "r.jsonl")), ["nope.jsonl", "not found"]),
    ("generate input non-object", lambda d: _generate(d, "--input", str(d / "req_list.jsonl"), "--out",
                                                      str(d / "r.jsonl")), ["line 1", "JSON object"]),
    ("generate input no prompt", lambda d: _generate(d, "--input", str(d / "req_noprompt.jsonl"), "--out",
                                                     str(d / "r.jsonl")), ["line 1", "'prompt'"]),
    ("generate input bad temperature", lambda d: _generate(d, "--input", str(d / "req_badtemp.jsonl"), "--out",
                                                           str(d / "r.jsonl")), ["line 1", "temperature"]),
    ("generate output under a file", lambda d: _generate(d, "--input", str(d / "req_ok.jsonl"), "--out",
                                                         str(d / "a_file" / "r.jsonl")), ["a_file"]),
    ("generate output is a directory", lambda d: _generate(d, "--input", str(d / "req_ok.jsonl"), "--out",
                                                           str(d / "full")), ["full", "directory"]),
    ("generate max-new-tokens 0", lambda d: _generate(d, "--max-new-tokens", "0"), ["--max-new-tokens", "positive"]),
    ("generate kv-cache-gb 0", lambda d: _generate(d, "--kv-cache-gb", "0"), ["--kv-cache-gb", "positive"]),
    ("generate max-num-seqs -2", lambda d: _generate(d, "--max-num-seqs", "-2"), ["--max-num-seqs", "positive"]),
    ("generate device bogus", lambda d: _generate(d, str(d / "clip.wav"), "hi", "--device", "tpu9"), ["tpu9"]),
    # make-tiny, data synth, eval, features
    ("make-tiny bogus preset", lambda d: ["make-tiny", str(d / "t1"), "--preset", "bogus"], ["bogus", "preset"]),
    ("make-tiny non-empty dir", lambda d: ["make-tiny", str(d / "full")], ["full", "not empty", "--overwrite"]),
    ("make-tiny onto a file", lambda d: ["make-tiny", str(d / "a_file")], ["a_file", "file"]),
    ("synth out is a file", lambda d: ["data", "synth", "--n", "2", "--out", str(d / "a_file"), "--no-progress"],
     ["a_file", "not a directory"]),
    ("synth n 0", lambda d: ["data", "synth", "--n", "0", "--out", str(d / "s")], ["--n", "positive"]),
    ("synth into foreign dir", lambda d: ["data", "synth", "--n", "2", "--out", str(d / "full"), "--no-progress"],
     ["full", "no echo synthetic dataset", "--overwrite"]),
    ("eval empty predictions", lambda d: ["eval", "--benchmark", "synthetic", "--predictions",
                                          str(d / "preds_empty.jsonl")], ["preds_empty.jsonl", "no predictions"]),
    ("sft out under a file", lambda d: _sft(d, out="a_file/run"), ["a_file"]),
    ("grpo out under a file", lambda d: _grpo(d)[:-1] + [str(d / "a_file" / "run")], ["a_file"]),
    ("synth out under a file", lambda d: ["data", "synth", "--n", "2", "--out", str(d / "a_file" / "s"),
                                          "--no-progress"], ["a_file"]),
    ("make-tiny under a file", lambda d: ["make-tiny", str(d / "a_file" / "t")], ["a_file"]),
    ("eval out under a file", lambda d: ["eval", "--benchmark", "synthetic", "--predictions", str(d / "preds.jsonl"),
                                         "--out", str(d / "a_file" / "e")], ["a_file"]),
    ("features out in a missing dir", lambda d: ["features", str(d / "clip.wav"), "--out",
                                                 str(d / "a_file" / "x.npy")], ["a_file"]),
    # a directory where a file is expected is called one (durable.require_file), never "not found"
    ("sft data is a directory", lambda d: _sft(d, data="full", out="o7"), ["full", "is a directory, not a file"]),
    ("grpo data is a directory", lambda d: _grpo(d, data="full"), ["full", "is a directory, not a file"]),
    ("generate audio is a directory", lambda d: _generate(d, str(d / "full"), "hi"), ["full", "is a directory"]),
    ("generate input is a directory", lambda d: _generate(d, "--input", str(d / "full"), "--out",
                                                          str(d / "r.jsonl")), ["full", "is a directory"]),
    ("eval meta is a directory", lambda d: ["eval", "--benchmark", "synthetic", "--data", str(d), "--meta",
                                            str(d / "full"), "--model", str(d / "good"), "--out", str(d / "e1")],
     ["full", "is a directory, not a file"]),
    ("eval predictions is a directory", lambda d: ["eval", "--benchmark", "synthetic", "--predictions",
                                                   str(d / "full")], ["full", "no predictions.json in this directory"]),
    ("features audio is a directory", lambda d: ["features", str(d / "full")], ["full", "is a directory"]),
]
if not torch.cuda.is_available():
    CASES.append(("generate cuda without a GPU", lambda d: _generate(d, str(d / "clip.wav"), "hi", "--device", "cuda"),
                  ["cuda", "no CUDA device"]))


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage line(s), then the error line
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_command_line_gives_one_clear_line(case, env, capsys, monkeypatch):
    _, build, words = case
    engines = []
    import echo.engine.llm as llm

    real = llm.Engine.__init__
    monkeypatch.setattr(llm.Engine, "__init__", lambda self, *a, **k: (engines.append(1), real(self, *a, **k))[1])
    code, err = run_cli(build(env), capsys)
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("echo ") and "error:" in last, err
    for word in words:
        assert word in last, (word, last)
    assert not engines  # refused before any KV cache was allocated


def test_read_only_output_directory_is_refused_before_loading(env, capsys, monkeypatch, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the same path is covered by 'output under a file'")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    loads = []
    monkeypatch.setattr(echo.models, "load", lambda *a, **k: loads.append(a))
    code, err = run_cli(_generate(env, "--input", str(env / "req_ok.jsonl"), "--out", str(ro / "r.jsonl")), capsys)
    assert code == 2 and "not writable" in err and not loads


def test_generate_input_checks_everything_before_loading_the_model(env, capsys, monkeypatch):
    loads = []
    monkeypatch.setattr(echo.models, "load", lambda *a, **k: loads.append(a))
    for argv in (_generate(env, "--input", str(env / "req_badtemp.jsonl"), "--out", str(env / "r.jsonl")),
                 _generate(env, "--input", str(env / "req_ok.jsonl"), "--out", str(env / "a_file" / "r.jsonl"))):
        assert run_cli(argv, capsys)[0] == 2
    assert not loads


def test_make_tiny_force_replaces_and_default_refuses(env, capsys):
    target = env / "tiny_target"
    assert main(["make-tiny", str(target)]) == 0
    before = (target / "model.safetensors").read_bytes()
    code, err = run_cli(["make-tiny", str(target), "--seed", "1"], capsys)
    assert code == 2 and "not empty" in err
    assert (target / "model.safetensors").read_bytes() == before  # the refused run touched nothing
    assert main(["make-tiny", str(target), "--seed", "1", "--overwrite"]) == 0
    assert (target / "model.safetensors").read_bytes() != before
    assert not (env / "tiny_target.tmp").exists() and not (env / "tiny_target.old").exists()


def test_loader_names_non_finite_and_integer_tensors(env):
    from echo.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"q_proj\.weight holds 32 non-finite"):
        echo.models.load(env / "nan")
    with pytest.raises(CheckpointError, match=r"q_proj\.weight has dtype torch\.int32"):
        echo.models.load(env / "int32")


def test_truncated_wav_is_refused_and_a_whole_one_loads(env):
    from echo.audio import load
    from echo.errors import AudioError

    assert load(env / "clip.wav").shape == (16000,)
    with pytest.raises(AudioError, match=r"truncated audio file: its header declares 32000 bytes of audio \(1\.00 s\)"):
        load(env / "cut.wav")
    np.testing.assert_equal(sf.read(env / "cut.wav")[0].shape[0] < 16000, True)  # libsndfile alone reads it short
