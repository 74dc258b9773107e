"""Request-level cache: one answer per (stage, model, prompt, parameters, input content hash).

Each process appends to its own ``cache/<stage>-rank<r>.jsonl`` and fsyncs every line before the answer is used,
so a kill -9 loses at most the requests still in flight; every cache file of the stage is read at start (a rerun
under another WORLD_SIZE still finds every answer). A torn last line (the kill hit mid-write) is ignored.
Only answers the endpoint actually gave are cached (refusals and truncations included: asking again at the same
parameters would not help); failures after every retry are not, so a rerun tries them again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ...durable import read_jsonl


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def keyed_messages(messages: list[dict]) -> list[dict]:
    """``messages`` with every ``input_audio`` payload replaced by the sha256 of its bytes (keys stay small)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for p in content:
                if p.get("type") == "input_audio":
                    data = p["input_audio"]["data"]
                    p = {"type": "input_audio", "input_audio": {
                        "format": p["input_audio"].get("format"), "sha256": sha256(base64.b64decode(data))}}
                parts.append(p)
            m = {**m, "content": parts}
        out.append(m)
    return out


def request_digest(model: str, messages: list[dict]) -> str:
    """What the endpoint was asked, as a digest an OpenAI-compatible server can compute from the request body."""
    return sha256(canonical({"model": model, "messages": keyed_messages(messages)}))


def cache_key(stage: str, model: str, messages: list[dict], params: dict, input_hash: str) -> str:
    return sha256(canonical({"stage": stage, "model": model, "prompt": keyed_messages(messages),
                             "params": params, "input": input_hash}))


class RequestCache:
    """Append-only answers of one stage. ``get`` / ``put`` by :func:`cache_key`."""

    def __init__(self, root: str | os.PathLike, stage: str, rank: int = 0):
        self.dir = Path(root)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        self.path = self.dir / f"{stage}-rank{rank:05d}.jsonl"
        self._answers: dict[str, dict] = {}
        for path in sorted(self.dir.glob(f"{stage}-rank*.jsonl")):
            self._read(path)
        self._file = None
        self._written = self._synced = 0  # lines appended / known durable by this process
        self._syncing = None

    def _read(self, path: Path) -> None:
        for row in read_jsonl(path):  # a line torn by a kill mid-write is skipped: that request is sent again
            self._answers.setdefault(row["key"], row["answer"])

    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, key: str) -> bool:
        return key in self._answers

    def get(self, key: str) -> dict | None:
        return self._answers.get(key)

    def _append(self, key: str, answer: dict, extra: dict) -> bool:
        if key in self._answers:
            return False
        if self._file is None:
            self._file = open(self.path, "ab")
            if self._file.tell() and not _ends_with_newline(self.path):
                self._file.write(b"\n")  # close a torn line left by a kill so the next one parses
        self._file.write((canonical({"key": key, "answer": answer, **extra}) + "\n").encode())
        self._file.flush()
        self._answers[key] = answer
        self._written += 1
        return True

    def put(self, key: str, answer: dict, **extra) -> None:
        """Record ``answer`` durably (written, flushed and fsynced before returning)."""
        if self._append(key, answer, extra):
            os.fsync(self._file.fileno())
            self._synced = self._written

    async def put_async(self, key: str, answer: dict, **extra) -> None:
        """``put`` for the event loop: group commit. One fsync, in a thread, covers every line written before it
        started, so concurrent answers share it and the loop never blocks on the disk; returns once durable."""
        if not self._append(key, answer, extra):
            return
        mine = self._written
        while self._synced < mine:
            if self._syncing is None or self._syncing.done():
                self._syncing = asyncio.ensure_future(asyncio.to_thread(os.fsync, self._file.fileno()))
                # registered before any awaiter: the count is updated before they resume
                self._syncing.add_done_callback(lambda f, upto=self._written: self._synced_to(f, upto))
            await asyncio.shield(self._syncing)

    def _synced_to(self, fut, upto: int) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._synced = max(self._synced, upto)

    def entries(self) -> list[dict]:
        """Every cached row of this stage (all ranks), for reports and tests."""
        rows = []
        for path in sorted(self.dir.glob(f"{self.stage}-rank*.jsonl")):
            rows += read_jsonl(path)
        return rows

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
