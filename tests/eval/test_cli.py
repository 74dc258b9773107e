"""``echo eval``: argument wiring (flags derived from RunConfig), running a model, scoring a predictions file."""

from __future__ import annotations

import argparse
import json
import os
from types import SimpleNamespace

import pytest

from echo.cli import main
from echo.config import RelistenPolicy, SamplingParams
from echo.data.synthetic import SynthConfig, write_synthetic
from echo.eval import cli
from echo.eval.runner import RunConfig


def _parse(argv):
    parser = argparse.ArgumentParser(prog="echo")
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


@pytest.fixture
def synth(tmp_path):
    write_synthetic(SynthConfig(n=6, seed=9, families=("pitch_at", "loudest_burst"), difficulties=("easy",)),
                    tmp_path / "data")
    return tmp_path / "data"


class _Oracle:
    def __init__(self, data_dir):
        with open(os.path.join(data_dir, "synthetic.jsonl"), encoding="utf-8") as f:
            self.answers = {r["id"]: r["answer"] for r in map(json.loads, f)}
        self.calls = 0

    def generate(self, requests, sampling_params=None):
        self.calls += 1
        assert isinstance(sampling_params, SamplingParams) and sampling_params.max_new_tokens == 64
        assert sampling_params.temperature == 0.0
        return [SimpleNamespace(text=f"<answer>{self.answers[r.id]}</answer>") for r in requests]


def test_eval_with_a_model_writes_predictions_and_summary(synth, tmp_path, monkeypatch, capsys):
    oracle = _Oracle(synth)
    monkeypatch.setattr(cli, "load_model", lambda path: oracle)
    args = _parse(["--benchmark", "synthetic", "--data", str(synth), "--model", "m", "--out", str(tmp_path / "o"),
                   "--max-new-tokens", "64", "--batch-size", "4", "--no-progress"])
    assert args.func(args) == 0
    assert oracle.calls == 2
    assert "100.00%" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["overall"]["correct"] == 6


def test_missing_audio_is_reported_before_the_model_loads(synth, tmp_path, monkeypatch, capsys):
    first = sorted(os.listdir(synth / "audio"))[0]
    os.remove(synth / "audio" / first)
    loaded = []
    monkeypatch.setattr(cli, "load_model", lambda path: loaded.append(path))
    assert main(["eval", "--benchmark", "synthetic", "--data", str(synth), "--model", "m",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("echo eval: error: ") and "1 of 6 audio files are missing" in err and first in err
    assert loaded == []


def test_score_a_predictions_file_and_re_extract(tmp_path, capsys):
    choices = ["Man", "Woman", "Child", "Robot"]
    base = {"audio_id": "./x.wav", "question": "?", "choices": choices, "task": "speech", "difficulty": "easy",
            "sub-category": "s", "category": "Reasoning"}
    records = [
        # The public Echo evaluation maps "no answer" to the first choice; re-extraction undoes that.
        {**base, "id": "a", "answer": "Man", "model_prediction": "Man", "model_output": "Man",
         "model_response": "<think>I cannot tell"},
        {**base, "id": "b", "answer": "Woman", "model_output": "Woman", "model_response": "<answer>B</answer>"},
    ]
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(records))
    args = _parse(["--benchmark", "mmau-test-mini", "--predictions", str(path), "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    assert "100.00%" in capsys.readouterr().out  # scored as written: 2/2
    args = _parse(["--benchmark", "mmau-test-mini", "--predictions", str(path), "--re-extract"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "50.00%" in out and "no extractable answer: 1" in out
    assert main(["eval", "--benchmark", "mmar", "--predictions", str(tmp_path / "nope.json")]) == 2
    assert "echo eval: error: " in (err := capsys.readouterr().err) and "predictions file not found" in err


def test_arguments():
    with pytest.raises(SystemExit):
        _parse(["--benchmark", "mmau-pro", "--model", "m"])
    with pytest.raises(SystemExit):  # a model and a predictions file at once
        _parse(["--benchmark", "mmar", "--model", "m", "--predictions", "p"])
    args = _parse(["--benchmark", "mmar", "--model", "m", "--data", "d", "--out", "o"])
    assert args.func is cli.run_eval_command and args.temperature == 0.0
    defaults = RunConfig(rank=0, world_size=1)  # the run flags' defaults are RunConfig's own
    assert (args.batch_size, args.limit, args.prompt_style, args.check_audio) == (
        defaults.batch_size, defaults.limit, defaults.prompt_style, defaults.check_audio)
    params = cli.sampling_params(args)
    assert (params.temperature, params.top_p, params.max_new_tokens, params.seed) == (0.0, 1.0, 1024, 0)
    assert params.relisten == RelistenPolicy()  # the engine's own policy
    args = _parse(["--benchmark", "mmar", "--model", "m", "--max-relistens", "0"])
    assert cli.sampling_params(args).relisten.max_turns == 0  # tags written, no audio inserted (grounded format)
    args = _parse(["--benchmark", "mmar", "--model", "m", "--batch-size", "3", "--check-audio", "decode"])
    assert (args.batch_size, args.check_audio) == (3, "decode")
