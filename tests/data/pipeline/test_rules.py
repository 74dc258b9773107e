"""Rule filters on hand-made items, the judge's routing table, rule-built questions, prompt schemas, and the
request cache's durability rules."""

from __future__ import annotations

import json

import pytest

from echo.data.pipeline import rules
from echo.data.pipeline.cache import RequestCache, cache_key
from echo.data.pipeline.clips import Clip
from echo.data.pipeline.judge import route
from echo.data.pipeline.prompts import Prompt, validate
from echo.data.pipeline.rule_questions import rule_items

GOOD = {"question": "What is heard right after the bark?", "choices": ["a horn", "a bell", "rain", "silence"],
        "answer": "a horn", "cot": "<think>After the bark, <seg>1.50, 2.60</seg> holds a horn.</think>"
                                   "<answer>a horn</answer>"}


def cot(body: str, answer: str = "a horn") -> dict:
    return {**GOOD, "cot": f"<think>{body}</think><answer>{answer}</answer>"}


@pytest.mark.parametrize("item, qa, cot_problems", [
    (GOOD, [], []),
    ({**GOOD, "question": " "}, ["empty_question"], []),
    ({**GOOD, "choices": ["a horn"]}, ["too_few_choices"], []),
    ({**GOOD, "choices": ["a horn", "A horn!", "rain"]}, ["choices_not_distinct"], []),
    ({**GOOD, "answer": "a trumpet"}, ["answer_not_in_choices"], ["cot_answer_mismatch"]),
    ({**GOOD, "choices": ["a horn", "a horn and a bell", "rain"]}, ["answer_not_unique"], []),
    ({**GOOD, "choices": ["a horn", "rain", "all of the above"]}, ["answer_not_unique"], []),
    (cot("no tags at all"), [], ["no_span_cited"]),
    (cot("<seg>1.50, 3.20</seg> past the end"), [], ["span_outside_clip"]),
    (cot("<seg>2.60, 1.50</seg> reversed"), [], ["span_reversed"]),
    (cot("<seg>1.50, 1.55</seg> 50 ms"), [], ["span_too_short"]),
    (cot("<seg>around 2 s</seg>"), [], ["malformed_span"]),
    (cot("<seg>1.50, 2.60 and on"), [], ["malformed_span"]),
    (cot("<seg>1.505, 2.60</seg>"), [], ["span_precision"]),
    (cot("<seg>1.50, 2.60</seg>", answer="a bell"), [], ["cot_answer_mismatch"]),
    ({**GOOD, "cot": "a horn, since <seg>1.50, 2.60</seg>"}, [], ["cot_format"]),
], ids=["good", "empty-question", "one-choice", "choices-repeat", "answer-missing", "answer-inside-another",
        "catch-all",
        "no-span", "span-past-end", "span-reversed", "span-too-short", "span-words", "seg-unclosed",
        "three-decimals", "cot-other-answer", "no-think-answer"])
def test_rules_on_hand_made_items(item, qa, cot_problems):
    assert rules.check(item, duration_s=3.0) == (qa, cot_problems)


def test_span_grammar_is_the_engines():
    # the engine accepts "1.5s , 2.6 s" (a unit after each number) and rejects a trailing word: so do the rules
    assert rules.spans_of("<seg>1.5s , 2.6 s</seg>", 3.0) == ([(1.5, 2.6)], [])
    assert rules.spans_of("<seg>1.5, 2.6 sec</seg>", 3.0) == ([], ["malformed_span"])


@pytest.mark.parametrize("body", ["0, 3", "0, 3.0001", "-0.01, 1", "2.9, 3", "1.5, 1.69", "1.5, 1.7", "1.7, 1.5",
                                  "1e-3, 2e0", "1, 1", "nan, 1", "", "0.19999, 0.4"])
def test_a_tag_is_kept_exactly_when_the_engine_relistens_to_it(body):
    """The rules read spans without the engine; the engine's default policy, judging every tag on its own, agrees."""
    from echo.audio.io import SAMPLING_RATE
    from echo.config import RelistenPolicy
    from echo.engine.relisten import decide

    text, duration = f"<seg>{body}</seg>", 3.0
    policy = RelistenPolicy(out_of_range="skip", reversed_span="skip", malformed="skip")
    d = decide(text, 0, int(round(duration * SAMPLING_RATE)), policy, SAMPLING_RATE)
    spans, problems = rules.spans_of(text, duration)
    assert (spans == [d.requested_s]) if d.action == "relisten" else (spans == [] and len(problems) == 1)


@pytest.mark.parametrize("qa, cot_problems, verdict, expected", [
    ([], [], {"qa_valid": True, "cot_valid": True}, ("sft", "ok")),
    ([], [], {"qa_valid": True, "cot_valid": False}, ("rl", "judge:cot_invalid")),
    ([], [], {"qa_valid": False, "cot_valid": True}, ("drop", "judge:qa_invalid")),
    ([], [], {"qa_valid": False, "cot_valid": False}, ("drop", "judge:qa_invalid")),
    ([], ["no_span_cited"], {"qa_valid": True, "cot_valid": True}, ("rl", "rules:no_span_cited")),
    ([], ["no_span_cited"], {"qa_valid": False, "cot_valid": True}, ("drop", "judge:qa_invalid")),
    (["answer_not_in_choices"], [], None, ("drop", "rules:answer_not_in_choices")),
    ([], [], None, ("sft", "ok")),  # rule-built item: not judged
])
def test_routing_table(qa, cot_problems, verdict, expected):
    assert route(qa, cot_problems, verdict) == expected


def test_rule_questions_pass_the_rules_and_are_exact():
    events = [{"label": "dog bark", "onset": 0.5, "offset": 1.2}, {"label": "car horn", "onset": 2.0, "offset": 4.5},
              {"label": "dog bark", "onset": 5.0, "offset": 5.6}, {"label": "speech", "onset": 4.0, "offset": 7.999}]
    clip = Clip("street", "/x.wav", 8.0, "0" * 64, events)
    items = {it["family"]: it for it in rule_items(clip)}
    assert set(items) == {"start", "gap", "overlap", "order", "longer", "count"}
    for it in items.values():
        assert rules.check(it, clip.duration_s) == ([], []), it
    assert items["start"]["answer"] == "0.5 s" and items["gap"]["answer"] == "0.8 s"
    assert items["overlap"]["answer"] == "No" and items["order"]["answer"] == "dog bark"
    assert items["longer"]["answer"] == "car horn" and items["count"]["answer"] == "1"
    assert rule_items(clip) == rule_items(clip)  # deterministic
    assert rule_items(Clip("quiet", "/y.wav", 8.0, "0" * 64, [])) == []


def test_prompt_schemas_validate_structured_output():
    judge = Prompt("judge")
    assert judge.response_format()["json_schema"]["schema"]["required"] == ["qa_valid", "qa_reason", "cot_valid",
                                                                           "cot_reason"]
    ok = {"qa_valid": True, "qa_reason": "", "cot_valid": False, "cot_reason": "x"}
    assert validate(ok, judge.schema) == []
    assert validate({**ok, "qa_valid": "yes"}, judge.schema) == ["$.qa_valid should be boolean, got str"]
    assert validate({"qa_valid": True}, judge.schema)[0] == "$.qa_reason is missing"
    synth = Prompt("synthesize")
    assert validate({"items": [{"question": "q", "choices": ["a"], "answer": "a", "cot": "c"}]}, synth.schema) == [
        "$.items[0].choices needs at least 2 items"]
    assert "$events" not in synth.render(clip_id="c", duration="3.00", events="- a: 0.00 - 1.00", description="d",
                                         speech="(none)", music="(none)", n=2)


def test_prompt_override(tmp_path):
    (tmp_path / "judge.md").write_text("Judge $question only.")
    assert Prompt("judge", tmp_path).render(question="Q?") == "Judge Q? only."
    assert Prompt("judge", tmp_path).schema == Prompt("judge").schema  # the schema still comes from the package


def test_cache_survives_a_torn_line(tmp_path):
    msgs = [{"role": "user", "content": "hi"}]
    key = cache_key("synthesize", "m", msgs, {"temperature": 0}, "h")
    cache = RequestCache(tmp_path, "synthesize")
    cache.put(key, {"text": "one"})
    cache.close()
    with open(cache.path, "ab") as f:
        f.write(b'{"key": "torn", "answ')  # a kill mid-write
    cache = RequestCache(tmp_path, "synthesize")
    assert cache.get(key) == {"text": "one"} and "torn" not in cache
    other = cache_key("synthesize", "m", msgs, {"temperature": 1}, "h")
    assert other != key  # parameters are part of the key
    cache.put(other, {"text": "two"})
    cache.close()
    reread = RequestCache(tmp_path, "synthesize", rank=1)  # another rank reads every rank's answers
    assert reread.get(other) == {"text": "two"} and len(reread) == 2
    assert [json.loads(line)["key"] for line in cache.path.read_text().splitlines() if line.startswith('{"answer')] \
        == [key, other]


def test_concurrent_answers_share_fsyncs(tmp_path, monkeypatch):
    import asyncio
    import os

    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    cache = RequestCache(tmp_path, "filter")

    async def many():
        await asyncio.gather(*(cache.put_async(f"k{i}", {"text": str(i)}) for i in range(50)))

    asyncio.run(many())
    cache.close()
    assert 1 <= len(calls) < 50  # group commit: one fsync covers every line written before it started
    assert len(RequestCache(tmp_path, "filter")) == 50
