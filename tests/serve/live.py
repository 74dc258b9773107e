"""Helpers for the server tests: a live uvicorn server on a free loopback port, WAV payloads, scripted answers."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time

import soundfile as sf
import uvicorn
from helpers import ScriptedTurn

from echo.models.tiny import special_ids
from echo.serve import ServeConfig, build_app

SP = special_ids()
AUDIO_IDS = {SP["<|AUDIO|>"], SP["<|audio_bos|>"], SP["<|audio_eos|>"]}
BANNED = list(range(340, 350))  # chat-control and audio specials


@contextlib.contextmanager
def serve(engine, config: ServeConfig | None = None):
    """Run ``build_app(engine, config)`` under uvicorn in a thread; yields (base_url, app)."""
    app = build_app(engine, config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wav_bytes(clip, fmt: str = "WAV", subtype: str | None = "FLOAT") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, clip, 16000, format=fmt, subtype=subtype)
    return buf.getvalue()


def wav_b64(clip) -> str:
    """A lossless (float32) WAV of ``clip``, base64: the server decodes exactly the samples the test holds."""
    return base64.b64encode(wav_bytes(clip)).decode()


def audio_message(clip, question: str, as_url: bool = False) -> list[dict]:
    data = wav_b64(clip)
    part = ({"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{data}"}} if as_url else
            {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
    return [{"role": "user", "content": [part, {"type": "text", "text": question}]}]


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def script(tok, segs=((2, "<seg>0.5, 1.5</seg>"),), end: int | None = 30) -> ScriptedTurn:
    """Any prompt's answer: free tokens, each '<seg>a, b</seg>' forced from its answer step, <|im_end|> at
    ``end`` (None: never, the answer runs to max_tokens)."""
    plan = {step: enc(tok, text) for step, text in segs}
    if end is not None:
        plan[end] = [SP["<|im_end|>"]]
    return ScriptedTurn(plan, SP["<|im_start|>"], len(enc(tok, "assistant\n")), AUDIO_IDS, BANNED)
