"""The question item every record layout shares: row -> item -> row, audio resolution, and what a row must hold."""

from __future__ import annotations

import json
import os

import pytest

from echo.data.formats import read_eaqa, write_eaqa
from echo.data.item import DataFormatError, QuestionItem
from echo.data.synthetic import SynthConfig, make_item
from echo.eval.datasets import load_benchmark
from echo.train.rl_data import read_rl_records

FULL = {"id": "q1", "audio": "audio/q1.wav", "question": "How many beeps?", "choices": ["1", "2"], "answer": "2",
        "cot": "<think>Again <seg>0.50, 1.00</seg> two.</think><answer>2</answer>", "spans": [[0.5, 1.0]],
        "task": "beep_count", "difficulty": "easy", "duration_s": 2.0, "meta": {"source": "tone"}}


@pytest.mark.parametrize("row", [
    FULL,
    {k: FULL[k] for k in ("id", "audio", "question", "choices", "answer")},  # an RL prompt: no chain of thought
    {k: FULL[k] for k in ("id", "audio", "question", "choices")},  # a test set's item: the answer is withheld
])
def test_row_item_row_is_the_same_row(row):
    item = QuestionItem.from_row(row)
    assert item.to_row() == row
    assert list(item.to_row()) == list(row)  # same field order: files written from items do not change
    assert item.to_row()["choices"] is not row["choices"]  # the row handed out is a copy


def test_generated_item_survives_its_row():
    item = make_item(SynthConfig(n=2, seed=3, families=("beep_count",)), 1).record
    assert QuestionItem.from_row(json.loads(json.dumps(item.to_row()))) == item


def test_base_dir_resolves_relative_audio_only(tmp_path):
    assert QuestionItem.from_row(FULL, tmp_path).audio == os.path.join(str(tmp_path), "audio", "q1.wav")
    absolute = {**FULL, "audio": "/data/q1.wav"}
    assert QuestionItem.from_row(absolute, tmp_path).audio == "/data/q1.wav"


def test_published_audio_field_and_unknown_fields():
    row = {"id": "m1", "audio_id": "./a/m1.wav", "question": "Q?", "choices": ["x", "y"], "answer": "y",
           "task": "sound", "difficulty": "hard", "sub-category": "Counting"}
    item = QuestionItem.from_row(row, audio_key="audio_id")
    assert (item.audio, item.task, item.difficulty, item.answer) == ("./a/m1.wav", "sound", "hard", "y")
    assert item.to_row() == {"id": "m1", "audio": "./a/m1.wav", "question": "Q?", "choices": ["x", "y"],
                             "answer": "y", "task": "sound", "difficulty": "hard"}


def test_missing_fields_are_named():
    with pytest.raises(DataFormatError, match=r"missing fields \['audio', 'choices'\]"):
        QuestionItem.from_row({"id": "q", "question": "Q?"})
    with pytest.raises(DataFormatError, match=r"missing fields \['audio'\]"):
        QuestionItem.from_row({k: v for k, v in FULL.items() if k != "audio"}, audio_key="audio")


def test_one_eaqa_file_feeds_eval_and_rl_with_the_same_item(tmp_path):
    """EAQA, eval and RL read one line into the same question: what each adds is its own (prompt, published row)."""
    item = make_item(SynthConfig(n=1, seed=0, families=("beep_count",)), 0)
    import soundfile as sf

    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / item.record.audio, item.wave, 16000)
    write_eaqa(tmp_path / "synthetic.jsonl", [item.record])
    assert read_eaqa(tmp_path / "synthetic.jsonl") == [item.record]
    (ev,) = load_benchmark("synthetic", tmp_path).items
    assert ev.item == QuestionItem.from_row(item.record.to_row(), tmp_path)
    assert ev.record == item.record.to_row()
    (rl,), skipped = read_rl_records(tmp_path / "synthetic.jsonl")
    assert skipped == []
    assert (rl.id, rl.audio, rl.choices, rl.answer, rl.data_source) == (
        ev.id, ev.audio_path, ev.choices, ev.answer, item.record.task)
    assert rl.spans == [tuple(x) for x in item.record.spans] and rl.spans  # the span IoU reward's ground truth


def test_rl_jsonl_bad_lines_are_skipped_and_reported(tmp_path):
    item = make_item(SynthConfig(n=1, seed=0, families=("beep_count",)), 0)
    import soundfile as sf

    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / item.record.audio, item.wave, 16000)
    lines = [json.dumps(item.record.to_row()), "{oops", "[1, 2]"]
    (tmp_path / "rl.jsonl").write_text("\n".join(lines) + "\n")
    records, skipped = read_rl_records(tmp_path / "rl.jsonl")
    assert [r.id for r in records] == [item.record.id]
    assert skipped[0][0] == "line2" and skipped[0][1].startswith("line 2 is not JSON (")
    assert skipped[1] == ("line3", "neither verl nor EAQA layout; missing ['audio', 'question', 'choices', 'answer']")


@pytest.mark.parametrize("spans,error", [("1-2", "spans must be"), ([[1.0]], "spans must be"),
                                         ([[2.0, 1.0]], "start <= end"), ([[0.0, float("nan")]], "finite")])
def test_rl_rows_with_malformed_spans_are_skipped_and_reported(tmp_path, spans, error):
    item = make_item(SynthConfig(n=1, seed=0, families=("beep_count",)), 0)
    import soundfile as sf

    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / item.record.audio, item.wave, 16000)
    (tmp_path / "rl.jsonl").write_text(json.dumps({**item.record.to_row(), "spans": spans}) + "\n")
    records, skipped = read_rl_records(tmp_path / "rl.jsonl")
    assert records == [] and skipped[0][0] == item.record.id and error in skipped[0][1]
