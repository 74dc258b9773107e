"""The whole loop from the command line, offline: a tiny checkpoint -> synthetic questions -> interleaved SFT ->
GRPO with re-listening rollouts -> evaluation; each stage reads the previous stage's files as they are."""

from __future__ import annotations

import json

from echo.cli import main


def test_make_tiny_synth_sft_grpo_eval(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    steps = [
        ["make-tiny", "base"],
        ["data", "synth", "--n", "4", "--seed", "0", "--out", "synth", "--families", "beep_count", "pitch_at",
         "--clip-s", "3", "4", "--no-progress"],
        ["train", "sft", "--model", "base", "--data", "synth/synthetic.jsonl", "--out", "sft", "--lr", "1e-3"],
        ["train", "grpo", "--model", "sft/final", "--data", "synth/synthetic.jsonl", "--out", "grpo",
         "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "12", "--kv-cache-gb", "0.02"],
        ["eval", "--benchmark", "synthetic", "--data", "synth", "--model", "grpo/final", "--out", "eval",
         "--max-new-tokens", "12", "--no-progress"],
    ]
    for argv in steps:
        assert main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "trained 4 steps on 4 records (0 skipped)" in out  # sft: 1 epoch, one record per step
    assert "trained 2 steps on 4 prompts (0 skipped)" in out  # grpo: 1 epoch of 2 prompts per step
    grpo_log = [json.loads(line) for line in (tmp_path / "grpo" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in grpo_log] == [1, 2] and all("reward/format" in r for r in grpo_log)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["overall"]["total"] == 4 and summary["not_predicted"] == 0  # every item was run and scored
    assert set(summary["breakdown"]["task"]) == {"beep_count", "pitch_at"}
