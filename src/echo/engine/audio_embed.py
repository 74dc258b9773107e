"""Spans of 16 kHz waveforms -> audio embeddings: one log-mel call for all spans, one encoder + projector call.

The one place that turns audio into the rows placed at ``<|AUDIO|>`` tokens, shared by the engine (prompt audio and
re-listens, behind its encoder cache) and the trainers (SFT and GRPO recompute the same rows for the same spans),
so training sees exactly the embeddings the engine decoded with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from ..audio import FeatureConfig
from ..audio.features import audio_windows, num_mel_frames
from ..ops.log_mel import log_mel_spans


def feature_config_for(model, model_dir=None) -> FeatureConfig:
    """The one feature config of a checkpoint, used by the engine, SFT and GRPO alike: the one ``echo.load`` read
    from its preprocessor_config.json (kept as ``model.feature_config``), else that file in ``model_dir``, else
    the family's defaults (Qwen2.5-Omni 300 s, Qwen2-Audio 30 s) with the encoder's own number of mel bins
    (Whisper tiny.en's tower takes 80, not Qwen's 128)."""
    kept = getattr(model, "feature_config", None)
    if isinstance(kept, FeatureConfig):
        return kept
    if model_dir is not None and (Path(model_dir) / "preprocessor_config.json").is_file():
        return model.config.spec.feature_config(model_dir)
    return dataclasses.replace(model.config.spec.feature_config(), n_mels=model.config.audio.num_mel_bins)


def span_embeddings(model, features: FeatureConfig, waves: Sequence[torch.Tensor],
                    spans: Sequence[tuple[int, int, int]], grad: bool = False) -> list[torch.Tensor]:
    """Embeddings of ``(wave_index, start_sample, end_sample)`` spans, one ``(num_audio_tokens, hidden)`` tensor
    each. ``grad`` keeps the encoder in the autograd graph (training it); otherwise no_grad."""
    if not spans:
        return []
    # each span as the windows it is heard in (one, unless the family cuts long audio into windows)
    windows = [[(w, a, b) for a, b in audio_windows(s, e, features)] for w, s, e in spans]
    spans = [piece for pieces in windows for piece in pieces]
    used = sorted({w for w, _, _ in spans})
    offset, start = {}, 0
    for w in used:
        offset[w] = start
        start += int(waves[w].numel())
    wave = torch.cat([waves[w] for w in used]) if len(used) > 1 else waves[used[0]]
    starts = torch.tensor([offset[w] + s for w, s, _ in spans])
    lens = torch.tensor([e - s for _, s, e in spans])
    frames = [num_mel_frames(e - s, features) for _, s, e in spans]
    spec = model.config.spec  # the family's feature layout (models/families)
    feats, got = log_mel_spans(wave.contiguous(), starts, lens, **features.mel_args, extra_frames=spec.extra_frames)
    # no_grad, not inference_mode: under FSDP2 the gathered parameters must stay usable by a later backward
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        if spec.packed_features:
            emb = model.encode_audio(feats, frames)
        else:
            padded = feats.new_zeros((len(spans), feats.shape[0], int(got.max())))
            for j, piece in enumerate(torch.split(feats, got.tolist(), dim=1)):
                padded[j, :, : piece.shape[1]] = piece
            emb = model.encode_audio(padded, frames)
    rows = torch.split(emb, [model.num_audio_tokens(f) for f in frames])
    out, i = [], 0
    for pieces in windows:
        out.append(rows[i] if len(pieces) == 1 else torch.cat(rows[i: i + len(pieces)]))
        i += len(pieces)
    return out
