"""Reward terms on hand-written cases, including the reference's edge cases."""

from __future__ import annotations

import math

import pytest

from echo.engine.relisten import RelistenDecision
from echo.engine.sequence import RelistenRecord
from echo.train.rewards import (RewardFn, Trajectory, accuracy_reward, confidence_accuracy_reward,
                                consistency_reward, format_reward, relisten_reward, span_iou_reward)

CHOICES = ["one", "two", "three"]
GOOD = "<think>I listen <seg>1.0, 2.0</seg> again. Two beeps.</think><answer>two</answer>"


def _t(text, answer="two", relistens=(), lp=None):
    return Trajectory(text, CHOICES, answer, relistens, lp)


def _rec(action):
    return RelistenRecord(0, RelistenDecision(action, "ok" if action == "relisten" else "too short"),
                          inserted=action == "relisten")


@pytest.mark.parametrize("text,expected", [
    (GOOD, 1.0),
    ("<think>a</think><answer>two</answer><answer>one</answer>", 0.0),   # two answers fail
    ("<think>a</think><think>b</think><answer>two</answer>", 0.0),
    ("<answer>two</answer><think>a</think>", 0.0),                         # answer before thinking
    ("<think>a</think> two", 0.0),
    ("<think>a</think>\n<answer>B</answer>", 1.0),
])
def test_format(text, expected):
    assert format_reward(_t(text)) == expected


@pytest.mark.parametrize("text,expected", [
    ("<seg>1, 2</seg> The beeps", 0.0),       # fine
    ("<seg>1, 2</seg>The beeps", -1.0),       # uppercase right after
    ("<seg>1, 2</seg><seg>3, 4</seg>", -1.0),  # a tag right after
    ("<seg>1, 2</seg>, then", 0.0),
    ("no tags at all", 0.0),
])
def test_consistency(text, expected):
    assert consistency_reward(_t(text)) == expected


def test_accuracy_uses_extraction_and_never_guesses():
    assert accuracy_reward(_t(GOOD)) == 1.0
    assert accuracy_reward(_t("<answer>B</answer>")) == 1.0          # option letter
    assert accuracy_reward(_t("<answer>three</answer>")) == 0.0
    assert accuracy_reward(_t("I am not sure.")) == 0.0               # no answer is not the first choice


def test_relisten_is_paid_only_for_real_relistens_with_right_answers():
    assert relisten_reward(_t(GOOD, relistens=[_rec("relisten")])) == 1.0
    assert relisten_reward(_t(GOOD, relistens=[_rec("skip")])) == 0.0     # tags written, nothing inserted
    no_room = RelistenRecord(0, RelistenDecision("relisten", "ok"), inserted=False)  # hit max_model_len
    assert relisten_reward(_t(GOOD, relistens=[no_room])) == 0.0
    assert relisten_reward(_t(GOOD.replace("<answer>two", "<answer>one"), relistens=[_rec("relisten")])) == 0.0
    assert relisten_reward(_t(GOOD)) == 0.0


@pytest.mark.parametrize("text,truth,expected", [
    (GOOD, [(1.0, 2.0)], 1.0),                                  # on the event
    (GOOD, [(1.5, 2.5)], 0.5 / 1.5),                            # half of it
    (GOOD, [(3.0, 4.0)], 0.0),                                  # elsewhere
    (GOOD, [(3.0, 4.0), (1.0, 3.0)], 0.5),                      # the best ground-truth span counts
    ("<seg>1, 2</seg> and <seg>7, 8</seg>", [(1.0, 2.0)], 0.5),  # a stray span halves it
    ("<seg>1, 2</seg> <seg>later</seg>", [(1.0, 2.0)], 1.0),     # an unparsable tag is not a span
    ("<think>no tags</think><answer>two</answer>", [(1.0, 2.0)], 0.0),
    (GOOD, [], 0.0),                                            # no ground truth: nothing to earn
])
def test_span_iou(text, truth, expected):
    assert span_iou_reward(Trajectory(text, CHOICES, "two", spans=truth)) == pytest.approx(expected)


def test_confidence_shaped_accuracy():
    assert confidence_accuracy_reward(_t(GOOD, lp=math.log(0.8))) == pytest.approx(0.8)
    assert confidence_accuracy_reward(_t("<answer>one</answer>", lp=math.log(0.25))) == pytest.approx(-0.25)
    assert confidence_accuracy_reward(_t(GOOD)) == 0.0


def test_combined_terms_and_custom_term():
    fn = RewardFn([("format", format_reward, 0.5), ("accuracy", accuracy_reward, 1.0),
                   ("length", lambda t: -len(t.text) / 1000, 1.0)])
    total, values = fn(_t(GOOD, relistens=[_rec("relisten")]))
    assert values["format"] == 1.0 and values["accuracy"] == 1.0
    assert total == pytest.approx(0.5 + 1.0 - len(GOOD) / 1000)
    with pytest.raises(ValueError, match="unique"):
        RewardFn([("a", format_reward, 1.0), ("a", accuracy_reward, 1.0)])


def test_open_questions_compare_the_normalised_answer_text():
    t = Trajectory("<think>x</think><answer>A Dog, barking.</answer>", [], "a dog barking")
    assert accuracy_reward(t) == 1.0
    assert accuracy_reward(Trajectory("<answer>a cat</answer>", [], "a dog barking")) == 0.0
    assert accuracy_reward(Trajectory("<answer>a dog barking</answer><answer>x</answer>", [], "a dog barking")) == 0.0


def test_terms_parse_from_names_and_module_functions():
    from echo.train.rewards import parse_terms

    terms = parse_terms(["accuracy=1", "format=0.25", "echo.train.rewards:consistency_reward=2"])
    assert [(n, w) for n, _, w in terms] == [("accuracy", 1.0), ("format", 0.25), ("consistency_reward", 2.0)]
    assert terms[2][1] is consistency_reward
    assert parse_terms(["span_iou=1"])[0][1] is span_iou_reward
    for bad, match in (("accuracy", "NAME=WEIGHT"), ("nope=1", "not a built-in"), ("accuracy=x", "NAME=WEIGHT")):
        with pytest.raises(ValueError, match=match):
            parse_terms([bad])


def test_a_rollout_gives_its_record_spans_to_the_reward():
    from echo.train.rl_data import RLRecord
    from echo.train.rollout import Rollout

    rec = RLRecord("r", "a.wav", "Q?", CHOICES, "two", spans=[(1.0, 2.0)])
    roll = Rollout(rec, 0, [1], [2], [1], [0.0], [], GOOD, "stop", 16_000)
    assert span_iou_reward(roll.trajectory()) == 1.0
