"""The page in a real headless browser (Debian's chromium): it loads a clip, streams an answer from the live
server, and lights up each re-listened span on the waveform; the screenshot is kept under tests/serve/artifacts/."""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
import soundfile as sf

for _name in ("fastapi", "uvicorn"):
    pytest.importorskip(_name, reason=f"the server tests need {_name} (pip install '.[test]')")

import live  # noqa: E402
from cdp import Browser  # noqa: E402
import tiny_checkpoints as tc  # noqa: E402
from echo.config import EngineConfig  # noqa: E402
from echo.engine.llm import Engine  # noqa: E402
from echo.serve import ServeConfig  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_page_streams_an_answer_and_lights_up_the_relistened_spans(model, tmp_path):
    segs = ((3, "<seg>0.5, 1.5</seg>"), (24, "<seg>2.0, 2.75</seg>"))
    engine = Engine(model, EngineConfig(num_blocks=200, block_size=16, max_model_len=1024),
                    logits_processors=[live.script(model.processor.tokenizer, segs, end=44)])
    buf = io.BytesIO()  # 8 kHz 16-bit keeps the data: URL under the 128 KiB a command-line argument may hold
    sf.write(buf, tc.sine_clip(3.0, seed=70)[::2], 8000, format="WAV", subtype="PCM_16")
    clip = buf.getvalue()
    audio = "data:audio/wav;base64," + base64.b64encode(clip).decode()
    with live.serve(engine, ServeConfig(model_name="tiny")) as (url, _):
        page = f"{url}/?run=1&q={quote('Where does the tone change?')}&audio={quote(audio, safe='')}"
        browser = Browser(CHROMIUM, str(tmp_path / "profile"))
        try:
            tab = browser.open(page)
            state = browser.wait_for(tab, "['done', 'error'].includes(document.body.dataset.state) && "
                                          "document.body.dataset.state")
            dom = browser.evaluate(tab, "document.body.innerHTML")
            tags = browser.evaluate(tab, "[...document.querySelectorAll('#answer .seg')].map(e => e.textContent)")
            png = base64.b64decode(browser.call("Page.captureScreenshot", tab, format="png")["data"])
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "page.png").write_bytes(png)
    assert state == "done", dom[-3000:]
    spans = re.findall(r'<li class="span" data-start="([\d.]+)" data-end="([\d.]+)"', dom)
    assert [(float(a), float(b)) for a, b in spans] == [(0.5, 1.5), (2.0, 2.75)]
    assert tags == ["<seg>0.5, 1.5</seg>", "<seg>2.0, 2.75</seg>"]  # the tags, highlighted in the reasoning
    assert "2 span(s) re-listened" in dom
    assert len(png) > 10_000
