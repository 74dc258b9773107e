"""Questions built from strong labels, no LLM: when an event starts, how long a gap lasts, whether two events
overlap, how many of a kind come before a time, which comes first, which lasts longer. Answers are exact and every
chain of thought cites the labelled spans, so these items pass the rules by construction and skip the judge; they
serve alone or as distractor material. Deterministic by (seed, clip id)."""

from __future__ import annotations

import math
import random

from ...protocol import format_cot, format_span
from .clips import Clip

MIN_SPAN_S = 0.2   # the engine does not re-listen to shorter spans
MIN_MARGIN_S = 0.3  # differences smaller than this are not asked about


def _seg(clip: Clip, e: dict) -> str:
    start = math.floor(e["onset"] * 100) / 100
    end = min(math.floor(e["offset"] * 100) / 100, math.floor(clip.duration_s * 100) / 100)
    return format_span(start, end)


def _usable(clip: Clip) -> list[dict]:
    return [e for e in clip.events if min(e["offset"], clip.duration_s) - e["onset"] >= MIN_SPAN_S + 0.02]


def _seconds(x: float) -> str:
    return f"{x:.1f} s"


def _numeric_choices(answer: float, rng: random.Random, step: float) -> list[str]:
    values = {round(answer, 1)}
    for k in (1, -1, 2, -2, 3, 4):
        if len(values) == 4:
            break
        v = round(answer + k * step, 1)
        if v >= 0:
            values.add(v)
    choices = [_seconds(v) for v in sorted(values)]
    rng.shuffle(choices)
    return choices


def _item(clip: Clip, family: str, question: str, choices: list[str], answer: str, thoughts: str) -> dict:
    return {"id": f"{clip.id}#rule-{family}", "source": "rules", "family": family, "question": question,
            "choices": choices, "answer": answer, "cot": format_cot(thoughts, answer)}


def rule_items(clip: Clip, seed: int = 0) -> list[dict]:
    rng = random.Random(f"{seed}:{clip.id}")
    events = _usable(clip)
    items = []
    firsts: dict[str, dict] = {}
    for e in events:
        firsts.setdefault(e["label"], e)
    if events:
        e = events[0]
        items.append(_item(clip, "start", f"When does the {e['label']} first start?",
                           _numeric_choices(e["onset"], rng, 1.0), _seconds(e["onset"]),
                           f"I look for the {e['label']}. It is heard in {_seg(clip, e)}, so it first starts at "
                           f"about {_seconds(e['onset'])}."))
    for a, b in zip(events, events[1:]):
        gap = b["onset"] - a["offset"]
        if a["label"] != b["label"] and gap >= MIN_MARGIN_S:
            items.append(_item(clip, "gap", f"How long is the pause between the end of the {a['label']} and the "
                               f"start of the {b['label']} that follows it?", _numeric_choices(gap, rng, 0.5),
                               _seconds(gap), f"The {a['label']} is in {_seg(clip, a)} and ends at about "
                               f"{a['offset']:.1f} s; the {b['label']} is in {_seg(clip, b)} and starts at about "
                               f"{b['onset']:.1f} s, so the pause lasts about {_seconds(gap)}."))
            break
    labels = list(firsts)
    if len(labels) >= 2:
        a, b = firsts[labels[0]], firsts[labels[1]]
        overlap = min(a["offset"], b["offset"]) - max(a["onset"], b["onset"])
        if abs(overlap) >= MIN_MARGIN_S:
            answer = "Yes" if overlap > 0 else "No"
            items.append(_item(clip, "overlap", f"Does the first {a['label']} overlap in time with the first "
                               f"{b['label']}?", ["Yes", "No"], answer, f"The {a['label']} is in {_seg(clip, a)} and "
                               f"the {b['label']} is in {_seg(clip, b)}; they "
                               f"{'do' if overlap > 0 else 'do not'} overlap."))
        if abs(a["onset"] - b["onset"]) >= MIN_MARGIN_S:
            first, second = sorted((a, b), key=lambda e: e["onset"])
            choices = [a["label"], b["label"]]
            rng.shuffle(choices)
            items.append(_item(clip, "order", f"Which starts first, the {a['label']} or the {b['label']}?", choices,
                               first["label"], f"The {first['label']} starts in {_seg(clip, first)}, before the "
                               f"{second['label']} in {_seg(clip, second)}."))
        da, db = a["offset"] - a["onset"], b["offset"] - b["onset"]
        if abs(da - db) >= MIN_MARGIN_S:
            longer = a if da > db else b
            choices = [a["label"], b["label"]]
            rng.shuffle(choices)
            items.append(_item(clip, "longer", f"Which lasts longer, the first {a['label']} or the first "
                               f"{b['label']}?", choices, longer["label"], f"The {a['label']} in {_seg(clip, a)} lasts "
                               f"about {_seconds(da)}; the {b['label']} in {_seg(clip, b)} lasts about "
                               f"{_seconds(db)}."))
    for label in labels:
        same = [e for e in events if e["label"] == label]
        if len(same) >= 2:
            last = same[-1]
            t = round(last["onset"] - 0.05, 1) if last["onset"] - same[-2]["offset"] >= MIN_MARGIN_S else None
            if t is None:
                continue
            before = [e for e in same if e["offset"] <= t]
            count = len(before)
            choices = [str(n) for n in range(max(0, count - 1), max(0, count - 1) + 4)]
            cites = ", ".join(_seg(clip, e) for e in before)
            times = f"{count} time{'s' if count != 1 else ''}"
            items.append(_item(clip, "count", f"How many times is a {label} heard before {t:.1f} s?", choices,
                               str(count), f"Before {t:.1f} s the {label} is heard in {cites}: {times}."))
            break
    return items
