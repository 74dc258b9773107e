"""Model forward: echo's modules vs transformers on the same random weights (``echo.from_transformers``, no copy).

Mid-size presets (decoder hidden 1024, 12 layers, 16 heads, 4 KV heads; audio tower d_model 512, 6 layers). Per
architecture: the audio encoder on a 10 s clip, a prefill of that clip + 100 text tokens (transformers: a
use_cache forward as generate's first step; echo: the engine's path, K/V written into a cache and last-token
logits only), and a full dense forward (all logits, no cache: the training path).
Run: python -m pytest benchmarks/bench_model.py
"""

from __future__ import annotations

import pytest
import torch

import echo
from echo.models import ContiguousKVCache, FlatStep, num_audio_tokens
from echo.models.presets import preset

SECONDS, TEXT_TOKENS = 10.0, 100
FRAMES = int(SECONDS * 100)


def _hf_twin(cfg):
    import transformers

    d = cfg.to_hf_dict()
    d.pop("architectures"), d.pop("model_type")
    d.update(cfg.spec.hf_config_extras({"<|IMAGE|>": 6, "<|VIDEO|>": 7, "<|vision_bos|>": 8}))
    config = getattr(transformers, cfg.spec.hf_config_class)(**d)
    return getattr(transformers, cfg.architecture)(config).eval()


class Setup:
    def __init__(self, name: str):
        torch.manual_seed(0)
        self.hf = _hf_twin(preset(name))
        self.model = echo.from_transformers(self.hf)
        cfg = preset(name)  # Qwen2-Audio's config has no audio bos/eos ids (its tokenizer does); the preset does
        max_frames = cfg.spec.feature_config().max_frames  # the family's extractor window: 300 s or 30 s
        self.feats = torch.randn(1, 128, max_frames) * 0.5
        self.feats[:, :, FRAMES:] = -0.8  # what the extractor's zero padding turns into, roughly
        self.num_frames = torch.tensor([FRAMES])
        self.feature_mask = (torch.arange(max_frames) < FRAMES).long()[None]
        text = torch.randint(100, 30_000, (TEXT_TOKENS,))
        audio = [cfg.audio_bos_token_id] + [cfg.audio_token_id] * num_audio_tokens(FRAMES) + [cfg.audio_eos_token_id]
        self.ids = torch.cat([text[:50], torch.tensor(audio), text[50:]])[None]
        self.mask = torch.ones_like(self.ids)

    def hf_forward(self, use_cache: bool):
        with torch.no_grad():
            return self.hf(input_ids=self.ids, attention_mask=self.mask, input_features=self.feats,
                           feature_attention_mask=self.feature_mask, use_cache=use_cache).logits

    def echo_prefill(self):
        d = self.model.config.decoder
        n = self.ids.shape[1]
        cache = ContiguousKVCache(d.num_layers, 1, n, d.num_kv_heads, d.head_dim)
        step = FlatStep(rows=[0], query_lens=[n], context_lens=[0])
        with torch.no_grad():
            embeds = self.model.embed(self.ids[0], self.model.encode_audio(self.feats, self.num_frames))
            hidden = self.model.forward_flat(embeds, step.positions(), cache.step(step))
            return self.model.compute_logits(hidden[step.last_token_indices()])

    def echo_dense(self):
        with torch.no_grad():
            return self.model(self.ids, attention_mask=self.mask, input_features=self.feats,
                              num_frames=self.num_frames)

    def hf_encoder(self):
        with torch.no_grad():
            inner = self.hf.model
            if hasattr(inner, "visual"):
                return self.hf.get_audio_features(self.feats, self.feature_mask).last_hidden_state
            from transformers.masking_utils import create_bidirectional_mask

            lens = (self.num_frames - 1) // 2 + 1
            mask2d = (torch.arange(1500) < lens[:, None]).long()
            mask = create_bidirectional_mask(config=inner.audio_tower.config, inputs_embeds=torch.zeros(1, 1500, 1),
                                             attention_mask=mask2d)
            out = inner.multi_modal_projector(inner.audio_tower(self.feats, attention_mask=mask).last_hidden_state)
            return out[0, : num_audio_tokens(FRAMES)]

    def echo_encoder(self):
        with torch.no_grad():
            return self.model.encode_audio(self.feats, self.num_frames)


_SETUPS: dict[str, Setup] = {}


@pytest.fixture(scope="module", params=["omni-bench", "qwen2audio-bench"])
def setup(request):
    if request.param not in _SETUPS:
        _SETUPS.clear()  # one mid-size model pair in memory at a time
        _SETUPS[request.param] = Setup(request.param)
    s = _SETUPS[request.param]
    torch.testing.assert_close(s.echo_dense(), s.hf_forward(False), atol=1e-4, rtol=0)  # same numbers first
    return request.param, s


def _bench(benchmark, setup, group, fn):
    name, s = setup
    benchmark.group = f"{name} {group}"
    benchmark.extra_info["tokens"] = s.ids.shape[1]
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)


def test_baseline_transformers_encoder(benchmark, setup):
    _bench(benchmark, setup, "audio encoder 10 s", setup[1].hf_encoder)


def test_echo_encoder(benchmark, setup):
    _bench(benchmark, setup, "audio encoder 10 s", setup[1].echo_encoder)


def test_baseline_transformers_prefill(benchmark, setup):
    _bench(benchmark, setup, "prefill 10 s + 100 tokens", lambda: setup[1].hf_forward(True))


def test_echo_prefill(benchmark, setup):
    _bench(benchmark, setup, "prefill 10 s + 100 tokens", setup[1].echo_prefill)


def test_baseline_transformers_dense(benchmark, setup):
    _bench(benchmark, setup, "dense forward, all logits", lambda: setup[1].hf_forward(False))


def test_echo_dense(benchmark, setup):
    _bench(benchmark, setup, "dense forward, all logits", setup[1].echo_dense)
