"""Stage 4, export: the filtered items of every shard, merged in id order, as the files ``echo train sft`` and
``echo train grpo`` read. Refuses to export while some shard's work is missing (it names what is missing).

- ``eaqa_sft.jsonl``: EAQA JSONL (echo's synthetic layout, checked by ``formats.write_eaqa``) — SFT with CoT;
- ``sft_messages.jsonl``: the same items as messages-JSONL (user ``<audio>`` + Echo's prompt, assistant = CoT);
- ``eaqa_rl.jsonl``: RL items (question, choices, answer; no CoT) as EAQA-style JSONL;
- ``eaqa_rl.parquet``: the same RL items in verl's parquet layout.
Audio paths are relative to the export folder.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from ...errors import EchoError
from ..formats import parse_cot, write_eaqa
from ..item import QuestionItem
from .clips import Clip
from ...durable import write_atomic
from ...protocol import build_prompt
from .store import ChunkStore

FILES = ("eaqa_sft.jsonl", "sft_messages.jsonl", "eaqa_rl.jsonl", "eaqa_rl.parquet")


def pending_work(out_dir: Path, clip_ids: set[str] | None = None, *, llm: bool = True) -> list[str]:
    """What the earlier stages have not finished, across all shards (empty when export can run). ``clip_ids``:
    every clip the run covers (checked against the first stage's rows)."""
    caption = ChunkStore(out_dir, "caption").read()
    synth = {r["key"]: r for r in ChunkStore(out_dir, "synthesize").read()}
    filtered = {r["key"] for r in ChunkStore(out_dir, "filter").read()}
    first = {r["key"] for r in caption} if llm else set(synth)
    missing = [f"{'caption' if llm else 'synthesize'} {cid}" for cid in sorted((clip_ids or set()) - first)]
    missing += [f"synthesize {r['key']}" for r in caption if "captions" in r and r["key"] not in synth]
    missing += [f"filter {it['id']}" for r in synth.values() for it in r["items"] if it["id"] not in filtered]
    return missing


def run_export(out_dir: Path, *, export_dir: Path | None = None, clip_ids: set[str] | None = None,
               llm: bool = True) -> dict:
    """Write the four files; returns {file: record count}."""
    out_dir = Path(out_dir)
    export_dir = Path(export_dir or out_dir / "export")
    missing = pending_work(out_dir, clip_ids, llm=llm)
    if missing:
        raise EchoError(f"{out_dir}: {len(missing)} items are not finished yet (e.g. {', '.join(missing[:3])}); "
                        "run the remaining shards or stages first")
    if not (out_dir / "synthesize").is_dir():
        raise EchoError(f"{out_dir}: nothing to export (no caption or synthesize output)")
    export_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # shards finishing together export one after the other (same bytes)
        return _export(out_dir, export_dir)


def _export(out_dir: Path, export_dir: Path) -> dict:
    clips = {r["key"]: Clip.from_json(r["clip"]) for r in ChunkStore(out_dir, "synthesize").read() if "clip" in r}
    rows = ChunkStore(out_dir, "filter").read()
    sft, messages, rl = [], [], []
    for row in rows:
        item, clip = row["item"], clips[row["clip"]]
        audio = os.path.relpath(clip.audio, export_dir)
        meta = {"clip": clip.id, "source": item.get("source", "llm"), "filter": row["reason"]}
        if row["route"] == "sft":
            spans, _ = parse_cot(item["cot"])
            sft.append(QuestionItem(item["id"], audio, item["question"], list(item["choices"]), item["answer"],
                                    item["cot"], spans, item.get("family", "echo-pipeline"),
                                    duration_s=clip.duration_s, meta=meta))
            messages.append({"id": item["id"], "messages": [
                {"role": "user", "content": "<audio>" + build_prompt(item["question"], item["choices"])},
                {"role": "assistant", "content": item["cot"]}], "audios": [audio]})
        elif row["route"] == "rl":
            rl.append(QuestionItem(item["id"], audio, item["question"], item["choices"], item["answer"],
                                   task=item.get("family", "echo-pipeline"), duration_s=clip.duration_s,
                                   meta=meta).to_row())
    write_eaqa(export_dir / "eaqa_sft.jsonl", sft, check_audio=False)
    write_atomic(export_dir / "sft_messages.jsonl", "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in messages))
    write_atomic(export_dir / "eaqa_rl.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rl))
    _write_verl(export_dir / "eaqa_rl.parquet", rl)
    return {"eaqa_sft.jsonl": len(sft), "sft_messages.jsonl": len(messages), "eaqa_rl.jsonl": len(rl),
            "eaqa_rl.parquet": len(rl)}


def _write_verl(path: Path, rl: list[dict]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow ships with the pipeline extra
        raise EchoError("writing verl parquet needs pyarrow: pip install 'echo-lalm[pipeline]'") from exc
    rows = [{"data_source": "echo-pipeline",
             "prompt": [{"role": "user", "content": "<audio>" + build_prompt(r["question"], r["choices"])}],
             "audios": [r["audio"]], "ability": "audio-reasoning",
             "reward_model": {"style": "rule", "ground_truth": r["answer"]},
             "extra_info": {"id": r["id"], "choices": r["choices"], "clip": r["meta"]["clip"],
                            "duration_s": r["duration_s"]}} for r in rl]
    schema = pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("audios", pa.list_(pa.string())), ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("id", pa.string()), ("choices", pa.list_(pa.string())), ("clip", pa.string()),
                                  ("duration_s", pa.float64())]))])
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, path)
