"""The training scaffold: a checkpoint written before it (one process's optimizer layout, no CUDA RNG entry) still
resumes bit for bit, and the trainable selections pick what they name."""

from __future__ import annotations

import pytest
import tiny_checkpoints as tc
import torch
from safetensors.torch import load_file

from echo.errors import ConfigError
from echo.train import sft as sft_mod
from echo.train.loop import Run, Trainables, load_model
from echo.train.lora import lora_config
from echo.train.sft import SFTConfig, train_sft

TARGETS = ["<think><seg>0.5, 1.5</seg>two</think><answer>B</answer>", "<think>none</think><answer>A</answer>",
           "<think><seg>1.0, 2.0</seg>high</think><answer>C</answer>"]
CFG = SFTConfig(lr=1e-2, epochs=2, grad_accum=1, save_every=2, lora_rank=4, lora_dropout=0.1, progress=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tc.train_workdir(tmp_path_factory, "loop")
    tc.write_sft_task(d, [f"Question {i}?" for i in range(len(TARGETS))], TARGETS, seed=70)
    return d


def test_a_checkpoint_in_the_older_layout_resumes_bit_for_bit(workdir, monkeypatch):
    train_sft(str(workdir / "base"), str(workdir / "data.jsonl"), str(workdir / "straight"), CFG)

    def older_state(self):  # what the one-process SFT trainer wrote before the scaffold
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "step": self.step,
                "torch_rng": torch.get_rng_state()}

    real, calls = sft_mod.sequence_loss, {"n": 0}

    def dies_in_step_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # one record a step: the step-2 checkpoint is the older layout
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(Run, "trainer_state", older_state)
    monkeypatch.setattr(sft_mod, "sequence_loss", dies_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_sft(str(workdir / "base"), str(workdir / "data.jsonl"), str(workdir / "older"), CFG)
    state = torch.load(workdir / "older" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert isinstance(state["optimizer"]["param_groups"][0]["params"][0], int) and "cuda_rng" not in state
    monkeypatch.undo()
    train_sft(str(workdir / "base"), str(workdir / "data.jsonl"), str(workdir / "older"), CFG)
    a = load_file(workdir / "straight" / "final" / "adapter_model.safetensors")
    b = load_file(workdir / "older" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # dropout masks too: RNG restored


@pytest.mark.parametrize("sel, trains", [
    (Trainables(), lambda n: not n.startswith("audio_tower")),
    (Trainables(audio_encoder=True), lambda n: True),
    (Trainables(train_only=("lm_head", "projector")), lambda n: n.startswith(("lm_head", "projector"))),
    ("lora", lambda n: ".lora_" in n),
])
def test_each_selection_trains_what_it_names(workdir, sel, trains):
    if sel == "lora":
        sel = Trainables(lora=lora_config(workdir / "base", 2))
    model, trainable = load_model(str(workdir / "base"), workdir / "none", False, sel)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and names == {n for n, _ in model.named_parameters() if trains(n)}
    assert len(trainable) == len(names) and all(p.dtype == torch.float32 for p in model.parameters())


def test_last_rows_zero_every_other_rows_gradient_and_empty_selections_are_refused(workdir):
    model, [head] = load_model(str(workdir / "base"), workdir / "none", False,
                               Trainables(train_only=("lm_head",), last_rows=3))
    head.sum().backward()
    assert torch.equal(head.grad[:-3], torch.zeros_like(head.grad[:-3])) and bool((head.grad[-3:] == 1).all())
    with pytest.raises(ConfigError, match="no parameter name starts"):
        load_model(str(workdir / "base"), workdir / "none", False, Trainables(train_only=("nothing",)))
