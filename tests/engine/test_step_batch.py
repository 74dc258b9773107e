"""StepBatch: the step's flattened batch built once (ids, positions, slots, block tables, rows to sample, where the
audio rows go) and the audio rows gathered from the encoder cache's entries; the prompts of every request a step
admits are encoded in one call."""

from __future__ import annotations

import pytest
import torch

import echo
from echo import SamplingParams
from echo.engine.block_manager import BlockManager
from echo.engine.scheduler import Chunk
from echo.engine.sequence import AudioRun, Clip, Sequence
from echo.engine.step_batch import StepBatch
from echo.models import Qwen2_5OmniThinker
from echo.models.presets import preset
from echo.ops.paged_attention import paged_attention, plan_paged_attention
import tiny_checkpoints as tc
from helpers import assert_close


def _seq(seq_id, ids, runs, bm, cached):
    clip = Clip(torch.zeros(16_000), "h")
    seq = Sequence(seq_id, seq_id, 0, list(ids), len(ids), SamplingParams(), clip, runs)
    bm.reserve(seq.block_table, 0, len(ids))
    seq.num_cached = cached
    return seq


@torch.no_grad()
def test_batch_fields_and_gathered_audio_rows():
    torch.manual_seed(0)
    model = Qwen2_5OmniThinker(preset("omni-tiny-gqa2")).eval()
    cfg, hidden = model.config, model.config.decoder.hidden_size
    a, bos, eos = cfg.audio_token_id, cfg.audio_bos_token_id, cfg.audio_eos_token_id
    bm = BlockManager(64, 4)
    # sequence 0: a prompt with 7 audio tokens, prefilled in two chunks (this step: tokens 6..15, audio 4..10)
    ids0 = [11, 12, 13, bos] + [a] * 7 + [eos] + [20, 21, 22, 23]
    rows0 = torch.randn(7, hidden)
    s0 = _seq(0, ids0, [AudioRun(4, 7, None, 0, 0, rows0)], bm, 6)
    # sequence 1: decoded text, then a spliced span of 5 audio tokens still to prefill
    ids1 = [30, bos, a, a, eos, 31, 32, 33, bos] + [a] * 5 + [eos]
    rows1a, rows1b = torch.randn(2, hidden), torch.randn(5, hidden)
    s1 = _seq(1, ids1, [AudioRun(2, 2, None, 0, 0, rows1a), AudioRun(9, 5, None, 0, 0, rows1b)], bm, 8)
    # sequence 2: one decode token
    s2 = _seq(2, [40, 41, 42, 43, 44], [], bm, 4)
    chunks = [Chunk(s0, 6, 15), Chunk(s1, 8, 15), Chunk(s2, 4, 5)]
    batch = StepBatch.build(chunks, bm, "cpu")
    assert batch.ids.tolist() == ids0[6:15] + ids1[8:15] + [44]
    assert batch.positions.tolist() == list(range(6, 15)) + list(range(8, 15)) + [4]
    assert batch.query_lens == [9, 7, 1] and batch.context_lens == [6, 8, 4]
    assert batch.sample_rows == [15, 16]  # chunk 0 stops short of its sequence's end: no row to sample
    assert batch.slot_mapping.tolist() == bm.slots(s0.block_table, 6, 15) + bm.slots(s1.block_table, 8, 15) + \
        bm.slots(s2.block_table, 4, 5)
    assert batch.audio_dst == [0, 10]  # s0's rows 2..6 at flattened row 0, s1's second run at row 9 + 1
    got = model.embed_gathered(batch.ids, batch.audio_sources, batch.audio_dst)
    want = torch.cat([model.embed(torch.tensor(ids0), rows0)[6:15],
                      model.embed(torch.tensor(ids1), torch.cat([rows1a, rows1b]))[8:15],
                      model.embed(torch.tensor([44]))])
    assert_close("gathered embeddings", want, got, atol=0)


def test_triton_plan_holds_the_decode_block_tables_once():
    """The Triton path's padded int32 block-table tensor is part of the step's plan (not rebuilt per layer) and
    the output with a reused plan equals the torch reference."""
    torch.manual_seed(2)
    kc, vc = torch.randn(24, 4, 2, 16), torch.randn(24, 4, 2, 16)
    tables, q_lens, ctx = [[5, 2, 9], [7], [1, 3, 4, 6, 8]], [1, 3, 1], [9, 0, 17]
    plan = plan_paged_attention(tables, q_lens, ctx, 4, "cpu", "triton")
    assert plan.backend == "triton" and plan.decode.rows.tolist() == [0, 4]
    assert plan.decode.tables.dtype == torch.int32
    assert plan.decode.tables.tolist() == [[5, 2, 9, 0, 0], [1, 3, 4, 6, 8]]
    assert plan.decode.n_keys.tolist() == [10, 18] and [s[:2] for s in plan.seqs] == [(1, 3)]
    q = torch.randn(5, 4, 16)
    ref = paged_attention(q, kc, vc, tables, q_lens, ctx, 0.25, backend="torch")
    for _ in range(2):  # two "layers" on one plan
        assert_close("triton with a step plan", ref, paged_attention(q, kc, vc, tables, q_lens, ctx, 0.25, plan=plan))


def test_prompts_admitted_together_are_encoded_in_one_call(checkpoint, monkeypatch):
    path, _ = checkpoint("omni-tiny-gqa2")
    model = echo.load(path)
    calls = []
    real = model.embed_spans

    def counted(features, waves, spans, grad=False):
        calls.append(len(spans))
        return real(features, waves, spans, grad)

    monkeypatch.setattr(model, "embed_spans", counted)
    engine = echo.Engine(model, echo.EngineConfig(kv_cache_bytes=1 << 24))
    params = SamplingParams(temperature=0, max_new_tokens=2)
    indices = [engine.add_request(tc.sine_clip(1.0 + i, seed=i), "What?", params) for i in range(3)]
    assert calls == []  # admission checks and tokenizes; the first step that prefills embeds
    engine.step()
    assert calls == [3]
    while not all(engine.is_done(i) for i in indices):
        engine.step()
    assert calls == [3] and all(engine.result(i).samples[0].finish_reason == "length" for i in indices)


def test_a_slot_past_the_cache_is_refused_once_per_step():
    """The layers' store_kv calls skip their per-call slot check (a host sync on a GPU): the batch checks its
    slots once, so a block table pointing past the cache still fails loudly, before any K/V is written."""
    bm = BlockManager(8, 4)
    seq = _seq(0, [1, 2, 3, 4, 5], [], bm, 4)
    seq.block_table[1] = 8  # past the 8 blocks
    with pytest.raises(RuntimeError, match="KV slot 32 is past the cache's 32 slots"):
        StepBatch.build([Chunk(seq, 4, 5)], bm, "cpu")
