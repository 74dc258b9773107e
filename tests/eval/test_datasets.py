"""Benchmark loaders on the published layouts, and every kind of bad metadata."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from echo.eval.datasets import BenchmarkError, check_audio, load_benchmark, resolve_audio

BENCH_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "benchmarks"))


def _need(fname):
    path = os.path.join(BENCH_DIR, fname)
    if not os.path.exists(path):
        pytest.skip(f"{path} not present (benchmark metadata lives outside the repository)")
    return path


def test_mmar_published_layout(tmp_path):
    bench = load_benchmark("mmar", tmp_path, _need("MMAR-meta.jsonl"))
    assert len(bench) == 1000 and len({i.id for i in bench.items}) == 1000
    first = bench.items[0]
    assert first.audio_path == os.path.join(str(tmp_path), "audio", f"{first.id}.wav")
    assert first.answer in first.choices
    modalities = {i.record["modality"] for i in bench.items}
    assert modalities == {"sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
                          "mix-sound-music-speech"}
    assert {i.record["category"] for i in bench.items} == {"Signal Layer", "Perception Layer", "Semantic Layer",
                                                            "Cultural Layer"}


def test_mmau_test_mini_published_layout(tmp_path):
    bench = load_benchmark("mmau-test-mini", tmp_path, _need("mmau-test-mini.json"))
    assert len(bench) == 1000
    assert {i.record["task"] for i in bench.items} == {"sound", "music", "speech"}
    assert {i.record["difficulty"] for i in bench.items} == {"easy", "medium", "hard"}
    assert bench.items[0].audio_path == os.path.join(str(tmp_path), "test-mini-audios", f"{bench.items[0].id}.wav")


def test_metadata_found_in_data_dir_by_published_name(tmp_path):
    rows = [{"id": "a", "audio_path": "./audio/a.wav", "question": "q", "choices": ["x", "y"], "answer": "x",
             "modality": "sound", "category": "Signal Layer", "sub-category": "c"}]
    (tmp_path / "MMAR-meta.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [i.id for i in load_benchmark("mmar", tmp_path).items] == ["a"]
    with pytest.raises(BenchmarkError, match="no mmau-test-mini.json"):
        load_benchmark("mmau-test-mini", tmp_path)
    with pytest.raises(BenchmarkError, match="unknown benchmark 'mmau-pro'"):
        load_benchmark("mmau-pro", tmp_path)


def _mmau_row(i, **over):
    row = {"id": f"id{i}", "audio_id": f"./test-mini-audios/id{i}.wav", "question": "q", "choices": ["x", "y"],
           "answer": "x", "dataset": "d", "task": "sound", "split": "test-mini", "category": "Reasoning",
           "sub-category": "s", "difficulty": "easy"}
    row.update(over)
    return row


def test_bad_metadata_lists_every_offending_item(tmp_path):
    rows = [
        _mmau_row(0),
        {k: v for k, v in _mmau_row(1).items() if k != "difficulty"},  # missing field
        _mmau_row(2, colour="red"),  # unknown field
        _mmau_row(0),  # duplicate id
        _mmau_row(4, answer="z"),  # answer not among the choices
        _mmau_row(5, choices="x,y"),  # wrong type
        "not an object",
    ]
    meta = tmp_path / "mmau-test-mini.json"
    meta.write_text(json.dumps(rows))
    with pytest.raises(BenchmarkError) as err:
        load_benchmark("mmau-test-mini", tmp_path)
    msg = str(err.value)
    assert "6 of 7 items" in msg
    assert "item 1 (id 'id1'): missing fields ['difficulty']" in msg
    assert "item 2 (id 'id2'): unknown fields ['colour']" in msg
    assert "item 3 (id 'id0'): duplicate id (first at item 0)" in msg
    assert "item 4 (id 'id4'): answer 'z' is not among the choices" in msg
    assert "item 5 (id 'id5'): choices must be a list" in msg
    assert "item 6: expected a JSON object, got str" in msg
    # Unknown fields are accepted on request; the rest still fail.
    meta.write_text(json.dumps([_mmau_row(0), _mmau_row(2, colour="red")]))
    assert len(load_benchmark("mmau-test-mini", tmp_path, strict=False)) == 2


def test_jsonl_with_broken_lines(tmp_path):
    good = {"id": "a", "audio_path": "./audio/a.wav", "question": "q", "choices": ["x", "y"], "answer": "x",
            "modality": "sound", "category": "Signal Layer", "sub-category": "c"}
    (tmp_path / "MMAR-meta.jsonl").write_text(json.dumps(good) + "\n{broken\n" + json.dumps(good) + "\n")
    with pytest.raises(BenchmarkError, match="line 2: invalid JSON"):
        load_benchmark("mmar", tmp_path)


def test_audio_resolution_and_checks(tmp_path):
    os.makedirs(tmp_path / "audio")
    sf.write(tmp_path / "audio" / "nested.wav", np.zeros(1600, dtype=np.float32), 16000)
    sf.write(tmp_path / "flat.wav", np.zeros(1600, dtype=np.float32), 16000)
    (tmp_path / "audio" / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    sf.write(tmp_path / "audio" / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    assert resolve_audio("./audio/nested.wav", str(tmp_path)) == str(tmp_path / "audio" / "nested.wav")
    assert resolve_audio("./audio/flat.wav", str(tmp_path)) == str(tmp_path / "flat.wav")  # unpacked flat
    assert resolve_audio("/abs/x.wav", str(tmp_path)) == "/abs/x.wav"

    rows = [_mmau_row(i, audio_id=f"./audio/{name}.wav") for i, name in
            enumerate(["nested", "flat", "corrupt", "empty", "missing"])]
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(rows))
    bench = load_benchmark("mmau-test-mini", tmp_path)
    with pytest.raises(BenchmarkError) as err:
        check_audio(bench.items, "header")
    msg = str(err.value)
    assert msg.startswith("3 of 5 audio files are missing or unreadable")
    assert "id2: " in msg and "cannot read" in msg
    assert "id3: " in msg and "no samples" in msg
    assert f"id4: {tmp_path / 'audio' / 'missing.wav'} (file not found)" in msg
    assert "id0" not in msg and "id1" not in msg
    with pytest.raises(BenchmarkError, match="1 of 5 audio files"):
        check_audio(bench.items, "exists")
    check_audio(bench.items[:2], "decode")  # the good ones decode
