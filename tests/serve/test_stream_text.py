"""Streamed text bookkeeping: the incremental decode equals a full decode at every step (multi-byte characters
split across tokens, specials skipped), and a possible stop string is held back until it is resolved."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server tests need fastapi (pip install '.[test]')")

from echo.engine.detokenizer import IncrementalDetokenizer  # noqa: E402
from echo.serve.loop import _held_back  # noqa: E402


def test_incremental_text_equals_a_full_decode_at_every_step(model):
    proc = model.processor
    words = proc.tokenizer.encode("héllo wörld — 音声 <seg>1.0, 2.0</seg> ok", add_special_tokens=False).ids
    rng = np.random.default_rng(0)
    ids = []
    for _ in range(12):  # real text, random byte tokens, and specials (skipped), in stretches
        ids += words if rng.random() < 0.5 else rng.integers(0, 350, size=int(rng.integers(1, 40))).tolist()
    detok = IncrementalDetokenizer(proc)
    commits, sent = 0, ""
    for n in range(1, len(ids) + 1):
        before = detok.done
        text = detok.text(ids[:n])
        assert text == proc.decode(ids[:n], skip_special_tokens=True), n
        commits += detok.done != before
        sent += detok.emit(text, final=n == len(ids))
        assert text.startswith(sent) and (not sent.endswith("\ufffd") or n == len(ids))  # no half character sent
    assert sent == proc.decode(ids, skip_special_tokens=True)  # the sent pieces add up to the whole text
    assert commits >= 2  # the cheap path was really taken


@pytest.mark.parametrize("text, stops, held", [
    ("abc", (), 0), ("the end</s", ("</seg>",), 3), ("the end</seg", ("</seg>",), 5), ("x<", ("<a", "</b"), 1),
    ("x</", ("<a", "</b"), 2), ("done", ("x", "ax"), 0), ("done", ("onex",), 3),
])
def test_held_back_covers_a_possible_stop_string_start(text, stops, held):
    assert _held_back(text, stops) == held
