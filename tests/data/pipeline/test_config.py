"""Configuration errors name the problem, before any request is sent."""

from __future__ import annotations

import pytest

from echo.cli import main
from echo.data.pipeline.config import EndpointConfig, PipelineConfig
from echo.errors import ConfigError


@pytest.mark.parametrize("kwargs, message", [
    ({"base_url": "localhost:8000"}, "must be an http(s) URL"),
    ({"model": ""}, "a model name is required"),
    ({"concurrency": 0}, "concurrency must be >= 1"),
    ({"rpm": 0}, "rpm must be > 0"),
    ({"backoff_s": 2.0, "backoff_max_s": 1.0}, "backoff_s <= backoff_max_s"),
])
def test_endpoint_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EndpointConfig(**{"base_url": "http://127.0.0.1:1/v1", "model": "m", **kwargs})


def test_pipeline_config_errors(tmp_path, monkeypatch):
    ep = EndpointConfig("http://127.0.0.1:1/v1", "m")
    with pytest.raises(ConfigError, match="either a caption endpoint or --caption-local"):
        PipelineConfig(tmp_path, tmp_path / "out", caption=ep, caption_local=tmp_path)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"RANK=2 must be in \[0, WORLD_SIZE=2\)"):
        PipelineConfig(tmp_path, tmp_path / "out")
    monkeypatch.delenv("RANK")
    with pytest.raises(ConfigError, match=r"rank 2 is outside \[0, world_size=2\)"):
        PipelineConfig(tmp_path, tmp_path / "out", rank=2)
    assert PipelineConfig(tmp_path, tmp_path / "out", llm=ep).judge is ep  # the judge defaults to the LLM


def test_missing_endpoint_is_named(tmp_path, capsys):
    (tmp_path / "audio").mkdir()
    assert main(["data", "synthesize", "--audio", str(tmp_path / "audio"), "--out", str(tmp_path / "out")]) == 2
    assert "needs an LLM (llm): --llm-endpoint and --llm-model" in capsys.readouterr().err
    assert main(["data", "caption", "--audio", str(tmp_path / "audio"), "--out", str(tmp_path / "out"),
                 "--caption-endpoint", "http://127.0.0.1:1/v1"]) == 2
    assert "--caption-endpoint and --caption-model go together" in capsys.readouterr().err
