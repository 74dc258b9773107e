"""The frozen-tower feature cache: rows equal the tower's own, a second epoch and a resumed run run the tower for no
span already seen, another tower never reads them, the disk copy is bounded and a full disk is one clear error."""

from __future__ import annotations

import errno
import json

import pytest
import tiny_checkpoints as tc
import torch

import echo
from echo.audio import load as load_audio
from echo.errors import EchoError
from echo.models.model import AudioLanguageModel
from echo.train import feature_cache as fc_mod
from echo.train.data import build_dataset, read_records
from echo.train.feature_cache import FeatureCache
from echo.train.sft import SFTConfig, train_sft

TARGETS = ["<think><seg>0.5, 1.5</seg>two</think><answer>B</answer>",
           "<think>none</think><answer>A</answer>",
           "<think><seg>1.0, 2.0</seg>high <seg>0.2, 0.9</seg>low</think><answer>C</answer>",
           "<think><seg>0.2, 0.9</seg>dog</think><answer>D</answer>"]
QUESTIONS = ["How many beeps?", "Is there speech?", "How high is the tone?", "Which animal?"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tc.train_workdir(tmp_path_factory, "feature-cache")
    tc.write_sft_task(d, QUESTIONS, TARGETS, seed=31)
    return d


def _examples(workdir):
    model = echo.load(workdir / "base")
    features = model.resolve_feature_config(workdir / "base")
    examples, skipped = build_dataset(read_records(workdir / "data.jsonl"), model.processor, "interleaved",
                                      features=features)
    assert not skipped
    return model, features, examples


def test_rows_equal_the_towers_and_are_computed_once(workdir, tmp_path):
    model, features, examples = _examples(workdir)
    cache = FeatureCache(model, features, tmp_path / "cache")
    spans = sum(len(ex.audio_spans) for ex in examples)
    for epoch in range(2):
        for ex in examples:
            wave = torch.from_numpy(load_audio(ex.audio))
            got = cache.rows(model, wave, ex.audio_spans)
            want = model.embed_spans(features, [wave], [(0, s, e) for s, e in ex.audio_spans])
            assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
        assert cache.computed == spans  # epoch two ran the tower for nothing
    files = list((tmp_path / "cache").glob("*/*.safetensors"))
    assert len(files) == spans and cache.disk_bytes == sum(f.stat().st_size for f in files)

    again = FeatureCache(model, features, tmp_path / "cache")  # a resumed run: read back, bit for bit
    for ex in examples:
        wave = torch.from_numpy(load_audio(ex.audio))
        want = model.embed_spans(features, [wave], [(0, s, e) for s, e in ex.audio_spans])
        assert all(torch.equal(a, b) for a, b in zip(again.rows(model, wave, ex.audio_spans), want))
    assert again.computed == 0 and again.read == spans

    with torch.no_grad():  # another tower: its own directory, nothing read from the first
        next(p for n, p in model.named_parameters() if n.startswith(fc_mod.TOWER_PREFIXES)).add_(0.01)
    other = FeatureCache(model, features, tmp_path / "cache")
    ex = examples[0]
    other.rows(model, torch.from_numpy(load_audio(ex.audio)), ex.audio_spans)
    assert other.read == 0 and other.computed == len(ex.audio_spans) and other.dir != again.dir


def test_the_disk_copy_is_bounded_and_a_full_disk_is_one_clear_error(workdir, tmp_path, monkeypatch):
    model, features, examples = _examples(workdir)
    ex = examples[2]  # the clip and two spans
    wave = torch.from_numpy(load_audio(ex.audio))
    bounded = FeatureCache(model, features, tmp_path / "small", max_disk_bytes=1)
    bounded.rows(model, wave, ex.audio_spans)
    assert not list((tmp_path / "small").glob("*/*")) and bounded.computed == 3  # memory only past the bound
    bounded.rows(model, wave, ex.audio_spans)
    assert bounded.computed == 3

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fc_mod, "save_file", full)
    cache = FeatureCache(model, features, tmp_path / "full")
    with pytest.raises(EchoError, match=r"feature cache .*full.*: the disk is full .*--no-feature-cache"):
        cache.rows(model, wave, ex.audio_spans)
    assert not list((tmp_path / "full").glob("*/*"))  # no torn entry left behind


def test_sft_with_the_cache_trains_as_without_it_and_encodes_each_span_once(workdir, monkeypatch):
    calls = {"cached": [], "plain": []}
    real = AudioLanguageModel.embed_spans
    runs = {}
    for name, cached in (("cached", True), ("plain", False)):
        out = workdir / name
        with monkeypatch.context() as m:
            m.setattr(AudioLanguageModel, "embed_spans",
                      lambda model, *a, _n=name, **k: calls[_n].append(len(a[2])) or real(model, *a, **k))
            train_sft(str(workdir / "base"), str(workdir / "data.jsonl"), str(out),
                      SFTConfig(lr=1e-3, epochs=3, grad_accum=2, lora_rank=4, feature_cache=cached, progress=False))
        runs[name] = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    spans = 4 + sum(t.count("<seg>") for t in TARGETS)  # every clip once, every cited span once
    assert sum(calls["cached"]) == spans  # over three epochs the cached run encoded each span once...
    assert sum(calls["plain"]) == 3 * spans  # ... and the plain run every epoch
    assert len(list((workdir / "cached" / "feature_cache").glob("*/*.safetensors"))) == spans
    assert runs["cached"] == pytest.approx(runs["plain"], rel=1e-6)
