"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fds 3 and 4, NUL-separated JSON),
so the page test can wait for the stream to finish before reading the DOM and taking the screenshot (a plain
``--dump-dom`` fires as soon as the page has loaded, long before the answer has streamed)."""

from __future__ import annotations

import json
import os
import subprocess
import time


class Browser:
    def __init__(self, chromium: str, profile_dir: str, window: str = "1100,1000"):
        self._to_chrome_r, self._to_chrome_w = os.pipe()
        self._from_chrome_r, self._from_chrome_w = os.pipe()
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                "--remote-debugging-pipe", f"--user-data-dir={profile_dir}", f"--window-size={window}"]
        # chromium reads commands on fd 3 and writes replies on fd 4
        script = f'exec "$0" "$@" 3<&{self._to_chrome_r} 4>&{self._from_chrome_w}'
        self.proc = subprocess.Popen(["bash", "-c", script, chromium, *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(self._to_chrome_r, self._from_chrome_w))
        os.close(self._to_chrome_r)
        os.close(self._from_chrome_w)
        self._next_id, self._buffer = 0, b""

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome_w, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                data = os.read(self._from_chrome_r, 1 << 16)
                if not data:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                self._buffer += data
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> str:
        target = self.call("Target.createTarget", url=url)["targetId"]
        return self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, session: str, expression: str):
        return self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout_s: float = 120.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(session, expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"the page never satisfied {expression}")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome_w)
        os.close(self._from_chrome_r)
