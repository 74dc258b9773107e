"""One tiny model for all server tests (each test module skips itself without fastapi, uvicorn or openai)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # so the tests can `import live`

import echo  # noqa: E402


@pytest.fixture(scope="session")
def model(checkpoint):
    path, _ = checkpoint("omni-tiny-gqa2")
    return echo.load(path)
