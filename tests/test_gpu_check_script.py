"""benchmarks/gpu/run.sh, the one command for a lent GPU, in its CPU mode: it must run green on a machine without
one, skip (and say so) what needs a GPU, and still drive every benchmark section through its code paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["decode vs the HBM roofline", "store_kv vs copy bandwidth", "log-mel: CUDA vs the CPU kernel",
            "engine on each backend", "engine vs the transformers loop"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="run.sh needs bash")
def test_run_sh_dry_run_is_green_and_covers_every_section(tmp_path):
    results = tmp_path / "results.txt"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--dry-run", "--results", str(results)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    text = results.read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "results.txt.log").read_text()[-3000:]
    assert "build: skipped" in text and "tests: skipped, they need a CUDA device" in text
    for name in SECTIONS:
        assert f"## {name}" in text, name
    assert "sections failed: none" in text and "failed: none" in text
    assert "CUDA log-mel: skipped, no CUDA device" in text
    # the smoke run still computed real figures through the same code the GPU run uses
    assert "decode batch   8:" in text and "x the limit" in text
    assert "same tokens as the torch backend: True" in text
    assert "same tokens: True" in text


def test_run_sh_rejects_unknown_arguments():
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--bogus"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument --bogus" in proc.stderr
