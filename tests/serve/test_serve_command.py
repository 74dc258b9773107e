"""`python -m echo serve` as a user runs it: a subprocess on loopback that loads a checkpoint, answers, honours
its API key, and exits cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

for _name in ("fastapi", "uvicorn", "openai"):
    pytest.importorskip(_name, reason=f"the server tests need {_name} (pip install '.[test]')")

import httpx  # noqa: E402
import openai  # noqa: E402

import live  # noqa: E402
import tiny_checkpoints as tc  # noqa: E402


@pytest.mark.parametrize("name", ["omni-tiny-gqa2", "qwen3omni-tiny-gqa2", "af3-tiny-gqa2"])
def test_echo_serve_command_answers_and_shuts_down_cleanly(checkpoint, tmp_path, name):
    path, _ = checkpoint(name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = open(tmp_path / "serve.log", "w+")
    server = subprocess.Popen([sys.executable, "-m", "echo", "serve", "--model", str(path), "--port", str(port),
                               "--api-key", "k1", "--served-model-name", "tiny", "--kv-cache-gb", "0.05",
                               "--max-model-len", "2048", "--max-new-tokens", "6"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "echo serve did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        out = client.chat.completions.create(model="tiny", messages=live.audio_message(tc.sine_clip(1.0), "Hi?"),
                                             temperature=0)
        assert out.usage.completion_tokens <= 6 and out.choices[0].finish_reason in ("stop", "length")
        assert httpx.post(url + "/v1/chat/completions", json={}).status_code == 401
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise
        finally:
            log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()
