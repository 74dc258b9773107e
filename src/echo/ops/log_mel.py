"""Span log-mel: Whisper's 128-bin log-mel of many spans of many clips in one call.

Each span is featurised as if it were cut out as its own clip and given to ``WhisperFeatureExtractor``: truncated
to ``max_samples``, zero-padded to ``max_samples``, centred STFT (reflect padding of n_fft/2), periodic Hann window,
power spectrum, Slaney mel filters up to 8 kHz, ``log10(max(mel, 1e-10))``, floor at (span max - 8), then
``(x + 4) / 4``. Only the span's valid frames, ceil(min(len, max_samples) / hop), are computed and returned; the
max also sees the one or two frames past them whose windows still reach the span's last samples, as the
extractor's does.

Backends: ``torch`` (:func:`log_mel_ref`, torch.stft), ``cpu`` and ``cuda`` (echo._C, one single-source kernel).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from ..errors import ConfigError
from . import _backend
from .linear import kernel_threads

BACKENDS = ("cuda", "cpu", "torch")
MAX_RADIX = 16  # csrc/mel.h kMaxRadix
MAX_N_FFT = 512  # csrc/mel.h kMaxFft
MAX_MELS = 256  # csrc/mel.h kMaxMels


# ---------------------------------------------------------------------------------------------------------------
# Filters and frame bookkeeping shared by every backend
# ---------------------------------------------------------------------------------------------------------------


class Mel(NamedTuple):
    """The numbers the op reads (``echo.audio.FeatureConfig.mel_args`` gives a checkpoint's)."""

    n_mels: int
    n_fft: int
    hop_length: int
    max_samples: int  # spans longer than this are truncated; each is zero-padded to it before the STFT
    sampling_rate: int


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    mels[log_region] = 15.0 + np.log(freq[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freq = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    freq[log_region] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels[log_region] - 15.0))
    return freq


@functools.cache
def mel_filters(n_mels: int, n_fft: int, sampling_rate: int, f_max: float = 8000.0) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shape (n_fft // 2 + 1, n_mels), float64 (Whisper's bank)."""
    n_bins = n_fft // 2 + 1
    filter_hz = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([f_max]))[0], n_mels + 2))
    fft_hz = np.linspace(0, sampling_rate // 2, n_bins)
    slopes = filter_hz[None, :] - fft_hz[:, None]
    width = np.diff(filter_hz)
    down = -slopes[:, :-2] / width[:-1]
    up = slopes[:, 2:] / width[1:]
    bank = np.maximum(0.0, np.minimum(down, up))
    return bank * (2.0 / (filter_hz[2:] - filter_hz[:-2]))[None, :]


def frame_counts(span_len: np.ndarray | torch.Tensor, cfg: Mel, extra_frames: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(returned, computed) frames per span, int64 numpy arrays. ceil(min(len, max) / hop) + extra_frames (capped at
    the max) frames are returned; computed >= returned also covers the frames whose windows touch a real sample,
    since they take part in the span's max. (numpy: on a few spans its ops cost a tenth of torch's.)"""
    max_frames = cfg.max_samples // cfg.hop_length
    n = np.minimum(_as_int64(span_len), cfg.max_samples)
    valid = np.minimum((n + cfg.hop_length - 1) // cfg.hop_length + extra_frames, max_frames)
    signal = np.minimum((n - 1 + cfg.n_fft // 2) // cfg.hop_length + 1, max_frames)
    return valid, np.maximum(valid, signal)


# ---------------------------------------------------------------------------------------------------------------
# Reference (plain PyTorch)
# ---------------------------------------------------------------------------------------------------------------


def log_mel_ref(wave: torch.Tensor, span_start: torch.Tensor, span_len: torch.Tensor, cfg: Mel,
                extra_frames: int = 0) -> torch.Tensor:
    """Plain-PyTorch log-mel of spans; same contract as :func:`log_mel_spans` (returns (n_mels, total_frames)).

    Each span is zero-padded only as far as its frames can see (n_fft/2 + 1 samples past its end, or to
    max_samples when it is that close to it), which gives the same frames as padding to max_samples.
    """
    filters = torch.from_numpy(mel_filters(cfg.n_mels, cfg.n_fft, cfg.sampling_rate)).to(wave.device, torch.float32)
    window = torch.hann_window(cfg.n_fft, device=wave.device)
    valid, _ = frame_counts(span_len, cfg, extra_frames)
    max_frames = cfg.max_samples // cfg.hop_length
    out = []
    for start, length, keep in zip(span_start.tolist(), span_len.tolist(), valid.tolist()):
        n = min(length, cfg.max_samples)
        padded_len = min(cfg.max_samples, n + cfg.n_fft // 2 + 1 + extra_frames * cfg.hop_length)
        x = torch.zeros(padded_len, dtype=torch.float32, device=wave.device)
        x[:n] = wave[start : start + n]
        stft = torch.stft(x, cfg.n_fft, cfg.hop_length, window=window, center=True, pad_mode="reflect",
                          return_complex=True)[:, :max_frames]
        log_spec = (filters.T @ stft.abs().pow(2)).clamp(min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        out.append(((log_spec + 4.0) / 4.0)[:, :keep])
    if not out:
        return torch.zeros(cfg.n_mels, 0, dtype=torch.float32, device=wave.device)
    return torch.cat(out, dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Native (echo._C) tables and launch
# ---------------------------------------------------------------------------------------------------------------


def _radices(m: int) -> list[int]:
    """Factor m for the Stockham FFT: radix-4 butterflies first (cheapest), then the remaining primes."""
    out, rest = [], m
    while rest % 4 == 0:
        out.append(4)
        rest //= 4
    for p in range(2, MAX_RADIX + 1):
        while rest % p == 0:
            out.append(p)
            rest //= p
    if rest != 1:
        raise ConfigError(f"n_fft={2 * m}: n_fft/2 has a prime factor above {MAX_RADIX}; the native FFT cannot plan it")
    return out or [1]


@functools.cache
def _tables(n_mels: int, n_fft: int, sampling_rate: int, device: torch.device) -> dict:
    """Window, FFT twiddles and the sparse (per-filter non-zero range) mel bank, on ``device``."""
    m = n_fft // 2
    bank = mel_filters(n_mels, n_fft, sampling_rate).astype(np.float32)
    first, count, offset, weights = [], [], [], []
    for f in range(n_mels):
        nz = np.nonzero(bank[:, f])[0]
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
        first.append(lo)
        count.append(hi - lo)
        offset.append(len(weights))
        weights.extend(bank[lo:hi, f].tolist())
    tw = np.exp(-2j * np.pi * np.arange(m) / m)
    rtw = np.exp(-2j * np.pi * np.arange(m) / n_fft)

    def cpx(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([a.real, a.imag], axis=-1).astype(np.float32).ravel()).to(device)

    def i32(a: list[int]) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.int32, device=device)

    return {
        "radices": _radices(m),
        "window": torch.hann_window(n_fft, dtype=torch.float64).float().to(device),
        "twiddle": cpx(tw),
        "rtwiddle": cpx(rtw),
        "mel_first_bin": i32(first),
        "mel_num_bins": i32(count),
        "mel_offset": i32(offset),
        "mel_weights": torch.tensor(weights, dtype=torch.float32, device=device),
    }


def _log_mel_native(wave, span_start: np.ndarray, span_len: np.ndarray, valid: np.ndarray, signal: np.ndarray, cfg,
                    on_cuda: bool, num_threads: int | None) -> torch.Tensor:
    device = wave.device
    out_offset = np.concatenate([[0], np.cumsum(valid)])
    work_offset = np.concatenate([[0], np.cumsum(signal)])
    total, total_work = int(out_offset[-1]), int(work_offset[-1])
    out = torch.empty(cfg.n_mels, total, dtype=torch.float32, device=device)
    frame_max = torch.empty(max(total_work, 1), dtype=torch.float32, device=device)
    t = _tables(cfg.n_mels, cfg.n_fft, cfg.sampling_rate, device)
    dev = {name: torch.from_numpy(x).to(device) for name, x in
           dict(span_start=span_start, span_len=span_len, out_offset=out_offset, work_offset=work_offset).items()}
    stream = torch.cuda.current_stream(device).cuda_stream if on_cuda else 0
    # CPU: the pool takes torch's threads (inside a decode step, the count few_row_forward gave the kernels)
    threads = num_threads or max(torch.get_num_threads(), kernel_threads())
    with _backend.torch_on_one_thread(not on_cuda and threads > 1):
        _backend.native().log_mel(
            on_cuda=on_cuda, n_fft=cfg.n_fft, hop=cfg.hop_length, n_mels=cfg.n_mels, max_samples=cfg.max_samples,
            radices=t["radices"], window=t["window"].data_ptr(), twiddle=t["twiddle"].data_ptr(),
            rtwiddle=t["rtwiddle"].data_ptr(), mel_first_bin=t["mel_first_bin"].data_ptr(),
            mel_num_bins=t["mel_num_bins"].data_ptr(), mel_offset=t["mel_offset"].data_ptr(),
            mel_weights=t["mel_weights"].data_ptr(), wave=wave.data_ptr(), span_start=dev["span_start"].data_ptr(),
            span_len=dev["span_len"].data_ptr(), out_offset=dev["out_offset"].data_ptr(),
            work_offset=dev["work_offset"].data_ptr(), num_spans=int(span_len.size), total_work=total_work,
            out_stride=total, out=out.data_ptr(), frame_max=frame_max.data_ptr(),
            num_threads=threads, stream=stream,
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------------------------------------------


def log_mel_spans(
    wave: torch.Tensor,
    span_start: torch.Tensor,
    span_len: torch.Tensor,
    *,
    n_mels: int,
    n_fft: int,
    hop_length: int,
    max_samples: int,
    sampling_rate: int,
    backend: str | None = None,
    num_threads: int | None = None,
    extra_frames: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel features of spans of a packed waveform.

    Args:
        wave: (num_samples,) float32, contiguous: one or more 16 kHz clips laid end to end. Spans index into it.
        span_start: (num_spans,) integers (CPU tensor, array or list), first sample of each span in ``wave``.
        span_len: (num_spans,) integers, samples in each span (>= 1); longer than ``max_samples`` is truncated.
        n_mels, n_fft, hop_length, sampling_rate: the extractor's mel bins, FFT size, hop and sample rate.
        max_samples: each span is truncated to this many samples and zero-padded to it (the extractor's window).
        backend: "auto"/None, "cuda", "cpu" or "torch" (see ops._backend; ECHO_BACKEND overrides "auto").
        num_threads: CPU threads for the C++ kernel (default: torch.get_num_threads()).
        extra_frames: also return this many frames past the valid ones (capped at the max length), as the
            extractor's padded output has them: Qwen2-Audio's conv stem reads 2 frames past an audio's end.

    Returns:
        features: (n_mels, total_frames) float32 on ``wave``'s device; span s owns columns
            [offset[s], offset[s] + num_frames[s]) with offset the exclusive cumsum of num_frames.
        num_frames: (num_spans,) int64 on the CPU, ceil(min(len, max_samples) / hop_length) (+ extra_frames) each.
    """
    cfg = Mel(int(n_mels), int(n_fft), int(hop_length), int(max_samples), int(sampling_rate))
    span_start, span_len = _as_int64(span_start), _as_int64(span_len)
    _check(wave, span_start, span_len, cfg)
    chosen = _backend.resolve("log_mel", BACKENDS, wave.device, backend)
    if extra_frames < 0:
        raise ValueError(f"log_mel: extra_frames must be >= 0, got {extra_frames}")
    valid, signal = frame_counts(span_len, cfg, extra_frames)
    if chosen == "torch":
        feats = log_mel_ref(wave, torch.from_numpy(span_start), torch.from_numpy(span_len), cfg, extra_frames)
    else:
        feats = _log_mel_native(wave, span_start, span_len, valid, signal, cfg, chosen == "cuda", num_threads)
    return feats, torch.from_numpy(valid)


def _as_int64(x) -> np.ndarray:
    """Span starts or lengths (list, numpy array or tensor on any device) as a contiguous 1-D int64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.int64).reshape(-1))


def _check(wave: torch.Tensor, span_start: np.ndarray, span_len: np.ndarray, cfg: Mel) -> None:
    if not isinstance(wave, torch.Tensor) or wave.dtype != torch.float32 or wave.dim() != 1:
        raise ValueError(f"log_mel: wave must be a 1-D float32 tensor, got {getattr(wave, 'dtype', type(wave))} "
                         f"of shape {tuple(getattr(wave, 'shape', ()))}")
    if not wave.is_contiguous():
        raise ValueError("log_mel: wave must be contiguous")
    if span_start.shape != span_len.shape:
        raise ValueError(f"log_mel: span_start {tuple(span_start.shape)} and span_len {tuple(span_len.shape)} differ")
    if span_len.size and int(span_len.min()) < 1:
        raise ValueError(f"log_mel: span {int(span_len.argmin())} has {int(span_len.min())} samples; need >= 1")
    if span_start.size and int(span_start.min()) < 0:
        raise ValueError(f"log_mel: span {int(span_start.argmin())} starts before the waveform")
    if span_start.size and int((span_start + span_len).max()) > wave.numel():
        bad = int((span_start + span_len).argmax())
        raise ValueError(f"log_mel: span {bad} ends at sample {int(span_start[bad] + span_len[bad])}, past the "
                         f"waveform's {wave.numel()} samples")
    if cfg.n_fft % 2 or cfg.n_fft > MAX_N_FFT:
        raise ConfigError(f"log_mel: n_fft={cfg.n_fft} must be even and at most {MAX_N_FFT}")
    if cfg.n_mels > MAX_MELS:
        raise ConfigError(f"log_mel: n_mels={cfg.n_mels} is above {MAX_MELS}")

