"""Re-listen parsing and the policy table: every malformed, reversed, out-of-range, short or runaway case."""

from __future__ import annotations

import pytest

from echo.config import RelistenPolicy
from echo.engine.relisten import decide, last_seg_text, parse_span, splice_ids
from echo.errors import ConfigError

SR = 16_000
CLIP = 10 * SR  # a 10 s clip


@pytest.mark.parametrize("inner,expected", [
    ("3.0, 5.5", (3.0, 5.5)), (" 3 ,5 ", (3.0, 5.0)), ("3.0s, 5.5s", (3.0, 5.5)), (".5,1.", (0.5, 1.0)),
    ("1e0, 2e0", (1.0, 2.0)), ("-1, 2", (-1.0, 2.0)),
    ("3.0 5.5", None), ("3.0, ", None), ("a, b", None), ("3.0, 5.5, 7", None), ("", None), ("nan, 2", None),
    ("1e999, 2", None), ("00:03, 00:05", None),
])
def test_parse_span(inner, expected):
    assert parse_span(inner) == expected


def test_last_seg_text_takes_the_last_tag():
    assert last_seg_text("a <seg>1, 2</seg> b <seg>3, 4</seg>") == "3, 4"
    assert last_seg_text("no opening 1, 2</seg>") is None
    assert last_seg_text("<seg>1, 2</seg> trailing") is None


@pytest.mark.parametrize("text,policy,action,reason,applied", [
    ("<seg>2.0, 4.5</seg>", {}, "relisten", "ok", (32_000, 72_000)),
    ("x<seg>0, 10</seg>", {}, "relisten", "ok", (0, CLIP)),
    ("<seg>8.0, 12.0</seg>", {}, "relisten", "clamped", (128_000, CLIP)),
    ("<seg>-1.0, 0.5</seg>", {}, "relisten", "clamped", (0, 8_000)),
    ("<seg>11.0, 12.0</seg>", {}, "skip", "outside clip", None),       # wholly past the clip
    ("<seg>8.0, 12.0</seg>", {"out_of_range": "skip"}, "skip", "out of range", None),
    ("<seg>8.0, 12.0</seg>", {"out_of_range": "stop"}, "stop", "out of range", None),
    ("<seg>5.0, 3.0</seg>", {}, "skip", "reversed", None),
    ("<seg>5.0, 3.0</seg>", {"reversed_span": "swap"}, "relisten", "swapped", (48_000, 80_000)),
    ("<seg>5.0, 3.0</seg>", {"reversed_span": "stop"}, "stop", "reversed", None),
    ("<seg>1.0, 1.1</seg>", {}, "skip", "too short", None),            # 0.1 s < 0.2 s
    ("<seg>1.0, 1.2</seg>", {}, "relisten", "ok", (16_000, 19_200)),   # exactly 0.2 s
    ("<seg>1.0, 1.1</seg>", {"min_span_s": 0.05}, "relisten", "ok", (16_000, 17_600)),
    ("<seg>here, there</seg>", {}, "skip", "malformed", None),
    ("<seg>here, there</seg>", {"malformed": "stop"}, "stop", "malformed", None),
    ("1, 2</seg>", {}, "skip", "malformed", None),
    ("<seg>0, 9</seg>", {"max_span_s": 2.0}, "relisten", "cut to max_span_s", (0, 32_000)),
])
def test_policy_table(text, policy, action, reason, applied):
    d = decide(text, turn=0, num_samples=CLIP, policy=RelistenPolicy(**policy))
    assert (d.action, d.reason, d.applied_samples) == (action, reason, applied)


def test_runaway_relistening():
    text = "<seg>1, 3</seg>"
    assert decide(text, 7, CLIP, RelistenPolicy()).action == "relisten"
    d = decide(text, 8, CLIP, RelistenPolicy())
    assert (d.action, d.reason) == ("skip", "max turns")  # echo keeps decoding to the answer
    assert decide(text, 8, CLIP, RelistenPolicy(after_max_turns="stop")).action == "stop"  # the reference stops
    assert decide(text, 0, CLIP, RelistenPolicy(max_turns=0)).reason == "max turns"


def test_requested_span_is_recorded():
    d = decide("<seg>5, 3</seg>", 0, CLIP, RelistenPolicy(reversed_span="swap"))
    assert d.text == "5, 3" and d.requested_s == (5.0, 3.0)


def test_splice_ids():
    assert splice_ids(3, 7, 8, 9) == [7, 8, 8, 8, 9]


@pytest.mark.parametrize("bad", [{"min_span_s": -1}, {"max_turns": -1}, {"out_of_range": "wrap"},
                                 {"reversed_span": "clamp"}, {"malformed": "guess"}, {"max_span_s": 0},
                                 {"after_max_turns": "explode"}])
def test_bad_policy(bad):
    with pytest.raises(ConfigError):
        RelistenPolicy(**bad)
