"""echo serve under load: in-engine re-listening against the reference's re-submission loop, on one server.

Both modes answer the same conversations with the same scripted trajectory (a tiny random model made to write
``<seg>a, b</seg>`` at fixed steps, then answer), through HTTP to one ``echo serve`` process:
- in-engine: one request per conversation; the engine splices each span's audio after ``</seg>`` and goes on.
- re-submission (the reference's client loop): re-listening off for the request, ``stop: ["</seg>"]``; after
  each turn the client re-sends the whole conversation (audio, question, the assistant's text so far) as a new
  request. It re-sends only the clip, not the span audio the reference appends, so it is the cheaper variant
  and the measured gain is a lower bound.
Each level runs ``max(2 C, 8)`` conversations from C concurrent clients, twice per mode in the order B A A B (the
faster of the two runs is kept: on a shared machine, interference only ever adds time); latency is per
conversation (all its turns), throughput counts sampled tokens over the run's wall time.
Run: python -m pytest benchmarks/bench_serve.py -s   (about 2-4 minutes on 2 cores)
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import describe  # noqa: E402

SR = 16_000
CLIP_S = 10.0
PERIOD = 30          # sampled tokens per turn: free text, then the turn's <seg>a, b</seg> ending the period
TURNS = 3            # re-listens per answer
FINAL = 20           # free tokens after the last re-listen, then <|im_end|>
LEVELS = (1, 8, 32)
SPANS = ("<seg>1.0, 3.0</seg>", "<seg>4.5, 6.0</seg>", "<seg>7.0, 9.5</seg>")


class Script:
    """The trajectory of a conversation at 'virtual step' g = PERIOD * (turns already closed in earlier assistant
    messages) + (tokens sampled in this answer): span k fills the last tokens of period k, <|im_end|> comes at
    TURNS * PERIOD + FINAL. Both modes therefore sample the same number of tokens per conversation."""

    def __init__(self, tok, specials: dict[str, int]):
        self.tok, self.im_start, self.im_end = tok, specials["<|im_start|>"], specials["<|im_end|>"]
        self.header = len(tok.encode("assistant\n", add_special_tokens=False).ids)
        self.skip = {specials["<|AUDIO|>"], specials["<|audio_bos|>"], specials["<|audio_eos|>"]}
        self.banned = sorted(specials.values())
        self.plan: dict[int, int] = {}
        for k, span in enumerate(SPANS[:TURNS]):
            ids = tok.encode(span, add_special_tokens=False).ids
            for j, t in enumerate(ids):
                self.plan[(k + 1) * PERIOD - len(ids) + j] = t
        self.plan[TURNS * PERIOD + FINAL] = self.im_end
        self._closed: dict[tuple[int, ...], int] = {}  # '</seg>' count before the answer, per distinct prompt

    def __call__(self, history: list[int], logits):
        import torch

        start = len(history) - history[::-1].index(self.im_start) + self.header
        prompt = tuple(history[:start])
        if prompt not in self._closed:
            if len(self._closed) > 4096:
                self._closed.clear()
            self._closed[prompt] = self.tok.decode(list(prompt), skip_special_tokens=False).count("</seg>")
        step = self._closed[prompt] * PERIOD + sum(1 for t in history[start:] if t not in self.skip)
        if step in self.plan:
            forced = torch.full_like(logits, float("-inf"))
            forced[self.plan[step]] = 0.0
            return forced
        out = logits.clone()
        out[self.banned] = float("-inf")
        return out


def serve_main(checkpoint: str, port: int) -> None:
    """The server process: the tiny checkpoint, one engine with the script, uvicorn on loopback."""
    import uvicorn

    import echo
    from echo.config import EngineConfig
    from echo.engine.llm import Engine
    from echo.models.tiny import special_ids
    from echo.serve import ServeConfig, build_app

    model = echo.load(checkpoint)
    engine = Engine(model, EngineConfig(num_blocks=4096, block_size=16, max_model_len=2048, max_num_seqs=64),
                    logits_processors=[Script(model.processor.tokenizer, special_ids())])
    uvicorn.run(build_app(engine, ServeConfig(model_name="tiny", max_pending=1024)), host="127.0.0.1", port=port,
                log_level="warning")


def _clip(seed: int) -> str:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(CLIP_S * SR)) / SR
    wave = (0.3 * np.sin(2 * np.pi * (200 + 25 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, SR, format="WAV", subtype="FLOAT")
    return base64.b64encode(buf.getvalue()).decode()


def _user(clip_b64: str, i: int) -> dict:
    return {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": clip_b64, "format": "wav"}},
                                        {"type": "text", "text": f"What happens in clip {i}? Give timestamps."}]}


async def _in_engine(http, clip_b64: str, i: int) -> tuple[int, int]:
    r = await http.post("/v1/chat/completions", json={"model": "tiny", "messages": [_user(clip_b64, i)],
                                                      "temperature": 0, "max_tokens": 400})
    r.raise_for_status()
    out = r.json()
    relistens = sum(e["inserted"] for e in out["choices"][0]["echo"]["relistens"])
    return out["usage"]["completion_tokens"], relistens


async def _resubmission(http, clip_b64: str, i: int) -> tuple[int, int]:
    text, tokens, turns = "", 0, 0
    while True:
        messages = [_user(clip_b64, i)] + ([{"role": "assistant", "content": text}] if text else [])
        r = await http.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, "temperature": 0,
                                                          "max_tokens": 400, "stop": ["</seg>"], "relisten": False})
        r.raise_for_status()
        out = r.json()
        tokens += out["usage"]["completion_tokens"]
        content = out["choices"][0]["message"]["content"]
        if turns == TURNS:  # the answer after the last re-listen
            return tokens, turns
        assert content.endswith(SPANS[turns][: -len("</seg>")]), content  # stopped right at the span's </seg>
        text += content + "</seg>"  # what the stop removed; the next turn re-sends the whole conversation
        turns += 1


async def _level(url: str, mode, clients: int, clips: list[str]) -> dict:
    import httpx

    n = max(2 * clients, 8)
    todo = list(range(n))
    latencies, tokens, relistens = [], 0, 0

    async def client(http):
        nonlocal tokens, relistens
        while todo:
            i = todo.pop(0)
            t0 = time.perf_counter()
            tok, rel = await mode(http, clips[i % len(clips)], i)
            latencies.append(time.perf_counter() - t0)
            tokens += tok
            relistens += rel

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=64)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {"conversations": n, "tokens": tokens, "relistens": relistens, "wall_s": wall,
            "tok_s": tokens / wall, "p50_s": statistics.median(latencies),
            "p99_s": latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]}


def test_in_engine_relistening_vs_resubmission_over_http(tmp_path):
    import httpx

    from echo.models.tiny import make_checkpoint

    make_checkpoint(tmp_path / "tiny", "omni-tiny-gqa2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(tmp_path / "tiny"), str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, "the server exited"
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        clips = [_clip(i) for i in range(8)]
        asyncio.run(_level(url, _in_engine, 2, clips[:2]))  # warm-up: first calls, encoder cache for 2 clips
        asyncio.run(_level(url, _resubmission, 2, clips[:2]))
        rows = []
        modes = (("re-submission loop", _resubmission), ("in-engine re-listening", _in_engine))
        for clients in LEVELS:
            runs: dict[str, list[dict]] = {name: [] for name, _ in modes}
            for name, mode in modes + modes[::-1]:
                runs[name].append(asyncio.run(_level(url, mode, clients, clips)))
            rows += [(clients, name, min(runs[name], key=lambda r: r["wall_s"])) for name, _ in modes]
        metrics = httpx.get(url + "/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"\nmachine: {describe()}")
    print(f"model omni-tiny-gqa2 (random), {CLIP_S:g} s clips, {TURNS} re-listens + "
          f"{TURNS * PERIOD + FINAL + 1} sampled tokens per conversation")
    print(f"{'clients':>7} {'mode':24} {'convs':>5} {'tokens':>6} {'relist':>6} {'wall s':>7} {'tok/s':>8} "
          f"{'p50 s':>7} {'p99 s':>7}")
    for clients, name, r in rows:
        print(f"{clients:>7} {name:24} {r['conversations']:>5} {r['tokens']:>6} {r['relistens']:>6} "
              f"{r['wall_s']:>7.2f} {r['tok_s']:>8.1f} {r['p50_s']:>7.2f} {r['p99_s']:>7.2f}")
    for clients in LEVELS:
        base, ours = (r for c, _, r in rows if c == clients)
        print(f"C={clients}: in-engine throughput {ours['tok_s'] / base['tok_s']:.2f}x, "
              f"p50 latency {base['p50_s'] / ours['p50_s']:.2f}x lower")
    peak = [line for line in metrics.splitlines() if line.startswith("echo_peak_running_sequences")]
    print(peak[0] if peak else "")
    for clients, name, r in rows:  # both modes did the same work
        assert r["tokens"] == r["conversations"] * (TURNS * PERIOD + FINAL + 1), (clients, name, r)
        assert r["relistens"] == r["conversations"] * TURNS, (clients, name, r)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--serve":
    serve_main(sys.argv[2], int(sys.argv[3]))
