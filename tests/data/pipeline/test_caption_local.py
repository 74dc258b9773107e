"""Captioning through a local echo model (a tiny random checkpoint: its words are noise, the plumbing is real):
every view of every clip in one batched engine call, cached so a rerun loads no model and generates nothing."""

from __future__ import annotations

import json

import pytest
from conftest import write_clips

from echo.data.pipeline.caption import run_caption
from echo.data.pipeline.config import PipelineConfig
from echo.data.pipeline.store import ChunkStore


@pytest.mark.slow
def test_local_captions_end_to_end(tmp_path, checkpoint):
    audio, meta = write_clips(tmp_path, 3, seconds=1.5)
    model, _ = checkpoint("omni-tiny-gqa2")
    cfg = PipelineConfig(audio, tmp_path / "out", meta=meta, caption_local=model, local_batch=8,
                         local_max_new_tokens=6, progress=False)
    ctx = run_caption(cfg)
    assert ctx.usage.requests == 9  # 3 clips x 3 views
    rows = ChunkStore(cfg.out_dir, "caption").read()
    assert [r["key"] for r in rows] == ["c0", "c1", "c2"]
    for row in rows:
        assert set(row["captions"]) == {"description", "speech", "music"}
        assert all(isinstance(t, str) for t in row["captions"].values())
        assert row["clip"]["events"][0]["label"] == "dog bark"
    cached = [json.loads(line) for line in (cfg.out_dir / "cache" / "caption-rank00000.jsonl").read_text().splitlines()]
    assert len(cached) == 9 and all(c["answer"]["completion_tokens"] >= 1 for c in cached)

    # rows lost (as after a kill before the chunk was written) come back from the cache without the model
    for path in ChunkStore(cfg.out_dir, "caption").chunks():
        path.unlink()
    again = run_caption(PipelineConfig(audio, tmp_path / "out", meta=meta, caption_local=model, local_batch=8,
                                       local_max_new_tokens=6, progress=False))
    assert again.usage.requests == 0
    assert ChunkStore(cfg.out_dir, "caption").read() == rows
