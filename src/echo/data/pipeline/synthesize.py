"""Stage 2, synthesis: from a clip's text views (duration, strong labels, the three captions) a reasoning LLM
writes multiple-choice questions with answers and chains of thought citing ``<seg>`` spans, as JSON following
``synthesize.schema.json``. Questions built from the strong labels (``rule_questions``) can join them or, with no
LLM, stand alone. Output rows: ``{"key": clip id, "clip", "captions", "items": [...]}`` (``"dropped"`` names why the
LLM gave nothing usable; rule-built items are kept even then)."""

from __future__ import annotations

from .clips import Clip, find_clips, my_clips
from .config import PipelineConfig
from .prompts import Prompt
from .rule_questions import rule_items
from .stage import StageContext, ask_or_drop, events_text, parse_json, print_dry_run, run_stage
from .store import ChunkStore


def text_views(clip: Clip, captions: dict) -> dict:
    """The placeholders the synthesis and judge prompts share."""
    return {"clip_id": clip.id, "duration": f"{clip.duration_s:.2f}", "events": events_text(clip.events),
            "description": captions.get("description") or "(none)", "speech": captions.get("speech") or "(none)",
            "music": captions.get("music") or "(none)"}


def run_synthesize(cfg: PipelineConfig, *, llm: bool = True) -> StageContext:
    """Questions for this shard's captioned clips that have none yet (``llm=False``: rule-built ones only, no
    captions needed: every clip found gets its row)."""
    if llm:
        cfg.require("llm")
    ctx = StageContext(cfg, "synthesize", cfg.llm if llm else None)
    done = ctx.store.done(redo_reason="synthesize:request_failed" if cfg.retry_failed else None)
    mine = my_clips(cfg.audio_dir, cfg.rank, cfg.world_size)
    if llm:
        sources = [r for r in ChunkStore(cfg.out_dir, "caption").read() if "captions" in r]
    else:  # no captions: the clips themselves, read here (unreadable ones are counted as dropped)
        found, bad = find_clips(cfg.audio_dir, cfg.meta, only=mine - done)
        sources = [{"key": c.id, "clip": c.to_json(), "captions": {}} for c in found]
        if not cfg.dry_run:
            ctx.store.write([{"key": cid, "items": [], "dropped": "synthesize:" + why.split(" ")[0]}
                             for cid, why in bad])
    todo = [r for r in sources if r["key"] in mine and r["key"] not in done]
    prompt = Prompt("synthesize", cfg.prompts_dir)

    async def handle(source: dict) -> list[dict]:
        clip = Clip.from_json(source["clip"])
        row = {"key": clip.id, "clip": source["clip"], "captions": source["captions"], "items": []}
        if cfg.rule_questions or not llm:
            row["items"] += rule_items(clip, seed=cfg.seed)
        if llm:
            text = prompt.render(n=cfg.questions_per_clip, **text_views(clip, source["captions"]))
            messages = [{"role": "user", "content": text}]
            reply, drop = await ask_or_drop(ctx, messages, clip.sha256, response_format=prompt.response_format())
            if reply is None and drop is None:
                return []  # dry run
            if drop is None:
                obj, drop = parse_json(ctx, reply, prompt.schema)
            if drop is not None:
                row["dropped"] = drop
            else:
                row["items"] += [{"id": f"{clip.id}#llm{i}", "source": "llm", **{k: it[k] for k in
                                  ("question", "choices", "answer", "cot")}} for i, it in enumerate(obj["items"])]
        return [row]

    run_stage(ctx, todo, handle, "synthesize")
    if cfg.dry_run and llm:
        print_dry_run(ctx, len(todo))
    return ctx
