"""Fixtures of the pipeline tests: the scripted OpenAI-compatible server (a real process on loopback) and a
folder of small clips with strong labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

HERE = Path(__file__).parent


class FakeServer:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fake_openai.py")], stdout=subprocess.PIPE,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def script(self, rules: list[dict], **options) -> None:
        """Replace the scripted answers (and zero the counts)."""
        self._call("/script", {"rules": rules, **options})

    def counts(self) -> dict:
        return self._call("/counts")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def server():
    s = FakeServer()
    yield s
    s.close()


def write_clips(root: Path, n: int, seconds: float = 3.0) -> tuple[Path, Path]:
    """``n`` distinct clips c0..c{n-1} under root/audio and their strong labels (JSONL): a bark then a horn."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rng = np.random.default_rng(i)
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(t.shape)
        sf.write(audio / f"c{i}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
        rows.append({"clip": f"c{i}", "events": [{"label": "dog bark", "onset": 0.2, "offset": 0.9},
                                                 {"label": "car horn", "onset": 1.5, "offset": 2.6}]})
    meta = root / "meta.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return audio, meta
