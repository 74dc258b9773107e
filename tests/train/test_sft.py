"""SFT on echo's model code: a tiny model overfits 8 interleaved records (greedy decoding through the engine
then reproduces them, tags and re-listens included); checkpoints load in echo and in transformers; a killed run
resumes to the same weights as an uninterrupted one; gradient checkpointing changes no gradient; bf16 autocast
runs on CPU."""

from __future__ import annotations

import json
import math

import pytest
import tiny_checkpoints as tc
import torch
from helpers import assert_close

import echo
from echo.models import decoder as decoder_mod
from echo.models.tiny import make_checkpoint
from echo.train import sft as sft_mod
from echo.train.data import build_dataset, read_records
from echo.train.sft import SFTConfig, sequence_loss, train_sft

TARGETS = ["<think><seg>0.5, 1.5</seg>two</think><answer>B</answer>",
           "<think>none</think><answer>A</answer>",
           "<think><seg>1.0, 2.0</seg>high</think><answer>C</answer>",
           "<think><seg>0.2, 0.9</seg>dog</think><answer>D</answer>",
           "<think>quiet</think><answer>B</answer>",
           "<think><seg>1.2, 2.2</seg>three</think><answer>A</answer>",
           "<think>low</think><answer>D</answer>",
           "<think><seg>0.4, 1.4</seg>bird</think><answer>C</answer>"]
# distinct wording: with "Question {i}?" alone the 2-layer model took far longer to tell the 8 prompts apart
QUESTIONS = ["How many beeps?", "Is there speech?", "How high is the tone?", "Which animal?", "Is it quiet?",
             "How many tones?", "Low or high?", "Which bird sings?"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tc.train_workdir(tmp_path_factory, "sft")
    tc.write_sft_task(d, QUESTIONS, TARGETS, seed=30)
    return d


@pytest.mark.slow
def test_overfits_and_reproduces_targets_with_relistens(workdir):
    out = workdir / "run"
    result = train_sft(str(workdir / "base"), str(workdir / "data.jsonl"), str(out),
                       SFTConfig(lr=5e-3, epochs=80, grad_accum=2, warmup_steps=5, progress=False))
    assert result["examples"] == 8 and not result["skipped"]
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert max(losses[-4:]) < 0.02 < losses[0]
    model = echo.load(out / "final")
    for i, target in enumerate(TARGETS):
        res = model.generate(str(workdir / f"clip{i}.wav"), QUESTIONS[i], temperature=0, max_new_tokens=60)
        assert res.text == target
        expected_relistens = 1 if "<seg>" in target else 0
        assert sum(r.decision.action == "relisten" for r in res.samples[0].relistens) == expected_relistens


def test_checkpoint_reads_in_transformers_with_the_same_logits(workdir):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    final = workdir / "run" / "final"
    ours = echo.load(final)
    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(final).eval()
    wrapped = echo.from_transformers(hf)
    ids = torch.tensor([[10, 20, 30, 40, 50]])
    with torch.no_grad():
        assert_close("trained checkpoint: echo vs transformers weights", ours(ids), wrapped(ids), atol=1e-5)


def test_killed_run_resumes_to_the_same_weights(workdir, monkeypatch):
    cfg = SFTConfig(lr=1e-3, epochs=2, save_every=4, progress=False)
    train_sft(str(workdir / "base"), str(workdir / "data.jsonl"), str(workdir / "straight"), cfg)
    real = sft_mod.sequence_loss
    calls = {"n": 0}

    def dies_at_step_7(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(sft_mod, "sequence_loss", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train_sft(str(workdir / "base"), str(workdir / "data.jsonl"), str(workdir / "resumed"), cfg)
    monkeypatch.setattr(sft_mod, "sequence_loss", real)
    train_sft(str(workdir / "base"), str(workdir / "data.jsonl"), str(workdir / "resumed"), cfg)
    a = dict(echo.load(workdir / "straight" / "final").named_parameters())
    b = dict(echo.load(workdir / "resumed" / "final").named_parameters())
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_cli_train_sft(workdir, capsys):
    from echo.cli import main

    assert main(["train", "sft", "--model", str(workdir / "base"), "--data", str(workdir / "data.jsonl"),
                 "--out", str(workdir / "cli"), "--epochs", "1", "--format", "grounded", "--grad-accum", "2",
                 "--gradient-checkpointing", "--dtype", "fp32"]) == 0
    assert "trained 4 steps on 8 records (0 skipped); checkpoint in" in capsys.readouterr().out
    assert echo.load(workdir / "cli" / "final").processor is not None


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(workdir, monkeypatch):
    model = echo.load(workdir / "base").train()
    model.requires_grad_(True)
    features = model.resolve_feature_config(workdir / "base")
    examples, _ = build_dataset(read_records(str(workdir / "data.jsonl"))[:2], model.processor, "interleaved",
                                features=features)
    calls = {"n": 0}
    real = decoder_mod.checkpoint

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(decoder_mod, "checkpoint", counting)
    results = []
    for flag in (False, True):
        model.decoder.gradient_checkpointing = flag
        model.zero_grad(set_to_none=True)
        loss = sum(sequence_loss(model, ex, features)[0] for ex in examples)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert calls["n"] == len(examples) * model.config.decoder.num_layers
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert_close("loss with checkpointing", loss_b, loss_a, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert_close(f"grad {name}", grads_b[name], grads_a[name], atol=1e-6)


def test_bf16_autocast_runs_a_step_on_cpu(workdir, monkeypatch):
    real, seen = sft_mod.sequence_loss, []

    def recording(*args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(*args, **kwargs)

    monkeypatch.setattr(sft_mod, "sequence_loss", recording)
    out = workdir / "bf16"
    train_sft(str(workdir / "base"), str(workdir / "data.jsonl"), str(out),
              SFTConfig(epochs=1, grad_accum=8, dtype="bf16", progress=False))
    assert seen == [(True, torch.bfloat16)] * 8
    (line,) = (out / "log.jsonl").read_text().splitlines()
    assert math.isfinite(json.loads(line)["loss"])
    assert echo.load(out / "final").dtype == torch.float32  # master weights stay float32


def test_final_checkpoint_keeps_the_source_dtype_and_resumable_one_keeps_fp32(tmp_path):
    from safetensors.torch import load_file

    from echo.train.checkpoint import save_checkpoint

    make_checkpoint(tmp_path / "base", "omni-tiny-gqa2")
    cfg_path = tmp_path / "base" / "config.json"
    raw = json.loads(cfg_path.read_text())
    raw["torch_dtype"] = "bfloat16"  # a bf16 source (the tiny one was saved in fp32)
    raw.pop("dtype", None)
    cfg_path.write_text(json.dumps(raw))
    model = echo.load(tmp_path / "base", dtype=torch.float32).module
    save_checkpoint(model, tmp_path / "base", tmp_path / "final")
    save_checkpoint(model, tmp_path / "base", tmp_path / "resumable", {"step": 1})
    assert {t.dtype for t in load_file(tmp_path / "final" / "model.safetensors").values()} == {torch.bfloat16}
    assert {t.dtype for t in load_file(tmp_path / "resumable" / "model.safetensors").values()} == {torch.float32}
