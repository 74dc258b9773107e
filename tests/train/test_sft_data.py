"""SFT data: interleaved sequences are token for token what the engine produces when the model says the same
thing (same splices, same positions), labels cover exactly the sampled tokens, bad records are skipped by name."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

import echo
import tiny_checkpoints as tc
from echo.config import EngineConfig, SamplingParams
from echo.engine.llm import Engine, Request
from echo.errors import EchoError
from echo.train.data import IGNORE, SFTRecord, build_dataset, build_example, read_records
from helpers import ScriptedSeg

SR = 16_000
COT = ("<think>The beeps sit early, so I listen again <seg>0.5, 1.5</seg> and count. A short look "
       "<seg>2.0, 2.1</seg> adds nothing; the end <seg>2.4, 3.0</seg> is quiet.</think><answer>B</answer>")


@pytest.fixture(scope="module")
def setup(checkpoint, tmp_path_factory):
    path, _ = checkpoint("omni-tiny-gqa2")
    model = echo.load(path)
    d = tmp_path_factory.mktemp("sft")
    sf.write(d / "clip.wav", tc.sine_clip(3.0, seed=3), SR, subtype="FLOAT")
    return model, d


def test_interleaved_equals_what_the_engine_produces(setup):
    model, d = setup
    record = SFTRecord("r1", str(d / "clip.wav"), "How many beeps?", COT)
    ex = build_example(record, model.processor, "interleaved")
    assert ex.audio_spans == [(0, 48_000), (8_000, 24_000), (38_400, 48_000)]  # the 0.1 s tag is not re-listened
    n_prompt = ex.labels.index(next(t for t in ex.labels if t != IGNORE))
    sampled = [t for t, lab in zip(ex.input_ids[n_prompt:], ex.labels[n_prompt:]) if lab != IGNORE]
    cfg = model.config
    audio_ids = {cfg.audio_token_id, cfg.audio_bos_token_id, cfg.audio_eos_token_id}
    script = ScriptedSeg({tuple(ex.input_ids[:n_prompt]): {0: sampled}}, audio_ids, [])
    engine = Engine(model, EngineConfig(num_blocks=100, block_size=16), logits_processors=[script])
    [res] = engine.generate([Request(record.audio, record.user, SamplingParams(temperature=0,
                                                                                max_new_tokens=200))])
    sample = res.samples[0]
    assert res.prompt_token_ids + sample.token_ids == ex.input_ids  # same tokens, same positions
    assert [0] * len(res.prompt_token_ids) + sample.mask == [int(lab != IGNORE) for lab in ex.labels]
    grounded = build_example(record, model.processor, "grounded")
    assert [t for t in grounded.input_ids if t in audio_ids] == [t for t in ex.input_ids[:n_prompt] if t in audio_ids]
    assert grounded.labels[n_prompt:] == sampled


def test_labels_mask_every_inserted_audio_token(setup):
    model, d = setup
    ex = build_example(SFTRecord("r", str(d / "clip.wav"), "Q?", COT), model.processor, "interleaved")
    cfg = model.config
    for tok, lab in zip(ex.input_ids, ex.labels):
        if tok in (cfg.audio_token_id, cfg.audio_bos_token_id, cfg.audio_eos_token_id):
            assert lab == IGNORE
        elif lab != IGNORE:
            assert lab == tok


def test_both_layouts_and_bad_records(setup):
    model, d = setup
    rows = [
        {"id": "m1", "messages": [{"role": "user", "content": "<audio>How many?"},
                                  {"role": "assistant", "content": COT}], "audios": ["clip.wav"]},
        {"id": "s1", "audio": "clip.wav", "question": "How many?", "choices": ["one", "two"], "answer": "two",
         "cot": "<think><seg>0.0, 1.0</seg></think><answer>two</answer>"},
        {"id": "out", "audio": "clip.wav", "question": "Q", "choices": ["a", "b"],
         "cot": "<think><seg>2.0, 9.0</seg></think><answer>a</answer>"},
        {"id": "gone", "audio": "missing.wav", "question": "Q", "choices": ["a", "b"],
         "cot": "<think>x</think><answer>a</answer>"},
        {"id": "junk", "audio": "clip.wav", "question": "Q", "choices": ["a", "b"],
         "cot": "<think><seg>soon, later</seg></think><answer>a</answer>"},
    ]
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(EchoError, match=r"line 5 \(junk\): cot has a malformed span"):  # the checker's verdict
        read_records(d / "data.jsonl")
    malformed = []
    records = read_records(d / "data.jsonl", malformed)  # or skipped, with its line and reason
    assert [r.id for r in records] == ["m1", "s1", "out", "gone"]
    assert malformed == [("junk", "line 5: cot has a malformed span <seg>soon, later</seg> (not two numbers)")]
    examples, skipped = build_dataset(records, model.processor, "interleaved")
    assert [e.id for e in examples] == ["m1", "s1"]
    reasons = dict(skipped)
    assert "lies outside the 3.00 s clip" in reasons["out"]
    assert "missing.wav: file not found" in reasons["gone"]
    long = build_dataset(records[:1], model.processor, "interleaved", max_len=50)[1]
    assert "exceed max_len=50" in long[0][1]
