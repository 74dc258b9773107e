"""engine/cuda_graphs.py on the CPU: the buckets, the switch, and a capture that fails (the engine decodes on
eagerly, saying why). The replay path itself: test_engine_vs_reference.py; on a GPU: benchmarks/gpu/run.sh."""

from __future__ import annotations

import pytest
import torch

import echo
import tiny_checkpoints as tc
from echo.config import EngineConfig, SamplingParams
from echo.engine.cuda_graphs import DecodeGraphs, buckets, decode_graphs_for
from echo.engine.llm import Engine, Request
from echo.errors import ConfigError


@pytest.mark.parametrize("max_num_seqs, expected", [
    (1, [1]), (3, [1, 2, 3]), (8, [1, 2, 4, 8]), (20, [1, 2, 4, 8, 16, 20]), (64, [1, 2, 4] + list(range(8, 65, 8))),
    (1000, [1, 2, 4] + list(range(8, 512, 8)) + [512]),
])
def test_buckets(max_num_seqs, expected):
    assert buckets(max_num_seqs) == expected


def test_off_on_the_cpu_and_with_enforce_eager(checkpoint):
    model = echo.load(checkpoint("omni-tiny-gqa2")[0])
    engine = Engine(model, EngineConfig(num_blocks=64))
    assert engine.runner.graphs is None
    assert decode_graphs_for(model, engine.kv, EngineConfig(num_blocks=64, enforce_eager=True)) is None
    with pytest.raises(ConfigError, match="enforce_eager"):
        EngineConfig(enforce_eager="no")


def test_a_failed_capture_warns_once_and_decoding_goes_on_eagerly(checkpoint):
    model = echo.load(checkpoint("omni-tiny-gqa2")[0])
    clip = tc.sine_clip(2.0, seed=5)
    params = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    [expected] = Engine(model, EngineConfig(num_blocks=64)).generate([Request(clip, "Hi?", params)])
    engine = Engine(model, EngineConfig(num_blocks=64))

    def broken(fn, pool):
        raise RuntimeError("operation not permitted when stream is capturing")

    engine.runner.graphs = DecodeGraphs(model, engine.kv, 4, 256, broken)
    with pytest.warns(RuntimeWarning, match="capture failed.*not permitted.*enforce_eager") as warned:
        [result] = engine.generate([Request(clip, "Hi?", params)])
    assert len(warned) == 1
    assert result.samples[0].token_ids == expected.samples[0].token_ids
    assert engine.runner.graphs.replays == 0 and "not permitted" in engine.runner.graphs.failed


@pytest.mark.gpu
def test_real_cuda_graphs_give_the_eager_tokens(checkpoint):
    """On a GPU: the engine's default (graphs captured per bucket) against enforce_eager, fp32, five requests of
    different lengths so that batches shrink through padded buckets; free greedy decoding, 40 tokens each."""
    model = echo.load(checkpoint("omni-tiny-gqa2")[0], device="cuda", dtype=torch.float32)
    clips = [tc.sine_clip(1.5 + 0.5 * i, seed=30 + i) for i in range(5)]
    requests = [Request(c, f"Question {i}?", SamplingParams(temperature=0, max_new_tokens=8 * (i + 1),
                                                            ignore_eos=True)) for i, c in enumerate(clips)]
    config = dict(num_blocks=256, max_num_seqs=8)
    eager = Engine(model, EngineConfig(enforce_eager=True, **config)).generate(requests)
    engine = Engine(model, EngineConfig(**config))
    assert engine.runner.graphs is not None
    replayed = engine.generate(requests)
    assert engine.runner.graphs.failed is None and engine.runner.graphs.replays > 0
    assert [r.samples[0].token_ids for r in replayed] == [r.samples[0].token_ids for r in eager]
