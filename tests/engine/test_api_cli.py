"""The public surface: model.generate / echo.generate, `echo generate` (streaming and JSONL batch),
`echo make-tiny`, in-place weight updates, and `echo eval --model` running through the engine."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

import echo
import tiny_checkpoints as tc
from echo.cli import main
from echo.api import engine_for

SR = 16_000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    assert main(["make-tiny", str(path)]) == 0
    clip = path / "clip.wav"
    sf.write(clip, tc.sine_clip(2.0, seed=4), SR, subtype="FLOAT")
    return path, clip


def test_model_and_module_generate(tiny):
    path, clip = tiny
    model = echo.load(path)
    one = model.generate(str(clip), "What is it?", temperature=0, max_new_tokens=5)
    assert len([m for m in one.samples[0].mask if m]) <= 5 and one.samples[0].finish_reason in ("stop", "length")
    again = echo.generate(str(clip), "What is it?", model=model, temperature=0, max_new_tokens=5)
    assert again.samples[0].token_ids == one.samples[0].token_ids  # greedy: same tokens
    by_path = echo.generate(str(clip), "What is it?", model=str(path), temperature=0, max_new_tokens=5)
    assert by_path.samples[0].token_ids == one.samples[0].token_ids
    batch = model.generate([{"audio": str(clip), "prompt": "What is it?"}, {"audio": str(clip), "prompt": "Why?"}],
                           echo.SamplingParams(temperature=0, max_new_tokens=5))
    assert batch[0].samples[0].token_ids == one.samples[0].token_ids and len(batch) == 2
    with pytest.raises(echo.EchoError, match="empty prompt"):
        model.generate(str(clip), "", max_new_tokens=3)


def test_load_returns_a_handle_on_the_module_and_its_engine(tiny):
    path, clip = tiny
    model = echo.load(path)
    module = model.module
    assert isinstance(model, echo.Model) and isinstance(module, torch.nn.Module) and not hasattr(module, "generate")
    assert model.config is module.config and model.processor is module.processor
    assert model.feature_config is module.feature_config
    assert model.to("cpu") is model and model.eval() is model and model.requires_grad_(False) is model
    assert model.state_dict().keys() == module.state_dict().keys()
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(model(ids), module(ids))  # calling the handle calls the module
    assert model.engine is echo.engine_for(module) is echo.engine_for(model)  # one engine per module
    assert model.engine.model is module
    model.processor = None  # attributes are set on the module
    assert module.processor is None


def test_update_weights_in_place_changes_outputs_and_drops_encoder_cache(tiny):
    path, clip = tiny
    model = echo.load(path)
    engine = engine_for(model)
    before = model.generate(str(clip), "Say.", temperature=0, max_new_tokens=6, ignore_eos=True)
    assert len(engine.encoder_cache) == 1
    head = model.lm_head.weight
    engine.update_weights({"lm_head.weight": torch.flip(head.detach().clone(), dims=[0])})
    assert len(engine.encoder_cache) == 0
    after = model.generate(str(clip), "Say.", temperature=0, max_new_tokens=6, ignore_eos=True)
    assert after.samples[0].token_ids != before.samples[0].token_ids
    with pytest.raises(echo.ConfigError, match="no parameter 'nope'"):
        engine.update_weights({"nope": head})


def test_cli_stream_and_batch(tiny, tmp_path, capsys):
    path, clip = tiny
    assert main(["generate", "--model", str(path), str(clip), "What is it?", "--max-new-tokens", "5"]) == 0
    streamed = capsys.readouterr().out.strip("\n")
    expected = echo.load(path).generate(str(clip), "What is it?", temperature=0, max_new_tokens=5).text
    assert streamed == expected
    requests = tmp_path / "req.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "audio": str(clip), "prompt": "What is it?", "max_new_tokens": 5},
        {"id": "b", "audio": str(tmp_path / "missing.wav"), "prompt": "What?"},
    ]) + "\n")
    out = tmp_path / "res.jsonl"
    assert main(["generate", "--model", str(path), "--input", str(requests), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["id"] == "a" and rows[0]["samples"][0]["text"] == expected and rows[0]["error"] is None
    assert rows[1]["id"] == "b" and "missing.wav: file not found" in rows[1]["error"]


def test_cli_choices_ask_with_echos_evaluation_prompt(tiny, capsys):
    from echo.protocol import build_prompt

    path, clip = tiny
    choices = ["a beep", "a dog barking"]
    assert main(["generate", "--model", str(path), str(clip), "What is it?", "--choices", *choices,
                 "--max-new-tokens", "6"]) == 0
    streamed = capsys.readouterr().out.strip("\n")
    model = echo.load(path)
    assert streamed == model.generate(str(clip), build_prompt("What is it?", choices), temperature=0,
                                      max_new_tokens=6).text
    assert streamed != model.generate(str(clip), "What is it?", temperature=0, max_new_tokens=6).text
    assert main(["generate", "--model", str(path), "--input", "x.jsonl", "--out", "y.jsonl",
                 "--choices", "a"]) == 2
    assert "--choices applies to one AUDIO PROMPT" in capsys.readouterr().err


def test_eval_runs_through_the_engine(tiny, tmp_path):
    path, _ = tiny
    data = tmp_path / "synth"
    assert main(["data", "synth", "--n", "2", "--seed", "1", "--out", str(data), "--families", "beep_count",
                 "--no-progress"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--benchmark", "synthetic", "--data", str(data), "--model", str(path), "--out", str(out),
                 "--max-new-tokens", "8", "--no-progress"]) == 0
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 2 and all("response" in p for p in preds)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["total"] == 2 and summary["not_predicted"] == 0
