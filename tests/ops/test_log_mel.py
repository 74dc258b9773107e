"""log-mel: every backend on this machine vs WhisperFeatureExtractor (numpy path) within 1e-4 on valid frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from echo.audio import FeatureConfig, log_mel
from echo.errors import AudioError, BackendUnavailable
from echo.ops import _backend
from echo.ops.log_mel import BACKENDS, log_mel_spans, mel_filters  # BACKENDS: read by ops/conftest.py
from helpers import assert_close

SR = 16_000



_EXTRACTORS: dict[tuple[int, int], WhisperFeatureExtractor] = {}
N_MELS = [128, 80]  # Qwen2-Audio / Qwen2.5-Omni, and Whisper tiny's 80 bins


def _extractor(chunk_length: int, n_mels: int = 128) -> WhisperFeatureExtractor:
    key = (chunk_length, n_mels)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = WhisperFeatureExtractor(feature_size=n_mels, chunk_length=chunk_length)
    return _EXTRACTORS[key]


def whisper_numpy(x: np.ndarray, chunk_length: int, n_mels: int = 128) -> np.ndarray:
    """What WhisperFeatureExtractor(feature_size=n_mels, chunk_length) gives for clip x (numpy STFT path), cut to
    the valid frames: pad/truncate to max length with zeros, as __call__ does, then _np_extract_fbank_features."""
    fe = _extractor(chunk_length, n_mels)
    padded = np.zeros(fe.n_samples, dtype=np.float32)
    n = min(len(x), fe.n_samples)
    padded[:n] = x[:n]
    feats = fe._np_extract_fbank_features(padded[None], "cpu")[0]
    return feats[:, : -(-n // fe.hop_length)]


def _clip(num_samples: int, seed: int) -> np.ndarray:
    """Tones + noise with a loud burst, so the dynamic-range floor matters."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SR
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(num_samples)
    x[: num_samples // 7] *= 1e-3  # a quiet stretch, far below the loud part
    return x.astype(np.float32)


@pytest.mark.parametrize("n_mels", N_MELS)
def test_mel_filters_equal_transformers(n_mels):
    ours = mel_filters(n_mels, 400, SR)
    theirs = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000.0,
                             sampling_rate=SR, norm="slaney", mel_scale="slaney")
    assert_close("mel filters", theirs, ours, atol=1e-12)


# (num_samples, chunk_length): shorter than a hop, shorter than n_fft, not a multiple of the hop, exactly the max,
# beyond the max, on small chunk configs (cheap) and on the real 30 s and 300 s ones.
CLIPS = [(1, 2), (100, 2), (399, 2), (1601, 2), (31_999, 2), (32_000, 2), (32_001, 2), (50_123, 2),
         (SR * 30 - 37, 30), (SR * 30 + 5_000, 30), (SR * 7 + 3, 300), (SR * 300 + 777, 300)]


# every clip at 128 bins; at 80 bins all but the long 300 s one (the bin count does not change the framing)
CLIP_CASES = [(n, c, m) for m in N_MELS for n, c in CLIPS if m == 128 or n < SR * 60]


@pytest.mark.parametrize("num_samples,chunk,n_mels", CLIP_CASES, ids=[f"n{n}-max{c}s-{m}mels" for n, c, m in CLIP_CASES])
def test_whole_clip_matches_whisper(backend, num_samples, chunk, n_mels):
    name, device = backend
    x = _clip(num_samples, seed=num_samples)
    cfg = FeatureConfig(n_mels=n_mels, chunk_length=chunk)
    out = log_mel(torch.from_numpy(x).to(device), config=cfg, backend=name)
    expected = whisper_numpy(x, chunk, n_mels)
    assert out.num_frames.tolist() == [expected.shape[1]]
    assert_close(f"{name} clip n={num_samples}", expected, out.features.cpu(), atol=1e-4)


def test_public_call_path_matches(backend):
    """The extractor's public __call__ (its torch path here) agrees too."""
    name, device = backend
    x = _clip(SR * 4 + 11, seed=3)
    fe = WhisperFeatureExtractor(feature_size=128, chunk_length=30)
    expected = fe(x, sampling_rate=SR, return_tensors="np")["input_features"][0][:, : -(-len(x) // 160)]
    out = log_mel(torch.from_numpy(x).to(device), config=FeatureConfig(chunk_length=30), backend=name)
    assert_close(f"{name} vs __call__", expected, out.features.cpu(), atol=1e-4)


# Spans of a 60 s clip (start_s, end_s): touching the start, touching the end, 0.2 s, sub-hop, long.
SPANS = [(0.0, 2.5), (57.3, 60.0), (10.0, 10.2), (33.33331, 33.34), (5.0, 45.0), (0.0, 60.0)]


@pytest.mark.parametrize("n_mels", N_MELS, ids=lambda n: f"{n}mels")
def test_many_spans_match_cut_out_clips(backend, n_mels):
    name, device = backend
    clip = _clip(SR * 60, seed=7)
    spans = [(0, round(a * SR), round(b * SR)) for a, b in SPANS]
    cfg = FeatureConfig(n_mels=n_mels, chunk_length=30)  # the (5, 45) and whole-clip spans exceed the max: truncated
    out = log_mel(torch.from_numpy(clip).to(device), spans, config=cfg, backend=name)
    pieces = out.split()
    assert len(pieces) == len(spans) and out.features.shape[0] == n_mels
    for (a, b), (_, s, e), got in zip(SPANS, spans, pieces):
        assert_close(f"{name} span {a}-{b}s", whisper_numpy(clip[s:e], 30, n_mels), got.cpu(), atol=1e-4)


def test_spans_across_several_clips(backend):
    name, device = backend
    clips = [_clip(SR * 3 + 17, seed=1), _clip(SR * 9, seed=2), _clip(4_321, seed=4)]
    spans = [(1, 0, 200), (0, 16_000, 48_017), (2, 0, 4_321), (1, SR * 8, SR * 9), (0, 5, 3_205)]
    cfg = FeatureConfig(chunk_length=30)
    out = log_mel([torch.from_numpy(c).to(device) for c in clips], spans, config=cfg, backend=name)
    for j, ((c, s, e), got) in enumerate(zip(spans, out.split())):
        assert_close(f"{name} span {j}", whisper_numpy(clips[c][s:e], 30), got.cpu(), atol=1e-4)
    whole = log_mel(clips, config=cfg, backend=name)  # numpy input, computed on the CPU
    for i, got in enumerate(whole.split()):
        assert_close(f"{name} clip {i}", whisper_numpy(clips[i], 30), got, atol=1e-4)


def test_silence_and_edge_max(backend):
    """All-zero audio floors at -10 everywhere; a click in the last samples sets the max via a trailing frame."""
    name, device = backend
    cfg = FeatureConfig(chunk_length=2)
    silent = np.zeros(5_000, dtype=np.float32)
    assert_close("silence", whisper_numpy(silent, 2), log_mel(silent, config=cfg, backend=name).features, atol=1e-4)
    click = _clip(8_003, seed=9) * 1e-3
    click[-3:] = 1.0
    got = log_mel(torch.from_numpy(click).to(device), config=cfg, backend=name).features.cpu()
    assert_close("end click", whisper_numpy(click, 2), got, atol=1e-4)


def test_bad_clip_in_batch_is_named():
    good = np.ones(1000, dtype=np.float32)
    with pytest.raises(AudioError, match="clip 1 has zero samples"):
        log_mel([good, np.zeros(0, dtype=np.float32)])
    with pytest.raises(AudioError, match="clip 2 has non-finite"):
        log_mel([good, good, np.array([0.0, np.nan], dtype=np.float32)])
    with pytest.raises(AudioError, match="must be 1-D"):
        log_mel([good, np.ones((2, 10), dtype=np.float32)])


@pytest.mark.parametrize("span,msg", [((0, 500, 400), "span 1 .*reversed"), ((0, 0, 1001), "span 1 .*outside"),
                                      ((3, 0, 10), "span 1 names clip 3"), ((0, "a", 3), "span 1 must be")])
def test_bad_spans_are_named(span, msg):
    with pytest.raises(AudioError, match=msg):
        log_mel(np.ones(1000, dtype=np.float32), [(0, 0, 10), span])


def test_op_checks_inputs():
    cfg = FeatureConfig()
    wave = torch.ones(100)
    with pytest.raises(ValueError, match="past the waveform"):
        log_mel_spans(wave, [50], [51], **cfg.mel_args)
    with pytest.raises(ValueError, match="1-D float32"):
        log_mel_spans(wave.double(), [0], [10], **cfg.mel_args)
    with pytest.raises(BackendUnavailable, match="no 'triton' backend"):
        log_mel_spans(wave, [0], [10], **cfg.mel_args, backend="triton")


def test_explicit_cuda_backend_without_cuda_tensors_is_refused():
    with pytest.raises(BackendUnavailable, match="cuda"):
        log_mel_spans(torch.ones(100), [0], [10], **FeatureConfig().mel_args, backend="cuda")


@pytest.mark.parametrize("n_mels", N_MELS)
def test_feature_config_from_preprocessor(tmp_path, n_mels):
    fe = WhisperFeatureExtractor(feature_size=n_mels, chunk_length=30)
    fe.save_pretrained(tmp_path)
    cfg = FeatureConfig.from_pretrained(tmp_path)
    assert (cfg.n_mels, cfg.n_fft, cfg.hop_length, cfg.chunk_length, cfg.max_samples) == (n_mels, 400, 160, 30, 480_000)
    x = _clip(SR * 3 + 5, seed=12)  # the preprocessor's own __call__ agrees with echo on that config
    expected = fe(x, sampling_rate=SR, return_tensors="np")["input_features"][0][:, : -(-len(x) // 160)]
    assert_close(f"{n_mels} bins vs __call__", expected, log_mel(x, config=cfg).features, atol=1e-4)
    with pytest.raises(ValueError, match="dither"):
        FeatureConfig.from_pretrained({"dither": 0.1})


@pytest.mark.gpu
def test_cuda_kernel_equals_cpu_kernel_on_a_batch():
    """On a GPU machine: the CUDA launcher (one lane per thread) against the C++ one (SIMD lanes), same mel.h."""
    if "cuda" not in _backend.available(BACKENDS, "cuda"):
        pytest.skip("echo._C was built without CUDA kernels")
    clips = [_clip(SR * 40 + 3, seed=5), _clip(SR * 2 + 99, seed=6)]
    spans = [(0, 0, SR * 40 + 3), (0, 123, 3_323), (1, 0, 50), (1, SR, SR * 2 + 99), (0, SR * 39, SR * 40 + 3)]
    for n_mels in N_MELS:
        cfg = FeatureConfig(n_mels=n_mels, chunk_length=30)
        gpu = log_mel([torch.from_numpy(c).cuda() for c in clips], spans, config=cfg, backend="cuda")
        cpu = log_mel(clips, spans, config=cfg, backend="cpu")
        assert gpu.features.is_cuda
        assert_close(f"cuda vs cpu {n_mels}", cpu.features, gpu.features.cpu(), atol=1e-4)
        for j, ((c, s, e), got) in enumerate(zip(spans, gpu.split())):
            assert_close(f"cuda span {j} {n_mels}", whisper_numpy(clips[c][s:e], 30, n_mels), got.cpu(), atol=1e-4)


@pytest.mark.parametrize("num_samples", [1, 1601, 31_999, 32_000 - 100], ids=lambda n: f"n{n}")
def test_extra_frames_match_the_extractors_padding_frames(backend, num_samples):
    """Qwen2-Audio reads 2 frames past an audio's end: they must be the extractor's own padded frames."""
    name, device = backend
    x = _clip(num_samples, seed=11)
    fe = _extractor(2)
    padded = np.zeros(fe.n_samples, dtype=np.float32)
    padded[:num_samples] = x
    full = fe._np_extract_fbank_features(padded[None], "cpu")[0]
    keep = min(-(-num_samples // 160) + 2, full.shape[1])
    feats, frames = log_mel_spans(torch.from_numpy(x).to(device), [0], [num_samples],
                                  **FeatureConfig(chunk_length=2).mel_args, backend=name, extra_frames=2)
    assert frames.tolist() == [keep]
    assert_close(f"{name} extra frames", full[:, :keep], feats.cpu(), atol=1e-4)


def test_cpu_kernel_runs_on_the_pool_with_torch_on_one_thread(monkeypatch):
    """torch's OpenMP workers would spin on the cores the pool needs: torch runs one thread during the call."""
    if _backend.native() is None:
        pytest.skip("echo._C is not built")
    seen, real = [], _backend.native().log_mel
    monkeypatch.setattr(_backend.native(), "log_mel",
                        lambda **kw: seen.append((torch.get_num_threads(), kw["num_threads"])) or real(**kw))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        wave = torch.randn(16000)
        feats, _ = log_mel_spans(wave, torch.tensor([0]), torch.tensor([16000]), **FeatureConfig().mel_args,
                                 backend="cpu")
        assert seen == [(1, 2)] and torch.get_num_threads() == 2
        ref, _ = log_mel_spans(wave, torch.tensor([0]), torch.tensor([16000]), **FeatureConfig().mel_args,
                               backend="torch")
        torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(before)
