"""Counts per stage and per drop reason, and tokens / cost per stage, from the stage outputs and the request cache
(so an interrupted and resumed run reports exactly what an uninterrupted one does). ``report.json`` + ``report.md``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .cache import RequestCache
from .config import EndpointConfig
from ...durable import write_atomic
from .store import ChunkStore


def build_report(out_dir: Path, endpoints: dict[str, EndpointConfig | None] | None = None,
                 exported: dict | None = None) -> dict:
    out_dir = Path(out_dir)
    endpoints = endpoints or {}
    caption = ChunkStore(out_dir, "caption").read()
    synth = ChunkStore(out_dir, "synthesize").read()
    filtered = ChunkStore(out_dir, "filter").read()
    items = [it for r in synth for it in r["items"]]
    report = {
        "caption": {"clips": len(caption), "captioned": sum("captions" in r for r in caption),
                    "dropped": dict(sorted(Counter(r["dropped"] for r in caption if "dropped" in r).items()))},
        "synthesize": {"clips": len(synth), "items": len(items),
                       "items_by_source": dict(sorted(Counter(it.get("source", "llm") for it in items).items())),
                       "dropped": dict(sorted(Counter(r["dropped"] for r in synth if "dropped" in r).items()))},
        "filter": {"items": len(filtered), "sft": sum(r["route"] == "sft" for r in filtered),
                   "rl": sum(r["route"] == "rl" for r in filtered),
                   "rl_reasons": dict(sorted(Counter(r["reason"] for r in filtered if r["route"] == "rl").items())),
                   "dropped": dict(sorted(Counter(r["reason"] for r in filtered if r["route"] == "drop").items()))},
        "usage": {},
    }
    for stage, role in (("caption", "caption"), ("synthesize", "llm"), ("filter", "judge")):
        if not (out_dir / "cache").is_dir():
            break
        rows = RequestCache(out_dir / "cache", stage).entries()
        ep = endpoints.get(role)
        p = sum(r["answer"].get("prompt_tokens") or 0 for r in rows)
        c = sum(r["answer"].get("completion_tokens") or 0 for r in rows)
        report["usage"][stage] = {"answers": len(rows), "prompt_tokens": p, "completion_tokens": c,
                                  "cost": round((p * ep.price_in + c * ep.price_out) / 1e6, 6) if ep else 0.0}
    if exported is not None:
        report["export"] = exported
    write_atomic(out_dir / "report.json", json.dumps(report, indent=1) + "\n")
    write_atomic(out_dir / "report.md", markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = ["# Pipeline report", ""]
    c, s, f = report["caption"], report["synthesize"], report["filter"]
    lines += [f"- caption: {c['captioned']} of {c['clips']} clips captioned", *_reasons(c["dropped"]),
              f"- synthesize: {s['items']} items from {s['clips']} clips ({_pairs(s['items_by_source'])})",
              *_reasons(s["dropped"]),
              f"- filter: {f['items']} items -> {f['sft']} EAQA-SFT, {f['rl']} EAQA-RL ({_pairs(f['rl_reasons'])})",
              *_reasons(f["dropped"]), "", "| stage | answers | prompt tokens | completion tokens | cost |",
              "|---|---:|---:|---:|---:|"]
    for stage, u in report["usage"].items():
        lines.append(f"| {stage} | {u['answers']} | {u['prompt_tokens']} | {u['completion_tokens']} "
                     f"| {u['cost']:.4f} |")
    if "export" in report:
        lines += ["", "Exported: " + _pairs(report["export"])]
    return "\n".join(lines) + "\n"


def _reasons(counts: dict) -> list[str]:
    return [f"  - dropped {reason}: {n}" for reason, n in counts.items()]


def _pairs(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"
