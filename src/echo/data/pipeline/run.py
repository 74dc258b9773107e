"""The whole pipeline in one call, stage after stage, each resuming where an earlier run stopped; export and the
report run in whichever process finds every shard's work done."""

from __future__ import annotations

from .caption import run_caption
from .clips import list_clip_ids
from .config import PipelineConfig
from .export import pending_work, run_export
from .judge import run_filter
from .report import build_report
from .synthesize import run_synthesize


def endpoints(cfg: PipelineConfig) -> dict:
    return {"caption": cfg.caption, "llm": cfg.llm, "judge": cfg.judge}


def run_pipeline(cfg: PipelineConfig, *, llm: bool = True) -> dict:
    """caption -> synthesize -> filter -> export. ``llm=False``: rule-built questions only (no endpoint at all).
    Returns the report (``report["export"]`` is absent while other shards are still working)."""
    usage = {}
    if llm:
        usage["caption"] = run_caption(cfg).usage
    usage["synthesize"] = run_synthesize(cfg, llm=llm).usage
    usage["filter"] = run_filter(cfg, llm=llm).usage
    if cfg.dry_run:
        return {"usage_this_run": {k: vars_of(u) for k, u in usage.items()}}
    clip_ids = set(list_clip_ids(cfg.audio_dir))
    exported = None if pending_work(cfg.out_dir, clip_ids, llm=llm) else run_export(cfg.out_dir, llm=llm)
    report = build_report(cfg.out_dir, endpoints(cfg), exported)
    report["usage_this_run"] = {k: vars_of(u) for k, u in usage.items()}
    return report


def vars_of(usage) -> dict:
    from dataclasses import asdict

    return asdict(usage)
