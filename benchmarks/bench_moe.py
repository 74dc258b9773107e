"""Mixture-of-experts decode: echo vs transformers on the same random weights (``echo.from_transformers``).

Preset ``qwen3omni-moe-bench``: a Qwen3-Omni thinker decoder of hidden 1024, 6 layers, 16 heads / 4 KV heads,
64 experts of width 256 with 8 routed per token (about 300M parameters, 40M active per token). One decode step
of ``batch`` sequences after a 64-token context, last-token logits: transformers' text model with its KV cache
(cropped back after each step) and lm_head, against echo's flattened step (``forward_flat`` with a contiguous KV
cache, the grouped MoE op). The sparse block alone is timed too: transformers' block, echo's grouped op, and the
loop-over-experts reference. Ratios against transformers print at the end (benchmarks/conftest.py).
Run: python -m pytest benchmarks/bench_moe.py
"""

from __future__ import annotations

import pytest
import torch

import echo
from echo.models import ContiguousKVCache, FlatStep
from echo.models.presets import preset
from echo.ops.moe import moe_experts_ref, route

CONTEXT = 64
BATCHES = (1, 8)


class Setup:
    def __init__(self):
        import transformers

        torch.manual_seed(0)
        cfg = preset("qwen3omni-moe-bench")
        d = cfg.to_hf_dict()
        d.pop("architectures"), d.pop("model_type")
        d.update(cfg.spec.hf_config_extras({"<|IMAGE|>": 6, "<|VIDEO|>": 7, "<|vision_bos|>": 8}))
        self.hf = getattr(transformers, cfg.architecture)(getattr(transformers, cfg.spec.hf_config_class)(**d)).eval()
        self.model = echo.from_transformers(self.hf)
        self.cfg = cfg.decoder
        self.context = torch.randint(100, 30_000, (max(BATCHES), CONTEXT))
        self.next = torch.randint(100, 30_000, (max(BATCHES), 1))
        self.hf_caches, self.echo_caches = {}, {}

    # ---- transformers: text model with DynamicCache ----------------------------------------------------------
    def hf_cache(self, batch):
        if batch not in self.hf_caches:
            with torch.no_grad():
                out = self.hf.model.language_model(input_ids=self.context[:batch], use_cache=True)
            self.hf_caches[batch] = out.past_key_values
        return self.hf_caches[batch]

    def hf_step(self, batch):
        cache = self.hf_cache(batch)
        with torch.no_grad():
            h = self.hf.model.language_model(input_ids=self.next[:batch], cache=cache, use_cache=True,
                                             position_ids=torch.full((batch, 1), CONTEXT)).last_hidden_state
            logits = self.hf.lm_head(h[:, -1])
        cache.crop(-1)  # back to the context, so every step is the same step
        return logits

    # ---- echo: flattened step over a contiguous KV cache --------------------------------------------------------
    def echo_cache(self, batch):
        if batch not in self.echo_caches:
            d = self.cfg
            cache = ContiguousKVCache(d.num_layers, batch, CONTEXT + 1, d.num_kv_heads, d.head_dim)
            step = FlatStep(rows=list(range(batch)), query_lens=[CONTEXT] * batch, context_lens=[0] * batch)
            with torch.no_grad():
                self.model.forward_flat(self.model.decoder.embed_tokens(self.context[:batch].flatten()),
                                        step.positions(), cache.step(step))
            self.echo_caches[batch] = cache
        return self.echo_caches[batch]

    def echo_step(self, batch):
        cache = self.echo_cache(batch)
        step = FlatStep(rows=list(range(batch)), query_lens=[1] * batch, context_lens=[CONTEXT] * batch)
        with torch.no_grad():
            hidden = self.model.forward_flat(self.model.decoder.embed_tokens(self.next[:batch, 0]), step.positions(),
                                             cache.step(step))
            return self.model.compute_logits(hidden)


_SETUP: list[Setup] = []


@pytest.fixture(scope="module")
def setup():
    if not _SETUP:
        _SETUP.append(Setup())
    s = _SETUP[0]
    for batch in BATCHES:  # same numbers first
        torch.testing.assert_close(s.echo_step(batch), s.hf_step(batch), atol=1e-4, rtol=0)
    return s


def _bench(benchmark, group, fn):
    benchmark.group = group
    benchmark.pedantic(fn, rounds=7, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("batch", BATCHES)
def test_baseline_transformers_decode_step(benchmark, setup, batch):
    _bench(benchmark, f"MoE decode step, batch {batch}", lambda: setup.hf_step(batch))


@pytest.mark.parametrize("batch", BATCHES)
def test_echo_decode_step(benchmark, setup, batch):
    _bench(benchmark, f"MoE decode step, batch {batch}", lambda: setup.echo_step(batch))


def _block_inputs(setup, batch):
    hf_block = setup.hf.model.language_model.layers[0].mlp
    x = torch.randn(batch, setup.cfg.hidden_size)
    return hf_block, setup.model.decoder.layers[0].mlp, x


@pytest.mark.parametrize("batch", BATCHES)
def test_baseline_transformers_moe_block(benchmark, setup, batch):
    hf_block, _, x = _block_inputs(setup, batch)
    with torch.no_grad():
        _bench(benchmark, f"sparse MoE block, {batch} tokens", lambda: hf_block(x[None]))


@pytest.mark.parametrize("batch", BATCHES)
def test_echo_moe_block(benchmark, setup, batch):
    _, block, x = _block_inputs(setup, batch)
    with torch.no_grad():
        _bench(benchmark, f"sparse MoE block, {batch} tokens", lambda: block(x))


@pytest.mark.parametrize("batch", BATCHES)
def test_reference_loop_moe_block(benchmark, setup, batch):
    _, block, x = _block_inputs(setup, batch)
    with torch.no_grad():
        gate_up, down = block.stacked_weights()

        def run():
            weights, ids = route(block.gate(x), block.top_k, block.normalize)
            return moe_experts_ref(x, ids, weights, gate_up, down)

        _bench(benchmark, f"sparse MoE block, {batch} tokens", run)
