"""A stage's output: chunk files of JSON lines, each written atomically (temporary file, fsync, rename).

Every line has a ``key`` (the clip or item it is about); a key present in any chunk is done, whichever process or
run wrote it, so a rerun does only the rest and nothing written is ever lost or duplicated. Readers return lines
sorted by key: the merge is deterministic whatever the sharding or the order of completion.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...durable import read_object_lines, write_atomic


class ChunkStore:
    def __init__(self, root: str | os.PathLike, stage: str, rank: int = 0, world_size: int = 1):
        self.dir = Path(root) / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"r{rank:05d}-of-{world_size:05d}-"

    def chunks(self) -> list[Path]:
        """Every chunk of every shard, oldest first."""
        return sorted(self.dir.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime_ns, p.name))

    def read(self) -> list[dict]:
        """Every line of every chunk (all shards), sorted by key. A key written again (an item redone after
        ``request_failed``) takes its latest row."""
        seen: dict[str, dict] = {}
        for path in self.chunks():
            for _, row in read_object_lines(path):  # chunks are renamed in whole: any bad line is corruption
                seen[row["key"]] = row
        return [seen[k] for k in sorted(seen)]

    def done(self, *, redo_reason: str | None = None) -> set[str]:
        """Keys already written (those dropped for ``redo_reason`` excluded, so they are tried again)."""
        return {r["key"] for r in self.read()
                if redo_reason is None or redo_reason not in (r.get("dropped"), r.get("reason"))}

    def write(self, rows: list[dict]) -> Path | None:
        """One new chunk holding ``rows`` (atomically); returns its path."""
        if not rows:
            return None
        taken = {p.name for p in self.dir.glob(self.prefix + "*")}
        index = 0
        while f"{self.prefix}{index:06d}.jsonl" in taken:
            index += 1
        path = self.dir / f"{self.prefix}{index:06d}.jsonl"
        write_atomic(path, "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"
                                   for row in sorted(rows, key=lambda r: r["key"])))
        return path
