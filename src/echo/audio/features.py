"""Whisper bookkeeping: the checkpoint's feature config, seconds <-> samples <-> mel frames <-> audio tokens, and
``log_mel``, the public wrapper over ``echo.ops.log_mel`` (it validates and packs; the op computes)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..errors import AudioError, ConfigError
from ..ops._backend import torch_on_one_thread
from ..ops.log_mel import log_mel_spans
from .io import SAMPLING_RATE


@dataclasses.dataclass(frozen=True, slots=True)
class FeatureConfig:
    """What WhisperFeatureExtractor needs from a checkpoint's preprocessor_config.json.

    Defaults are Qwen2.5-Omni's (128 mels, 300 s max); Qwen2-Audio's differ only in ``chunk_length=30``.
    ``max_windows`` > 1 is a processor that cuts longer audio into consecutive ``chunk_length`` windows, each
    featurised and encoded as its own clip, up to that many (Audio Flamingo 3: 20 windows of 30 s); 1 truncates.
    """

    n_mels: int = 128
    n_fft: int = 400
    hop_length: int = 160
    sampling_rate: int = SAMPLING_RATE
    chunk_length: int = 300  # seconds: clips are truncated / zero-padded to this length before the STFT
    max_windows: int = 1  # chunk_length windows an audio is heard in (the processor's, not preprocessor_config's)

    def __post_init__(self):
        for name in ("n_mels", "n_fft", "hop_length", "chunk_length"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"FeatureConfig.{name} must be positive, got {getattr(self, name)}")
        if self.sampling_rate != SAMPLING_RATE:
            raise ConfigError(f"FeatureConfig.sampling_rate={self.sampling_rate}: echo resamples all audio to "
                              f"{SAMPLING_RATE} Hz, so the extractor must expect {SAMPLING_RATE}")
        if self.n_fft % 2:
            raise ConfigError(f"FeatureConfig.n_fft={self.n_fft} must be even")
        if not isinstance(self.max_windows, int) or self.max_windows < 1:
            raise ConfigError(f"FeatureConfig.max_windows must be an int >= 1, got {self.max_windows!r}")
        # a full window must give whole audio tokens (frames a multiple of 4), so that the tokens of the windows
        # add up to num_audio_tokens of the audio's frames, which the prompts and splices are counted with
        if self.max_windows > 1 and (self.max_samples % self.hop_length or self.max_frames % 4):
            raise ConfigError(f"FeatureConfig: {self.chunk_length} s windows are {self.max_samples / self.hop_length}"
                              " mel frames, not a multiple of 4; windowed audio needs whole audio tokens per window")

    @property
    def max_samples(self) -> int:
        return self.chunk_length * self.sampling_rate

    @property
    def max_frames(self) -> int:
        return self.max_samples // self.hop_length

    @property
    def max_audio_samples(self) -> int:
        """The longest audio the model hears (all its windows); longer clips are truncated to it."""
        return self.max_windows * self.max_samples

    @property
    def max_audio_s(self) -> int:
        return self.max_windows * self.chunk_length

    @property
    def mel_args(self) -> dict[str, int]:
        """The numbers ``echo.ops.log_mel.log_mel_spans`` takes, as keywords."""
        return dict(n_mels=self.n_mels, n_fft=self.n_fft, hop_length=self.hop_length, max_samples=self.max_samples,
                    sampling_rate=self.sampling_rate)

    @classmethod
    def from_pretrained(cls, path_or_dict: str | os.PathLike | dict) -> "FeatureConfig":
        """Read a checkpoint directory's preprocessor_config.json (or the dict it holds)."""
        if isinstance(path_or_dict, dict):
            raw = path_or_dict
        else:
            path = os.fspath(path_or_dict)
            if os.path.isdir(path):
                path = os.path.join(path, "preprocessor_config.json")
            try:
                with open(path, encoding="utf-8") as f:
                    raw = json.load(f)
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read the preprocessor config ({exc})") from exc
        if float(raw.get("dither", 0.0)) != 0.0:
            raise ConfigError(f"preprocessor config has dither={raw['dither']}; echo computes deterministic "
                              "features and supports dither=0 only")
        return cls(
            n_mels=int(raw.get("feature_size", cls.n_mels)),
            n_fft=int(raw.get("n_fft", cls.n_fft)),
            hop_length=int(raw.get("hop_length", cls.hop_length)),
            sampling_rate=int(raw.get("sampling_rate", SAMPLING_RATE)),
            chunk_length=int(raw.get("chunk_length", cls.chunk_length)),
        )


def seconds_to_sample(seconds: float, sampling_rate: int = SAMPLING_RATE) -> int:
    """Sample index of a time in seconds (rounded to the nearest sample)."""
    return int(round(seconds * sampling_rate))


def num_mel_frames(num_samples: int, cfg: FeatureConfig = FeatureConfig()) -> int:
    """Valid mel frames of a clip: ceil(min(num_samples, max_audio_samples) / hop_length), the sum over its windows
    when it has several."""
    return math.ceil(min(num_samples, cfg.max_audio_samples) / cfg.hop_length)


def audio_windows(start: int, end: int, cfg: FeatureConfig = FeatureConfig()) -> list[tuple[int, int]]:
    """The ``(start, end)`` sample ranges the audio ``[start, end)`` is heard in, each featurised and encoded as
    its own clip: consecutive ``chunk_length`` windows, at most ``max_windows`` (one window: the audio itself,
    truncated to ``chunk_length``), as Audio Flamingo 3's processor cuts them."""
    end = min(end, start + cfg.max_audio_samples)
    return [(a, min(a + cfg.max_samples, end)) for a in range(start, end, cfg.max_samples)] or [(start, end)]


def num_audio_tokens(num_frames: int) -> int:
    """Audio tokens the Qwen audio encoders emit for ``num_frames`` mel frames (conv stride 2, then pool 2)."""
    return ((num_frames - 1) // 2 + 1 - 2) // 2 + 1


def min_audio_samples(cfg: FeatureConfig = FeatureConfig()) -> int:
    """The shortest clip (or re-listened span) that gives at least one audio token: 3 mel frames, i.e. more than
    two hops (321 samples, 20 ms at 16 kHz); anything shorter would put no audio at all into the sequence."""
    return 2 * cfg.hop_length + 1


class LogMel(NamedTuple):
    """Packed features: ``features`` (n_mels, total_frames); item i owns ``num_frames[i]`` consecutive columns."""

    features: torch.Tensor
    num_frames: torch.Tensor  # (num_items,) int64, CPU

    def split(self) -> list[torch.Tensor]:
        """One (n_mels, num_frames[i]) view per item."""
        return list(torch.split(self.features, self.num_frames.tolist(), dim=1))


def log_mel(
    audio: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
    spans: Sequence[tuple[int, int, int]] | None = None,
    *,
    config: FeatureConfig | None = None,
    device: torch.device | str | None = None,
    backend: str | None = None,
) -> LogMel:
    """Whisper log-mel features of whole clips, or of spans of them, in one batched call.

    Args:
        audio: one 16 kHz mono waveform (1-D array/tensor, as ``echo.audio.load`` returns) or a list of them.
        spans: ``None`` for one item per whole clip; otherwise ``(clip_index, start_sample, end_sample)`` triples
            (samples at 16 kHz, end exclusive), each featurised as if cut out as its own clip (what a
            re-listen hears). Nothing is copied out per span.
        config: the checkpoint's ``FeatureConfig`` (default: Qwen2.5-Omni's).
        device: where to compute (default: the first clip's device, CPU for numpy input).
        backend: "auto" (default), "cuda", "cpu" or "torch".

    Returns:
        ``LogMel(features, num_frames)``: features (n_mels, sum(num_frames)) float32, valid frames only.

    Raises:
        AudioError: a clip that is empty, not 1-D, or non-finite (named by its index); a span that is empty,
            reversed or outside its clip (named by its index).
    """
    cfg = config or FeatureConfig()
    clips = [audio] if _is_single(audio) else list(audio)
    if not clips:
        raise AudioError("log_mel: no audio given")
    tensors = []
    for i, clip in enumerate(clips):
        t = torch.as_tensor(clip)
        label = f"clip {i}" if len(clips) > 1 else "clip"
        if t.dim() != 1:
            raise AudioError(f"log_mel: {label} must be 1-D mono samples, got shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise AudioError(f"log_mel: {label} has zero samples")
        # The sum is finite whenever every sample is (a full isfinite pass costs as much as the features). On one
        # torch thread: woken OpenMP workers would spin on the cores the C++ kernel's pool takes next (2x slower).
        with torch_on_one_thread(t.device.type == "cpu"):
            finite = bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())
        if not finite:
            raise AudioError(f"log_mel: {label} has non-finite samples")
        tensors.append(t)
    dev = torch.device(device) if device is not None else tensors[0].device
    wave = tensors[0] if len(tensors) == 1 else torch.cat([t.to(dev, torch.float32) for t in tensors])
    wave = wave.to(dev, torch.float32).contiguous()
    clip_start = np.concatenate([[0], np.cumsum([t.numel() for t in tensors])])
    if spans is None:
        starts, lens = clip_start[:-1], np.diff(clip_start)
    else:
        starts, lens = _span_offsets(spans, clip_start)
    feats, frames = log_mel_spans(wave, torch.as_tensor(starts, dtype=torch.int64),
                                  torch.as_tensor(lens, dtype=torch.int64), **cfg.mel_args, backend=backend)
    return LogMel(feats, frames)


def _is_single(audio) -> bool:
    return isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim == 1


def _span_offsets(spans, clip_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts, lens = [], []
    for j, span in enumerate(spans):
        try:
            clip, begin, end = (int(v) for v in span)
        except (TypeError, ValueError) as exc:
            raise AudioError(f"log_mel: span {j} must be (clip_index, start_sample, end_sample), got {span!r}") from exc
        if not 0 <= clip < len(clip_start) - 1:
            raise AudioError(f"log_mel: span {j} names clip {clip}, but there are {len(clip_start) - 1} clips")
        clip_len = int(clip_start[clip + 1] - clip_start[clip])
        if not 0 <= begin < end <= clip_len:
            raise AudioError(f"log_mel: span {j} = samples [{begin}, {end}) is empty, reversed or outside clip "
                             f"{clip} of {clip_len} samples")
        starts.append(clip_start[clip] + begin)
        lens.append(end - begin)
    return np.asarray(starts, dtype=np.int64), np.asarray(lens, dtype=np.int64)
