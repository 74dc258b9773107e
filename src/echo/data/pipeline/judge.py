"""Stage 3, filtering: the rules, then the LLM judge, then the routing table.

=====================  ==============================  ==========================
rules / judge          chain of thought                route
=====================  ==============================  ==========================
question problem       (not judged: no tokens spent)   dropped ``rules:<reason>``
judge: QA invalid      any                             dropped ``judge:qa_invalid``
judge: QA valid        valid by rules and judge        EAQA-SFT (with the CoT)
judge: QA valid        invalid (rules or judge)        EAQA-RL (CoT dropped)
=====================  ==============================  ==========================

Rule-built items (exact answers from strong labels) skip the judge. The verdict is structured output: the
judge's JSON is parsed with ``json.loads`` and checked against ``judge.schema.json``; anything else drops the item
under a named reason. Output rows, one per item: ``{"key": item id, "clip": clip id, "item", "route", "reason"}``.
"""

from __future__ import annotations

import json

from . import rules
from .clips import Clip, my_clips
from .config import PipelineConfig
from .prompts import Prompt
from .stage import StageContext, ask_or_drop, parse_json, print_dry_run, run_stage
from .store import ChunkStore
from .synthesize import text_views


def route(qa_rule: list[str], cot_rule: list[str], verdict: dict | None) -> tuple[str, str]:
    """(route, reason) for one item from its rule problems and the judge's verdict (None: not judged)."""
    if qa_rule:
        return "drop", f"rules:{qa_rule[0]}"
    if verdict is not None and not verdict["qa_valid"]:
        return "drop", "judge:qa_invalid"
    if cot_rule:
        return "rl", f"rules:{cot_rule[0]}"
    if verdict is not None and not verdict["cot_valid"]:
        return "rl", "judge:cot_invalid"
    return "sft", "ok"


def run_filter(cfg: PipelineConfig, *, llm: bool = True) -> StageContext:
    """Filter this shard's synthesised items that have no row yet (``llm=False``: rules only, no judge)."""
    if llm:
        cfg.require("judge")
    ctx = StageContext(cfg, "filter", cfg.judge if llm else None)
    done = ctx.store.done(redo_reason="judge:request_failed" if cfg.retry_failed else None)
    sources = ChunkStore(cfg.out_dir, "synthesize").read()
    mine = my_clips(cfg.audio_dir, cfg.rank, cfg.world_size)
    todo = [(row, item) for row in sources if row["key"] in mine for item in row["items"] if item["id"] not in done]
    prompt = Prompt("judge", cfg.prompts_dir)

    async def handle(work) -> list[dict]:
        row, item = work
        clip = Clip.from_json(row["clip"])
        out = {"key": item["id"], "clip": clip.id, "item": item}
        qa_rule, cot_rule = rules.check(item, clip.duration_s)
        verdict = None
        if not qa_rule and item.get("source") != "rules" and llm:
            text = prompt.render(question=item["question"], choices=json.dumps(item["choices"], ensure_ascii=False),
                                 answer=item["answer"], cot=item["cot"], **text_views(clip, row["captions"]))
            messages = [{"role": "user", "content": text}]
            reply, drop = await ask_or_drop(ctx, messages, clip.sha256, response_format=prompt.response_format())
            if reply is None and drop is None:
                return []  # dry run
            if drop is None:
                verdict, drop = parse_json(ctx, reply, prompt.schema)
            if drop is not None:
                return [{**out, "route": "drop", "reason": drop.replace("filter:", "judge:")}]
            out["verdict"] = verdict
        out["route"], out["reason"] = route(qa_rule, cot_rule, verdict)
        if cot_rule:
            out["cot_problems"] = cot_rule
        return [out]

    run_stage(ctx, todo, handle, "filter")
    if cfg.dry_run and llm:
        print_dry_run(ctx, len(todo))
    return ctx
