"""``echo features``: a clip's duration and log-mel feature shape (the front end on its own), optionally saved."""

from __future__ import annotations

import argparse

from ..argtypes import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``features`` on ``sub``."""
    p = sub.add_parser("features", help="print a clip's duration and log-mel feature shape; optionally save them")
    p.add_argument("audio", help="audio file (any format soundfile reads)")
    p.add_argument("--out", help="write the features: .npy for the whole clip, .npz (one array per span) for spans")
    p.add_argument("--span", nargs=2, type=float, action="append", metavar=("START_S", "END_S"),
                   help="featurise this span (seconds) as a re-listen would; repeatable")
    p.add_argument("--config", help="checkpoint directory or preprocessor_config.json to take the feature config from")
    p.add_argument("--chunk-length", type=positive_int, default=300,
                   help="max seconds when no --config (300: Qwen2.5-Omni)")
    p.add_argument("--max-seconds", type=float, default=1200.0, help="refuse longer audio")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "cpu", "torch"])
    p.set_defaults(func=_features)


def _features(args: argparse.Namespace) -> int:
    import numpy as np

    from . import FeatureConfig, load, log_mel
    from .features import seconds_to_sample

    cfg = FeatureConfig.from_pretrained(args.config) if args.config else FeatureConfig(chunk_length=args.chunk_length)
    wave = load(args.audio, max_seconds=args.max_seconds)
    spans = None
    if args.span:
        spans = [(0, seconds_to_sample(a), seconds_to_sample(b)) for a, b in args.span]
    feats = log_mel(wave, spans, config=cfg, backend=args.backend)
    print(f"{args.audio}: {len(wave) / cfg.sampling_rate:.3f} s, {len(wave)} samples at {cfg.sampling_rate} Hz")
    labels = ["whole clip"] if spans is None else [f"span {a:g}-{b:g} s" for a, b in args.span]
    for label, piece in zip(labels, feats.split()):
        print(f"  {label}: features {tuple(piece.shape)} (n_mels, frames)")
    if args.out:
        if spans is None:
            np.save(args.out, feats.features.cpu().numpy())
        else:  # several spans: one .npz with an array per span
            np.savez(args.out, **{f"span{i}": p.cpu().numpy() for i, p in enumerate(feats.split())})
        print(f"  wrote {args.out}")
    return 0
