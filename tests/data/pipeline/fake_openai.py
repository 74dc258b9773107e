"""A scripted OpenAI-compatible server for the pipeline tests: a real HTTP server on 127.0.0.1 (run as its own
process: ``python fake_openai.py``; it prints its port), answering ``/v1/chat/completions`` from rules keyed on
the prompt text, counting requests per request digest and per rule, and injecting faults on demand.

Script (POST /script, which also zeroes the counts): ``{"rules": [{"name", "contains": [substrings], "reply": text,
"finish_reason", "refusal", "faults": [...], "audio_sha256"}], "delay": seconds, "retry_after": seconds,
"hang": seconds}``. The first rule whose substrings all occur in the request's text (and whose audio, when it names
one, is attached) answers. ``faults[n]`` is applied to the n-th request of a digest: ``429`` (with Retry-After),
``500``, ``401``, ``timeout`` (answers after ``hang`` seconds), ``drop`` (closes the connection without a
response). GET /counts: ``{"digests": {digest: n}, "rules": {name: n}, "times": {digest: [t...]},
"rule_times": {name: [t...]}}``.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from echo.data.pipeline.cache import request_digest

LOCK = threading.Lock()
STATE = {"script": {"rules": []}, "digests": {}, "rules": {}, "times": {}, "rule_times": {}}


def _audio_hashes(messages) -> list[str]:
    import base64
    import hashlib

    return [hashlib.sha256(base64.b64decode(p["input_audio"]["data"])).hexdigest()
            for m in messages if isinstance(m.get("content"), list)
            for p in m["content"] if p.get("type") == "input_audio"]


def _text(messages) -> str:
    out = []
    for m in messages:
        c = m.get("content")
        out += [c] if isinstance(c, str) else [p.get("text", "") for p in c or []]
    return "\n".join(out)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms to every answer
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with LOCK:
            body = {k: STATE[k] for k in ("digests", "rules", "times", "rule_times")}
            self._send(200, json.loads(json.dumps(body)))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/script":
            with LOCK:
                STATE.update(script=body, digests={}, rules={}, times={}, rule_times={})
            return self._send(200, {"ok": True})
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        script = STATE["script"]
        if "model" not in body or "messages" not in body:  # a client killed while sending
            return self._send(400, {"error": {"message": "incomplete request"}})
        digest = request_digest(body["model"], body["messages"])
        text = _text(body["messages"])
        audio = _audio_hashes(body["messages"])
        rule = next((r for r in script["rules"] if all(s in text for s in r["contains"])
                     and r.get("audio_sha256", audio[0] if audio else None) in (audio or [None])), None)
        with LOCK:
            n = STATE["digests"].get(digest, 0)
            STATE["digests"][digest] = n + 1
            STATE["times"].setdefault(digest, []).append(time.monotonic())
            name = rule["name"] if rule else "unmatched"
            STATE["rules"][name] = STATE["rules"].get(name, 0) + 1
            STATE["rule_times"].setdefault(name, []).append(time.monotonic())
        if script.get("delay"):
            time.sleep(script["delay"])
        faults = rule.get("faults", []) if rule else []
        fault = faults[n] if n < len(faults) else None
        if fault == "429":
            return self._send(429, {"error": {"message": "slow down"}},
                              {"Retry-After": str(script.get("retry_after", 0.1))})
        if fault in ("500", "401"):
            return self._send(int(fault), {"error": {"message": "boom" if fault == "500" else "bad key"}})
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "timeout":
            time.sleep(script.get("hang", 1.0))
        if rule is None:
            return self._send(400, {"error": {"message": "no scripted answer for this prompt"}})
        reply = rule.get("reply")
        message = {"role": "assistant", "content": None if rule.get("refusal") else reply,
                   "refusal": rule.get("refusal")}
        usage = {"prompt_tokens": len(text) // 4, "completion_tokens": len(reply or "") // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self._send(200, {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "message": message,
                                      "finish_reason": rule.get("finish_reason", "stop")}], "usage": usage})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 refuses connections at concurrency 64

    def handle_error(self, request, client_address):  # a client that timed out and left: expected here
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def main() -> None:
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
