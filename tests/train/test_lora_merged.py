"""LoRA rollouts on merged weights (``lora.merged``): the engine decoding plain linears with the adapters folded in
gives the tokens of decoding through peft's adapter layers (greedy, float32, with re-listens), and afterwards every
base weight is back bit for bit and the adapter layers are in place; a restore that is not exact is refused."""

from __future__ import annotations

import pytest
import tiny_checkpoints as tc
import torch
from helpers import assert_close
from test_grpo import _script

import echo
from echo.config import EngineConfig, SamplingParams
from echo.engine.llm import Engine
from echo.train.lora import add_lora, lora_config, merged
from echo.train.rl_data import read_rl_records
from echo.train.rollout import rollout


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    d = tc.train_workdir(tmp_path_factory, "merged")
    tc.write_rl_task(d, [f"How many beeps, {i}?" for i in range(3)], seed=40)
    model = echo.load(d / "base").module
    torch.manual_seed(0)
    add_lora(model, lora_config(d / "base", 4, dropout=0.1))
    with torch.no_grad():  # B starts at 0: give the adapter something to change
        for name, p in model.named_parameters():
            if ".lora_B" in name:
                p.normal_(0.0, 0.3)
    return d, model.eval()


def _greedy(model, d):
    engine = Engine(model, EngineConfig(num_blocks=256, block_size=16),
                    logits_processors=[_script(model.processor.tokenizer, choose_letter=True)])
    records = read_rl_records(d / "rl.jsonl")[0]
    return rollout(engine, records, 1, SamplingParams(temperature=0.0, max_new_tokens=60, logprobs=True),
                   [0] * len(records))


def test_merged_rollouts_equal_adapter_rollouts_and_the_base_comes_back_exactly(adapted):
    d, model = adapted
    base = {n: p.clone() for n, p in model.named_parameters()}
    where = {n: p.data_ptr() for n, p in model.named_parameters()}
    through_peft = _greedy(model, d)
    with merged(model):
        assert not any(".lora_" in n for n, _ in model.named_parameters())  # plain linears while decoding
        by_tensor = {where[n]: t for n, t in base.items()}  # the names lose peft's base_layer while merged
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, by_tensor[p.data_ptr()])]
        assert len(changed) == 2 * 7  # every adapted projection of both layers holds W + scale * B @ A
        folded = _greedy(model, d)
    assert [r.token_ids for r in folded] == [r.token_ids for r in through_peft]
    assert any(x.inserted for r in folded for x in r.relistens)  # re-listens spliced on both paths
    for a, b in zip(through_peft, folded):
        assert_close("sampling log-probs", torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    after = dict(model.named_parameters())
    assert after.keys() == base.keys() and {n: p.data_ptr() for n, p in after.items()} == where
    assert all(torch.equal(after[n], t) for n, t in base.items())  # bit for bit


def test_a_restore_that_is_not_exact_is_refused(adapted, monkeypatch):
    _, model = adapted
    layer = model.decoder.layers[0].self_attn.q_proj
    real, calls = layer.get_delta_weight, []

    def drifting(adapter):  # the second computation (the restore's) differs in its last bits
        calls.append(adapter)
        out = real(adapter)
        return out * (1 + 1e-6) if len(calls) > 1 else out

    monkeypatch.setattr(layer, "get_delta_weight", drifting)
    with pytest.raises(RuntimeError, match="decoder.layers.0.self_attn.q_proj"):
        with merged(model):
            pass
    assert len(calls) == 2
