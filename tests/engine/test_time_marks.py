"""Time marks (``ModelConfig.time_marks_s``): the layout of an audio run with its absolute time written in, the
config round trip, the prompt processor, SFT's examples, and the engine against the transformers re-submission
loop on a checkpoint that carries them."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

import echo
import tiny_checkpoints as tc
from echo import protocol
from echo.errors import ConfigError, EchoError
from echo.models.config import TIME_MARKS_KEY, ModelConfig
from echo.models.presets import preset
from echo.protocol import TimeMarks, audio_pieces, time_mark_text, without_audio_runs
from test_engine_vs_reference import _conversation, scripted_run

CHAR_IDS = tuple((c, 100 + i) for i, c in enumerate(TimeMarks.CHARS))
AUDIO = 7


def _marks(every_s=1.0, tokens_per_s=25.0):
    return TimeMarks(every_s, tokens_per_s, CHAR_IDS)


def _text(ids):
    chars = {i: c for c, i in CHAR_IDS}
    return "".join("A" if t == AUDIO else chars[t] for t in ids)


@pytest.mark.parametrize("start_s, num_tokens, every_s, expected_marks", [
    (0.0, 60, 1.0, {0: "0.0s", 25: "1.0s", 50: "2.0s"}),
    (3.27, 60, 1.0, {0: "3.3s", 18: "4.0s", 43: "5.0s"}),
    (0.0, 25, 1.0, {0: "0.0s"}),             # the next mark would stand after the last row: none
    (1.0, 1, 1.0, {0: "1.0s"}),              # a run that starts on a mark has it once
    (0.5, 130, 2.0, {0: "0.5s", 38: "2.0s", 88: "4.0s"}),
    (10.04, 30, 0.5, {0: "10.0s", 12: "10.5s", 24: "11.0s"}),  # 10.04 + 12/25 = 10.52: the row nearest 10.5
])
def test_run_layout(start_s, num_tokens, every_s, expected_marks):
    ids = _marks(every_s).run(num_tokens, AUDIO, start_s)
    assert ids.count(AUDIO) == num_tokens
    # where each mark stands, by the number of audio rows before it
    found, rows, text = {}, 0, _text(ids)
    i = 0
    while i < len(text):
        if text[i] == "A":
            rows, i = rows + 1, i + 1
            continue
        j = text.index("s", i) + 1
        found[rows] = text[i:j]
        i = j
    assert found == expected_marks
    pieces = audio_pieces(ids, AUDIO, 0, num_tokens)
    assert [p[1] for p in pieces] == sorted(expected_marks) and pieces[-1][2] == num_tokens
    for offset, first, end in pieces:
        assert ids[offset: offset + end - first] == [AUDIO] * (end - first)


def test_mark_text_and_bad_marks():
    assert time_mark_text(12.04) == "12.0s" and time_mark_text(-0.01) == "0.0s"
    with pytest.raises(ValueError, match="every_s > 0"):
        TimeMarks(0.0, 25.0, CHAR_IDS)
    with pytest.raises(ValueError, match="token id"):
        TimeMarks(1.0, 25.0, CHAR_IDS[:-1])


def test_splice_and_text_without_runs():
    marks = _marks()
    ids = protocol.splice_ids(30, 1, AUDIO, 2, start_s=2.5, marks=marks)
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(AUDIO) == 30
    assert protocol.splice_ids(3, 1, AUDIO, 2) == [1, AUDIO, AUDIO, AUDIO, 2]  # no marks: as before
    assert without_audio_runs([5, 6] + ids + [8], 1, 2) == [5, 6, 8]
    with pytest.raises(ValueError, match="has 3 of its 4"):
        audio_pieces([AUDIO, 9, AUDIO, AUDIO], AUDIO, 0, 4)


def test_config_round_trip_and_refusals():
    plain = preset("qwen2audio-tiny-gqa2")
    cfg = dataclasses.replace(plain, time_marks_s=1.5)
    d = cfg.to_hf_dict()
    assert d[TIME_MARKS_KEY] == 1.5 and ModelConfig.from_hf(d).time_marks_s == 1.5
    assert TIME_MARKS_KEY not in plain.to_hf_dict() and ModelConfig.from_hf(plain.to_hf_dict()).time_marks_s == 0
    for name in ("omni-tiny-gqa2", "qwen3omni-tiny-gqa2", "af3-tiny-gqa2"):  # time in positions; undelimited runs
        with pytest.raises(ConfigError, match="cannot take time marks"):
            dataclasses.replace(preset(name), time_marks_s=1.0)
    for bad in (-1.0, float("nan"), True, "1"):
        with pytest.raises(ConfigError, match="time_marks_s"):
            dataclasses.replace(plain, time_marks_s=bad)


@pytest.fixture(scope="module")
def marked(checkpoint, tmp_path_factory):
    """The tiny Qwen2-Audio checkpoint with time marks every second (config.json's one extra key)."""
    src, hf = checkpoint("qwen2audio-tiny-gqa2")
    path = tmp_path_factory.mktemp("marked")
    shutil.copytree(src, path, dirs_exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, TIME_MARKS_KEY: 1.0}))
    return path, hf, echo.load(path)


def test_prompt_and_decode(marked):
    _, _, model = marked
    proc = model.processor
    assert proc.time_marks is not None and proc.time_marks.every_s == 1.0
    clip = tc.sine_clip(2.6, seed=3)
    _, frames = tc.features_for("qwen2_audio", [clip])
    ids = proc(_conversation("What?"), frames.tolist())
    n = echo.models.num_audio_tokens(int(frames[0]))
    assert ids.count(model.config.audio_token_id) == n
    text = proc.decode(ids)
    assert "<|audio_bos|>0.0s<|AUDIO|>" in text and "1.0s<|AUDIO|>" in text and "2.0s<|AUDIO|>" in text
    reply = proc.tokenizer.encode("it is <seg>1, 2</seg>", add_special_tokens=False).ids
    spliced = reply + proc.splice_ids(25, 1.0) + proc.tokenizer.encode(" done", add_special_tokens=False).ids
    assert proc.decode(spliced, skip_special_tokens=True) == "it is <seg>1, 2</seg> done"


def test_sft_example_carries_the_span_marks(marked, tmp_path):
    import soundfile as sf

    from echo.train.data import SFTRecord, build_example

    _, _, model = marked
    proc = model.processor
    clip = tc.sine_clip(4.0, seed=4)
    sf.write(tmp_path / "c.wav", clip, 16000)
    record = SFTRecord("r", str(tmp_path / "c.wav"), "Where?", "<think>here <seg>2.5, 3.5</seg></think>"
                                                                 "<answer>x</answer>")
    ex = build_example(record, proc, "interleaved")
    text = proc.decode(ex.input_ids)
    assert "</seg><|audio_bos|>2.5s<|AUDIO|>" in text and "3.0s<|AUDIO|>" in text
    bos = ex.input_ids.index(proc.audio_bos_token_id, ex.input_ids.index(proc.audio_eos_token_id) + 1)
    eos = ex.input_ids.index(proc.audio_eos_token_id, bos)
    assert all(label == -100 for label in ex.labels[bos: eos + 1])  # marks are never trained on


def test_engine_matches_reference_with_marks(marked):
    """Two re-listens on a marked checkpoint: the engine's tokens equal the transformers re-submission loop's,
    the prompt and each splice carry their marks, and the text has none of them."""
    _, hf, model = marked
    proc = model.processor
    prompt, expected, result = scripted_run(model, hf, "qwen2_audio", tc.sine_clip(3.5, seed=5), "When?",
                                            [(2, "<seg>0.5, 2.2</seg>"), (30, "<seg>1.0, 3.0</seg>")], 60,
                                            max_new=80, max_num_batched_tokens=40)
    sample = result.samples[0]
    assert result.prompt_token_ids == prompt
    assert [r.decision.applied_samples for r in sample.relistens] == [(8000, 35200), (16000, 48000)]
    assert sample.token_ids == expected
    spliced = proc.decode(sample.token_ids)
    assert "</seg><|audio_bos|>0.5s<|AUDIO|>" in spliced and "</seg><|audio_bos|>1.0s<|AUDIO|>" in spliced
    assert "0.5s" not in sample.text and "<seg>0.5, 2.2</seg>" in sample.text


def test_prompt_ids_with_a_broken_run_are_refused(marked):
    _, _, model = marked
    cfg = model.config
    ids = [5, cfg.audio_bos_token_id, cfg.audio_token_id, cfg.audio_eos_token_id, cfg.audio_bos_token_id,
           cfg.audio_token_id, cfg.audio_eos_token_id]
    from echo.engine.admission import prompt_audio
    from echo.engine.sequence import Clip

    with pytest.raises(EchoError, match="not one audio run"):
        prompt_audio(ids, cfg, Clip(np.zeros(16000, np.float32), "h"))
