"""Sharding by clip over RANK/WORLD_SIZE with a deterministic merge; the dry run; the no-LLM path; and the export
read by ``echo train sft`` and ``echo train grpo`` (one step of each on a tiny checkpoint)."""

from __future__ import annotations

import json

import pytest
from conftest import write_clips
from scripted import CAPTION, item, judge, synth

from echo.cli import main
from echo.train.data import read_records
from echo.train.rl_data import read_rl_records

EXPORTS = ("eaqa_sft.jsonl", "sft_messages.jsonl", "eaqa_rl.jsonl", "eaqa_rl.parquet")


def mixed(n: int) -> list[dict]:
    """Even clips' items go to SFT, odd clips' to RL (the judge rejects their chains of thought)."""
    rules = list(CAPTION) + [synth(f"c{i}", [item(f"c{i}", 0), item(f"c{i}", 1)]) for i in range(n)]
    rules += [judge(f"c{i}/{k}", cot=i % 2 == 0) for i in range(n) for k in range(2)]
    return rules


def pipeline(url, audio, meta, out, *extra) -> list[str]:
    return ["data", "pipeline", "--audio", str(audio), "--meta", str(meta), "--out", str(out), "--caption-endpoint",
            url, "--caption-model", "omni", "--llm-endpoint", url, "--llm-model", "r1", "--no-progress", *extra]


def exported(out) -> dict:
    return {name: (out / "export" / name).read_bytes() for name in EXPORTS}


@pytest.mark.parametrize("rules_only", [False, True], ids=["llm", "rules-only"])
def test_shards_merge_to_the_single_process_result(server, tmp_path, monkeypatch, capsys, rules_only):
    audio, meta = write_clips(tmp_path, 5)
    (audio / "c9.wav").write_bytes(b"not audio")  # counted as dropped by whichever shard owns it; blocks nothing
    server.script(mixed(5))
    extra = ["--rules-only"] if rules_only else []
    assert main(pipeline(server.url, audio, meta, tmp_path / "one", *extra)) == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        assert main(pipeline(server.url, audio, meta, tmp_path / "two", *extra)) == 0
        if rank == 1:
            assert "export waits for the other shards" in capsys.readouterr().out
            assert not (tmp_path / "two" / "export").exists()
    assert exported(tmp_path / "two") == exported(tmp_path / "one")
    assert (tmp_path / "two" / "report.json").read_text() == (tmp_path / "one" / "report.json").read_text()
    chunks = sorted(p.name[:18] for p in (tmp_path / "two" / "synthesize").iterdir())
    assert set(chunks) == {"r00000-of-00002-00", "r00001-of-00002-00"}  # both shards did their share
    if rules_only:
        assert server.counts()["digests"] == {}  # the last script was not used: no request at all
        report = json.loads((tmp_path / "one" / "report.json").read_text())
        # per clip: start, gap, overlap, order, longer (one bark, so no count question)
        assert report["synthesize"]["items_by_source"] == {"rules": 5 * 5} and report["filter"]["sft"] == 25
        assert report["synthesize"]["dropped"] == {"synthesize:audio_unreadable": 1}
    else:
        report = json.loads((tmp_path / "one" / "report.json").read_text())
        assert report["caption"]["dropped"] == {"caption:audio_unreadable": 1}


def test_dry_run_sends_and_writes_nothing(server, tmp_path, capsys):
    audio, meta = write_clips(tmp_path, 2)
    server.script(mixed(2))
    out = tmp_path / "out"
    assert main(pipeline(server.url, audio, meta, out, "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "[dry run] caption: 6 requests would be sent" in text and "base64 chars>" in text
    assert "Describe this audio clip comprehensively" in text
    assert server.counts()["digests"] == {}
    assert not any(p.suffix == ".jsonl" for p in out.rglob("*") if "cache" not in p.parts)


@pytest.mark.slow
def test_export_trains_one_step_of_sft_and_grpo(server, tmp_path, checkpoint, capsys):
    audio, meta = write_clips(tmp_path, 4)
    server.script(mixed(4))
    out = tmp_path / "out"
    assert main(pipeline(server.url, audio, meta, out)) == 0
    export = out / "export"
    assert [r.id for r in read_records(export / "sft_messages.jsonl")] == ["c0#llm0", "c0#llm1", "c2#llm0", "c2#llm1"]
    assert [r.id for r in read_records(export / "eaqa_sft.jsonl")] == ["c0#llm0", "c0#llm1", "c2#llm0", "c2#llm1"]
    for name in ("eaqa_rl.jsonl", "eaqa_rl.parquet"):
        records, skipped = read_rl_records(export / name)
        assert skipped == [] and [r.answer for r in records] == ["a car horn"] * 4
        assert records[0].choices == ["a dog bark", "a car horn", "a doorbell", "silence"]
    model, _ = checkpoint("omni-tiny-gqa2")
    capsys.readouterr()
    assert main(["train", "sft", "--model", str(model), "--data", str(export / "sft_messages.jsonl"),
                 "--out", str(tmp_path / "sft"), "--grad-accum", "4"]) == 0
    assert "trained 1 steps on 4 records (0 skipped)" in capsys.readouterr().out
    assert main(["train", "grpo", "--model", str(model), "--data", str(export / "eaqa_rl.parquet"), "--out",
                 str(tmp_path / "grpo"), "--group-size", "2", "--prompts-per-step", "2", "--steps", "1",
                 "--max-new-tokens", "8", "--kv-cache-gb", "0.02"]) == 0
    assert "trained 1 steps on 4 prompts (0 skipped)" in capsys.readouterr().out


def test_stages_one_by_one_equal_the_pipeline(server, tmp_path, capsys):
    audio, meta = write_clips(tmp_path, 3)
    server.script(mixed(3))
    assert main(pipeline(server.url, audio, meta, tmp_path / "whole")) == 0
    stages = tmp_path / "stages"
    common = ["--audio", str(audio), "--meta", str(meta), "--out", str(stages), "--no-progress"]
    assert main(["data", "caption", *common, "--caption-endpoint", server.url, "--caption-model", "omni"]) == 0
    assert main(["data", "export", "--out", str(stages)]) == 2  # nothing synthesised yet: refused, named
    assert "3 items are not finished yet (e.g. synthesize c0, " in capsys.readouterr().err
    for stage in ("synthesize", "filter"):
        assert main(["data", stage, *common, "--llm-endpoint", server.url, "--llm-model", "r1"]) == 0
    assert main(["data", "export", "--out", str(stages)]) == 0
    assert exported(stages) == exported(tmp_path / "whole")
