"""Scripted answers for the fake server: captions, synthesis and judge replies keyed on the prompt text."""

from __future__ import annotations

import json

CAPTION = [
    {"name": "caption", "contains": ["Describe this audio clip comprehensively"],
     "reply": "A dog barks near the start, then a car horn sounds for about a second."},
    {"name": "caption", "contains": ["transcribe what is said"], "reply": "NONE"},
    {"name": "caption", "contains": ["describe its musical elements"], "reply": "NONE"},
]
SYNTH = ["You write multiple-choice questions"]
JUDGE = ["You check a multiple-choice question"]


def item(clip: str, k: int, *, answer: str = "a car horn", span: str = "1.50, 2.60", choices=None) -> dict:
    choices = choices or ["a dog bark", "a car horn", "a doorbell", "silence"]
    return {"question": f"[{clip}/{k}] What is heard right after the dog bark?", "choices": choices,
            "answer": answer, "cot": f"<think>After the bark, <seg>{span}</seg> holds a car horn.</think>"
                                     f"<answer>{answer}</answer>"}


def synth(clip: str, items: list[dict] | None = None, **rule) -> dict:
    reply = json.dumps({"items": items}) if items is not None else rule.pop("reply", None)
    return {"name": "synth", "contains": SYNTH + [f"Clip {clip},"], "reply": reply, **rule}


def judge(question_tag: str, qa: bool = True, cot: bool = True, **rule) -> dict:
    verdict = {"qa_valid": qa, "qa_reason": "fine" if qa else "answerable without audio", "cot_valid": cot,
               "cot_reason": "grounded" if cot else "invents a doorbell"}
    return {"name": f"judge {question_tag}", "contains": JUDGE + [f"Question: [{question_tag}]"],
            "reply": json.dumps(verdict), **rule}


def plain(n: int) -> list[dict]:
    """Every clip: two good items, both judged valid."""
    rules = list(CAPTION)
    rules += [synth(f"c{i}", [item(f"c{i}", 0), item(f"c{i}", 1)]) for i in range(n)]
    rules += [{**judge("c"), "name": "judge", "contains": JUDGE}]
    return rules
