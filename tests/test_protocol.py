"""The Echo text format has one definition: the span grammar table below is what ``echo.protocol.read_span`` says,
and the data validator, the pipeline's rule filter and the engine's re-listen decision say the same about every row."""

from __future__ import annotations

import pytest

import echo
from echo import protocol
from echo.config import RelistenPolicy
from echo.data.formats import DataFormatError, EAQARecord, check_record, parse_cot
from echo.data.pipeline.rules import cot_problems
from echo.engine.relisten import decide
from echo.answers import extract_answer
from echo.protocol import build_prompt
from echo.train.rewards import Trajectory, format_reward

# body between <seg> and </seg> -> the span, or the reason read_span names
SPAN_TABLE = [
    ("3.0, 5.5", (3.0, 5.5)),
    ("  3.0 ,5.5 ", (3.0, 5.5)),
    ("3,5", (3.0, 5.0)),               # the comma separates two numbers, never a decimal comma
    ("1.0s, 2s", (1.0, 2.0)),          # seconds may be written after each number
    ("1.0 s, 2.5 s", (1.0, 2.5)),
    ("-1, 2", (-1.0, 2.0)),            # parses; lying outside the clip is the caller's check
    ("+1, 2", (1.0, 2.0)),
    (".5, 1e0", (0.5, 1.0)),
    ("2, 1", (2.0, 1.0)),              # parses; reversed is the caller's check
    ("", "empty"),
    ("   ", "empty"),
    ("nan", "not two numbers"),
    ("nan, 1", "not two numbers"),
    ("inf, 2", "not two numbers"),
    ("1, Infinity", "not two numbers"),
    ("3.0 5.5", "not two numbers"),
    ("1, 2, 3", "not two numbers"),
    ("3,0, 5,5", "not two numbers"),
    ("1.0ms, 2", "not two numbers"),
    ("a, b", "not two numbers"),
    ("1e999, 2", "not finite"),        # overflows to inf
    ("1, 1e400s", "not finite"),
]
CLIP_S = 100.0  # long enough that every parsed span of the table but the negative one lies inside it


@pytest.mark.parametrize("inner,expected", SPAN_TABLE)
def test_span_grammar(inner, expected):
    span, reason = protocol.read_span(inner)
    if isinstance(expected, tuple):
        assert (span, reason) == (expected, "ok") and protocol.parse_span(inner) == expected
    else:
        assert span is None and reason == expected and reason in protocol.SPAN_REASONS
        assert protocol.parse_span(inner) is None


def _cot(inner: str) -> str:
    return f"<think>Listening again <seg>{inner}</seg> there it is.</think><answer>B</answer>"


@pytest.mark.parametrize("inner,expected", SPAN_TABLE)
def test_the_data_validator_reads_spans_with_the_grammar(inner, expected):
    if isinstance(expected, tuple):
        assert parse_cot(_cot(inner)) == ([list(expected)], "B")
    else:
        with pytest.raises(DataFormatError, match=f"malformed span.*{expected}"):
            parse_cot(_cot(inner))
        rec = EAQARecord(id="x", audio="a.wav", question="q?", choices=["A", "B"], answer="B", cot=_cot(inner),
                         spans=[[1.0, 2.0]], task="t", duration_s=CLIP_S)
        assert any("malformed span" in p for p in check_record(rec))


@pytest.mark.parametrize("inner,expected", SPAN_TABLE)
def test_the_rule_filter_and_the_engine_agree_with_the_grammar(inner, expected):
    text = _cot(inner)
    d = decide(text[: text.index("</seg>") + len("</seg>")], 0, int(CLIP_S * 16_000), RelistenPolicy())
    problems = cot_problems({"cot": text, "answer": "B"}, CLIP_S)
    if isinstance(expected, tuple):
        assert d.reason != "malformed" and d.requested_s == expected and d.text == inner
        assert "malformed_span" not in problems and "cot_format" not in problems
    else:
        assert (d.action, d.reason, d.requested_s) == ("skip", "malformed", None)
        assert "malformed_span" in problems


def test_seg_bodies_read_each_tag_as_the_engine_does():
    text = "a <seg>1, 2</seg> b <seg>x <seg>3, 4</seg> c <seg>5,6"
    assert protocol.seg_bodies(text) == ["1, 2", "3, 4"]
    assert protocol.last_seg_text(text[: text.index("c") - 1]) == "3, 4"
    assert protocol.format_span(2.5, 3.1) == "<seg>2.50, 3.10</seg>"
    assert protocol.read_span(protocol.seg_bodies(protocol.format_span(2.5, 3.1))[0]) == ((2.5, 3.1), "ok")


def test_cot_and_answer_patterns():
    assert protocol.split_cot(" <think>x <seg>1, 2</seg></think>\n<answer> B </answer> ") == ("x <seg>1, 2</seg>", "B")
    assert protocol.split_cot("<answer>B</answer>") is None
    assert protocol.split_cot(protocol.format_cot("x", "B")) == ("x", "B")
    good = Trajectory(text="<think>t</think><answer>B</answer>", choices=["A", "B"], answer="B")
    assert format_reward(good) == 1.0
    assert format_reward(Trajectory(text="<answer>B</answer><think>t</think>", choices=["A", "B"], answer="B")) == 0.0
    assert extract_answer("<think>t</think><ANSWER>B</ANSWER>", ["A", "B"]).choice_index == 1
    assert protocol.TAGS == ("<seg>", "</seg>", "<think>", "</think>", "<answer>", "</answer>")


def test_echo_prompt_is_the_one_eval_uses():
    text = build_prompt("Who speaks?", ["Man", "Woman"])
    assert text == protocol.ECHO_PROMPT.format(question="Who speaks?", choices="['Man', 'Woman']")
    assert text.endswith("Answer in the format of <think>...</think><answer>...</answer>.")


def test_splice_ids_has_one_definition(checkpoint):
    from echo.engine import relisten

    assert relisten.splice_ids is protocol.splice_ids
    assert protocol.splice_ids(3, 7, 8, 9) == [7, 8, 8, 8, 9] and protocol.splice_ids(0, 7, 8, 9) == [7, 9]
    path, _ = checkpoint("omni-tiny-gqa2")
    proc = echo.load(path).processor
    ids = proc.splice_ids(4)
    assert ids == protocol.splice_ids(4, proc.audio_bos_token_id, proc.audio_token_id, proc.audio_eos_token_id)
    assert proc.decode(ids) == "<|audio_bos|>" + "<|AUDIO|>" * 4 + "<|audio_eos|>"



@pytest.mark.parametrize("span, every_s, clip_s, expected, text", [
    ((2.13, 3.57), 1.0, 9.0, (2.0, 4.0), "<seg>2.0, 4.0</seg>"),
    ((2.0, 4.0), 1.0, 9.0, (2.0, 4.0), "<seg>2.0, 4.0</seg>"),          # already on the marks: unchanged
    ((2.13, 3.57), 0.5, 9.0, (2.0, 4.0), "<seg>2.0, 4.0</seg>"),
    ((2.63, 3.21), 0.5, 9.0, (2.5, 3.5), "<seg>2.5, 3.5</seg>"),
    ((0.07, 0.3), 0.2, 9.0, (0.0, 0.4), "<seg>0.0, 0.4</seg>"),
    ((6.2, 7.31), 1.0, 7.34, (6.0, 7.34), "<seg>6.0, 7.34</seg>"),    # the end stops at the clip's, off the grid
    ((6.2, 7.34), 1.0, 7.3475, (6.0, 7.34), "<seg>6.0, 7.34</seg>"),  # a clip's end off the 10 ms grid: not past it
    ((0.3, 0.31), 3.0, 9.0, (0.0, 3.0), "<seg>0.0, 3.0</seg>"),
])
def test_on_marks_widens_a_span_to_the_marks_around_it(span, every_s, clip_s, expected, text):
    got = protocol.on_marks(*span, every_s, clip_s)
    assert got == expected and got[0] <= span[0] and span[1] <= got[1] <= clip_s
    assert protocol.format_marks_span(*got) == text and protocol.parse_span(text[5:-6]) == expected
    # the digits are the marks' own text (what a model with time marks reads in its input)
    assert all(protocol.time_mark_text(x) == f"{x:.1f}s" for x in got if round(x * 10) == x * 10)
