"""moe: routing and the experts against transformers' Qwen3-Omni sparse MoE block, every backend against the
reference, over awkward shapes (one token, empty experts, every token on one expert, odd sizes)."""

from __future__ import annotations

import pytest
import torch

from echo.ops.moe import BACKENDS, moe_experts, moe_experts_ref, route  # BACKENDS: read by ops/conftest.py
from helpers import assert_close

# (tokens, hidden, inter, experts, top_k): one token, odd hidden/inter, more experts than routed pairs (most
# experts empty), top_k = experts, many tokens
SHAPES = [(1, 16, 8, 4, 2), (7, 33, 13, 8, 2), (5, 24, 40, 64, 4), (19, 17, 9, 3, 3), (130, 64, 48, 16, 8)]


def _ids(shape):
    return "t{}-h{}-i{}-e{}-k{}".format(*shape)


def _weights(shape, dtype, device, seed=0):
    tokens, hidden, inter, experts, _ = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    gate_up = torch.randn(experts, 2 * inter, hidden, generator=g) / hidden ** 0.5
    down = torch.randn(experts, hidden, inter, generator=g) / inter ** 0.5
    router = torch.randn(experts, hidden, generator=g)
    return [t.to(device, dtype) for t in (x, gate_up, down, router)]


def _hf_block(shape, norm_topk_prob, gate_up, down, router):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextSparseMoeBlock
    from transformers import Qwen3OmniMoeTextConfig

    _, hidden, inter, experts, top_k = shape
    cfg = Qwen3OmniMoeTextConfig(hidden_size=hidden, moe_intermediate_size=inter, num_experts=experts,
                                 num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob, hidden_act="silu")
    block = Qwen3OmniMoeThinkerTextSparseMoeBlock(cfg).to(gate_up.dtype)
    with torch.no_grad():
        block.experts.gate_up_proj.copy_(gate_up)
        block.experts.down_proj.copy_(down)
        block.gate.weight.copy_(router)
    return block


@pytest.mark.parametrize("norm", [True, False], ids=["norm_topk", "raw_topk"])
@pytest.mark.parametrize("shape", SHAPES, ids=[_ids(s) for s in SHAPES])
def test_reference_matches_transformers_block(shape, norm):
    x, gate_up, down, router = _weights(shape, torch.float32, "cpu")
    block = _hf_block(shape, norm, gate_up, down, router)
    with torch.no_grad():
        expected = block(x[None])[0]
        weights, ids = route(x @ router.T, shape[4], norm)
        _, hf_weights, hf_ids = block.gate(x)
    assert torch.equal(ids, hf_ids) and torch.equal(weights, hf_weights)
    assert_close(f"{_ids(shape)} reference vs transformers", expected, moe_experts_ref(x, ids, weights, gate_up, down))
    assert_close(f"{_ids(shape)} dispatcher vs transformers", expected, moe_experts(x, ids, weights, gate_up, down))


def _forced(shape, pattern, device):
    """Routing chosen by hand: 'one-expert' puts every token's slots on experts 0..k-1 (the rest empty);
    'last-only' uses the highest ids only; 'skewed' sends 3/4 of the tokens to one expert."""
    tokens, _, _, experts, top_k = shape
    g = torch.Generator().manual_seed(1)
    if pattern == "one-expert":
        ids = torch.arange(top_k).repeat(tokens, 1)
    elif pattern == "last-only":
        ids = torch.arange(experts - top_k, experts).repeat(tokens, 1)
    else:
        rows = []
        for _ in range(tokens):
            if float(torch.rand(1, generator=g)) < 0.75:  # expert 0 first, then distinct others
                rows.append(torch.cat([torch.zeros(1, dtype=torch.int64),
                                       1 + torch.randperm(experts - 1, generator=g)[: top_k - 1]]))
            else:
                rows.append(torch.randperm(experts, generator=g)[:top_k])
        ids = torch.stack(rows)
    weights = torch.rand(tokens, top_k, generator=g)
    return ids.to(device), weights.to(device)


@pytest.mark.parametrize("pattern", ["one-expert", "last-only", "skewed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[_ids(s) for s in SHAPES])
def test_backends_match_reference(backend, shape, dtype, pattern):
    name, device = backend
    if name == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bf16 (fp16 covers the half-precision path on the CPU)")
    x, gate_up, down, _ = _weights(shape, dtype, device)
    ids, weights = _forced(shape, pattern, device)
    weights = weights.to(dtype)
    ref = moe_experts_ref(x.float(), ids, weights.float(), gate_up.float(), down.float())
    out = moe_experts(x, ids, weights, gate_up, down, backend=name)
    assert out.dtype == dtype and out.shape == x.shape
    if dtype == torch.float32:
        assert_close(f"{name} {_ids(shape)} {pattern}", ref, out)
    else:  # the error budget: at most 2x (plus one ulp) that of the reference itself run in this dtype
        ref16 = moe_experts_ref(x, ids, weights, gate_up, down).float()
        ulp = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -10
        budget = 2 * float((ref16 - ref).abs().max()) + ulp * float(ref.abs().max())
        assert_close(f"{name} {_ids(shape)} {pattern} {dtype}", ref, out.float(), atol=budget)


def test_no_tokens(backend):
    name, device = backend
    x, gate_up, down, _ = _weights((1, 16, 8, 4, 2), torch.float32, device)
    empty = x[:0]
    out = moe_experts(empty, torch.zeros(0, 2, dtype=torch.int64, device=device), empty.new_zeros(0, 2), gate_up,
                      down, backend=name)
    assert out.shape == (0, 16)


def test_grads_flow_through_the_torch_path():
    x, gate_up, down, router = _weights((9, 16, 8, 4, 2), torch.float32, "cpu")
    gate_up.requires_grad_(True)
    weights, ids = route(x @ router.T, 2, True)
    moe_experts(x, ids, weights, gate_up, down).sum().backward()
    used = torch.unique(ids)
    assert gate_up.grad is not None and bool((gate_up.grad[used].abs().sum((1, 2)) > 0).all())


@pytest.mark.parametrize("bad, match", [
    (lambda a: dict(a, ids=a["ids"] + 10), "expert ids must lie"),
    (lambda a: dict(a, ids=a["ids"].int()), "must be int64"),
    (lambda a: dict(a, down=a["down"][:, :, :-1]), "gate_up"),
    (lambda a: dict(a, weights=a["weights"][:, :1]), "ids and weights"),
    (lambda a: dict(a, x=a["x"].double()), "share a dtype"),
])
def test_bad_input_is_named(bad, match):
    x, gate_up, down, router = _weights((5, 16, 8, 4, 2), torch.float32, "cpu")
    weights, ids = route(x @ router.T, 2, True)
    args = bad(dict(x=x, ids=ids, weights=weights, gate_up=gate_up, down=down))
    with pytest.raises(ValueError, match=match):
        moe_experts(**args)
