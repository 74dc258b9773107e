"""Official-rule scoring: the token rule itself, and per-category numbers on hand-built prediction files."""

from __future__ import annotations

import json
import os
import re

import pytest

from echo.eval.runner import prediction_record
from echo.eval.datasets import EvalItem, load_benchmark
from echo.answers import string_match
from echo.eval.scoring import score_records, summary_markdown

BENCH_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "benchmarks")


def official_string_match(answer, prediction, choices):
    """The rule as published in the MMAU/MMAR evaluation scripts, restated independently for cross-checking."""
    def tokenize(text):
        return set(re.findall(r"\b\w+\b", text.lower()))

    prediction_tokens = tokenize(prediction)
    answer_tokens = tokenize(answer)
    if not prediction_tokens:
        return False
    incorrect_tokens = set()
    for choice in choices:
        choice_tokens = tokenize(choice)
        if choice_tokens != answer_tokens:
            incorrect_tokens.update(choice_tokens - answer_tokens)
    return answer_tokens.issubset(prediction_tokens) and prediction_tokens.isdisjoint(incorrect_tokens)


CHOICES = ["Man", "Woman", "Child", "Robot"]


@pytest.mark.parametrize(
    "prediction, answer, choices, expected",
    [
        ("Man", "Man", CHOICES, True),
        ("man.", "Man", CHOICES, True),  # case and punctuation do not matter
        ("The answer is Man", "Man", CHOICES, True),  # neutral extra words are allowed
        ("Man or Woman", "Man", CHOICES, False),  # a word only a wrong choice has
        ("", "Man", CHOICES, False),  # nothing predicted
        ("...", "Man", CHOICES, False),  # no word tokens at all
        ("a woman", "A man", ["A man", "A woman"], False),
        ("man", "A man", ["A man", "A woman"], False),  # quirk: every answer word (here "a") must appear
        ("cat dog", "dog cat", ["dog cat", "cat dog", "bird"], True),  # choices with the same words are not "wrong"
        ("3", "3", ["3", "4", "5", "13"], True),
        ("13", "3", ["3", "4", "5", "13"], False),
    ],
)
def test_string_match_cases(prediction, answer, choices, expected):
    assert string_match(answer, prediction, choices) is expected
    assert official_string_match(answer, prediction, choices) is expected


def _mmau_record(i, task, difficulty, subcat, category, answer, choices, prediction, no_answer=None):
    rec = {"id": f"q{i}", "audio_id": f"./a/q{i}.wav", "question": "?", "choices": choices, "answer": answer,
           "task": task, "difficulty": difficulty, "sub-category": subcat, "category": category,
           "model_output": prediction}
    if no_answer is not None:
        rec["no_answer"] = no_answer
    return rec


def test_mmau_breakdown_counted_by_hand():
    c = CHOICES
    records = [
        _mmau_record(0, "sound", "easy", "S1", "Reasoning", "Man", c, "Man"),  # correct
        _mmau_record(1, "sound", "hard", "S1", ["Reasoning"], "Woman", c, "Man"),  # wrong
        _mmau_record(2, "sound", "easy", "S2", "Information Extraction", "Child", c, ""),  # no answer
        _mmau_record(3, "music", "medium", "M1", "Reasoning", "Robot", c, "robot!"),  # correct
        _mmau_record(4, "music", "medium", "M1", "Reasoning", "Man", c, "Man and Woman"),  # wrong
        _mmau_record(5, "speech", "hard", "P1", "Information Extraction", "Child", c, "Child"),  # correct
        _mmau_record(6, "speech", "easy", "P1", "Reasoning", "Woman", c, "Woman"),  # correct
    ]
    records.append({k: v for k, v in _mmau_record(7, "speech", "easy", "P1", "Reasoning", "Man", c, "x").items()
                    if k != "model_output"})  # never predicted: skipped, as the official script skips it
    s = score_records(records, "mmau-test-mini")
    # 4 correct of 7 predicted; item 7 not counted.
    assert (s.overall.correct, s.overall.total, s.overall.no_answer, s.not_predicted) == (4, 7, 1, 1)
    task = s.breakdown["task"]
    assert (task["sound"].correct, task["sound"].total) == (1, 3)
    assert (task["music"].correct, task["music"].total) == (1, 2)
    assert (task["speech"].correct, task["speech"].total) == (2, 2)
    diff = s.breakdown["difficulty"]
    assert (diff["easy"].correct, diff["easy"].total) == (2, 3)  # items 0, 2, 6
    assert (diff["medium"].correct, diff["medium"].total) == (1, 2)  # items 3, 4
    assert (diff["hard"].correct, diff["hard"].total) == (1, 2)  # items 1, 5
    sub = s.breakdown["sub-category"]
    assert {k: (v.correct, v.total) for k, v in sub.items()} == {"S1": (1, 2), "S2": (0, 1), "M1": (1, 2), "P1": (2, 2)}
    cat = s.breakdown["category"]  # the list-valued category joins its plain-string namesake
    assert (cat["Reasoning"].correct, cat["Reasoning"].total) == (3, 5)
    assert (cat["Information Extraction"].correct, cat["Information Extraction"].total) == (1, 2)
    row = s.paper_row()
    assert row["sound"] == pytest.approx(100 / 3) and row["music"] == 50.0 and row["speech"] == 100.0
    assert row["avg"] == pytest.approx(400 / 7)
    md = summary_markdown(s)
    assert "57.14%" in md and "no extractable answer: 1" in md and "| sound | music | speech | avg |" in md


def test_mmar_breakdown_counted_by_hand():
    def rec(i, modality, category, subcat, answer, pred):
        return {"id": f"m{i}", "audio_path": "./audio/x.wav", "question": "?", "choices": ["yes", "no"],
                "answer": answer, "modality": modality, "category": category, "sub-category": subcat,
                "answer_prediction": pred}

    records = [
        rec(0, "sound", "Signal Layer", "Counting", "yes", "yes"),
        rec(1, "sound", "Signal Layer", "Counting", "no", "yes"),
        rec(2, "mix-sound-speech", "Semantic Layer", "Content", "no", "No."),
        rec(3, "music", "Cultural Layer", "Theory", "yes", ""),
        rec(4, "music", "Semantic Layer", "Content", "no", "no"),
    ]
    s = score_records(records, "mmar")
    assert (s.overall.correct, s.overall.total, s.overall.no_answer) == (3, 5, 1)
    assert {k: (v.correct, v.total) for k, v in s.breakdown["modality"].items()} == {
        "sound": (1, 2), "mix-sound-speech": (1, 1), "music": (1, 2)}
    assert {k: (v.correct, v.total) for k, v in s.breakdown["category"].items()} == {
        "Signal Layer": (1, 2), "Semantic Layer": (2, 2), "Cultural Layer": (0, 1)}
    row = s.paper_row()
    assert row["sound"] == 50.0 and row["mix-sound-speech"] == 100.0 and row["speech"] is None
    assert row["avg"] == 60.0
    json.dumps(s.as_dict(), allow_nan=False)  # the summary is valid JSON (no NaN for empty columns)


def test_extraction_cases_scored_end_to_end():
    """Full responses -> extraction -> the official rule, on one item, every extraction case counted by hand."""
    item = EvalItem(id="i", audio_path="x.wav", question="Who speaks?", choices=["A man", "A woman", "A child", "A robot"],
                    answer="A woman", record={"id": "i", "audio_id": "./x.wav", "question": "Who speaks?",
                                              "choices": ["A man", "A woman", "A child", "A robot"],
                                              "answer": "A woman", "task": "speech", "difficulty": "easy",
                                              "sub-category": "s"})
    responses = {
        "<think>at <seg>1.0, 2.0</seg> a high voice</think><answer>A woman</answer>": True,  # tag, exact
        "<think>...</think><answer>b</answer>": True,  # option letter
        "<think>...</think><answer>(B) A woman.</answer>": True,  # letter and text
        "<think>...</think><answer>  a WOMAN!!  </answer>": True,  # case and punctuation
        "<think>...</think><answer>woman</answer>": True,  # only the distinguishing word (a shortened choice)
        "The answer is: A woman": True,  # no tags, an answer phrase
        "<think>...</think><answer>A man</answer>": False,  # wrong
        "<think>...</think><answer>a man or a woman</answer>": False,  # ambiguous -> no answer
        "<think>it could be the man, or the": False,  # cut off while thinking -> no answer
        "": False,  # empty -> no answer
    }
    records = [dict(prediction_record(item, r, "mmau-test-mini"), id=f"i{k}") for k, r in enumerate(responses)]
    s = score_records(records, "mmau-test-mini")
    assert [bool(string_match("A woman", r["model_output"], item.choices)) for r in records] == list(responses.values())
    assert (s.overall.correct, s.overall.total) == (6, 10)
    assert s.overall.no_answer == 3  # ambiguous, cut off, empty; "A man" is an answer, just a wrong one
    assert all(r["model_output"] in item.choices + [""] for r in records)  # never anything but a choice or nothing


@pytest.mark.parametrize("name, fname", [("mmar", "MMAR-meta.jsonl"), ("mmau-test-mini", "mmau-test-mini.json")])
def test_official_rule_agrees_on_real_metadata(name, fname):
    """On the published items, ours and the published rule agree for the answer, every wrong choice and no answer."""
    meta = os.path.join(BENCH_DIR, fname)
    if not os.path.exists(meta):
        pytest.skip(f"{meta} not present (benchmark metadata lives outside the repository)")
    bench = load_benchmark(name, "/nonexistent-audio-dir", meta)
    checked = 0
    for item in bench.items:
        for pred in [*item.choices, "", f"I think it is {item.answer}"]:
            assert string_match(item.answer, pred, item.choices) == official_string_match(item.answer, pred, item.choices)
            checked += 1
    assert checked > 4000


def test_span_answers_score_by_iou():
    from echo.answers import SPAN_ANSWER_IOU, answer_span, prediction_correct

    truth = "<seg>2.00, 4.00</seg>"
    assert answer_span(truth) == (2.0, 4.0) and answer_span("2, 4") == (2.0, 4.0)
    assert answer_span("2, 4", bare=False) is None and answer_span("<seg>1, 2</seg><seg>3, 4</seg>") is None
    assert answer_span("a dog barking") is None
    assert SPAN_ANSWER_IOU == 0.5
    cases = [("<seg>2.00, 4.00</seg>", True), ("<seg>2.5, 4.2</seg>", True), ("3.0, 4.0", True),  # IoU 1, .77, .5
             ("<seg>3.1, 4.0</seg>", False), ("<seg>5, 6</seg>", False), ("<seg>4.00, 2.00</seg>", False), ("", False)]
    for prediction, right in cases:
        assert prediction_correct(truth, prediction, [truth, "<seg>5.00, 6.00</seg>"]) is right, prediction
    # An answer that only looks like two numbers is scored by the token rule, as released benchmarks are.
    assert prediction_correct("1, 2", "1, 2", ["1, 2", "3, 4"])
    assert not prediction_correct("1, 2", "1, 3", ["1, 2", "3, 4"])  # by IoU it would be right (0.5)
    recs = [{"id": "a", "answer": truth, "choices": [truth, "<seg>5.00, 6.00</seg>"], "model_output": p, "task": "w"}
            for p in ("<seg>2.1, 3.9</seg>", "<seg>5.00, 6.00</seg>")]
    score = score_records(recs, "synthetic")
    assert (score.overall.correct, score.overall.total, score.overall.no_answer) == (1, 2, 0)
