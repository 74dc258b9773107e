"""Test helpers around echo.models.tiny's checkpoints: deterministic clips, Whisper features, transformers'
forward with the audio embeddings it placed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from echo.models import num_audio_tokens
from echo.models.tiny import *  # noqa: F401,F403  (make_checkpoint, SPECIALS, special_ids, ... for the tests)
from echo.models.families import family as get_family
from echo.models.tiny import feature_extractor


def sine_clip(seconds: float, seed: int = 0) -> np.ndarray:
    """A deterministic clip: tones plus noise, float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * 16000))) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t) + 0.05 * rng.standard_normal(t.shape)
    return wave.astype(np.float32)


def train_workdir(tmp_path_factory, name: str, preset: str = "omni-tiny-gqa2") -> Path:
    """A fresh directory with a tiny random checkpoint in ``base/``: where a trainer test writes its task and runs
    (a copy of its own, since training runs record the base directory they started from)."""
    d = tmp_path_factory.mktemp(name)
    make_checkpoint(d / "base", preset)  # noqa: F405  (from echo.models.tiny)
    return d


def write_sft_task(d: Path, questions: list[str], targets: list[str], seed: int) -> Path:
    """A tiny SFT set in the messages-JSONL layout: clip{i}.wav (2.5 s, ``sine_clip(seed + i)``) per target."""
    rows = []
    for i, (question, target) in enumerate(zip(questions, targets)):
        sf.write(d / f"clip{i}.wav", sine_clip(2.5, seed=seed + i), 16000, subtype="FLOAT")
        rows.append({"id": f"r{i}", "messages": [{"role": "user", "content": f"<audio>{question}"},
                                                 {"role": "assistant", "content": target}],
                     "audios": [f"clip{i}.wav"]})
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d / "data.jsonl"


def write_rl_task(d: Path, questions: list[str], seed: int) -> Path:
    """A tiny GRPO set in EAQA JSONL: one 2.5 s clip per question, choices one..four, the answer always "two"."""
    rows = []
    for i, question in enumerate(questions):
        sf.write(d / f"clip{i}.wav", sine_clip(2.5, seed=seed + i), 16000, subtype="FLOAT")
        rows.append({"id": f"q{i}", "audio": f"clip{i}.wav", "question": question,
                     "choices": ["one", "two", "three", "four"], "answer": "two"})
    (d / "rl.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d / "rl.jsonl"


def features_for(family: str, clips: list[np.ndarray]):
    """WhisperFeatureExtractor output padded to the family's max length: (features, num_frames). A family whose
    processor cuts audio into windows (Audio Flamingo 3) gets one features row per window, as that processor
    makes them, and each audio's frames summed over its windows (``hf_forward`` splits them back)."""
    spec = get_family(family)
    window = spec.feature_chunk_s * 16000
    starts = [range(0, min(len(clip), window * spec.feature_windows), window) for clip in clips]
    pieces = [clip[a: a + window] for clip, r in zip(clips, starts) for a in r]
    out = feature_extractor(family)(pieces, sampling_rate=16000, return_attention_mask=True, padding="max_length",
                                    return_tensors="pt")
    frames = out["attention_mask"].sum(-1).split([len(r) for r in starts])
    return out["input_features"], torch.stack([f.sum() for f in frames])


def _window_frames(family: str, num_frames) -> torch.Tensor:
    """Each audio's frames as its windows' (full windows first), the rows ``features_for`` returned."""
    full = get_family(family).feature_config().max_frames
    return torch.tensor([min(full, int(n) - a) for n in num_frames for a in range(0, int(n), full)])


def copy_checkpoint(path: Path, dst: Path, config=None, tensors=None) -> Path:
    """A copy of checkpoint ``path`` at ``dst`` with its config.json dict passed through ``config`` (edited in place,
    or replaced by what it returns) and its tensors dict through ``tensors`` (edited in place): a variant to load."""
    import shutil

    from safetensors.torch import load_file, save_file

    dst = Path(shutil.copytree(path, dst))
    if config is not None:
        raw = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps(config(raw) or raw))
    if tensors is not None:
        t = load_file(dst / "model.safetensors")
        tensors(t)
        save_file(t, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def conversation(n_audios: int, question: str) -> list[dict]:
    content = [{"type": "audio", "audio": f"clip{i}.wav"} for i in range(n_audios)]
    return [{"role": "user", "content": content + [{"type": "text", "text": question}]}]


def hf_forward(hf, ids, mask, feats, num_frames):
    """transformers' logits plus the audio embeddings it placed (captured at the tower/projector output)."""
    captured = []
    inner = hf.model
    family_omni = hasattr(inner, "visual")
    windowed = type(hf).__name__ == "AudioFlamingo3ForConditionalGeneration"  # feats rows are windows
    if windowed:
        num_frames = _window_frames("audioflamingo3", num_frames)
    module = inner.audio_tower if family_omni else inner.multi_modal_projector
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
    feature_mask = (torch.arange(feats.shape[-1]) < num_frames[:, None]).long()
    kwargs = {} if family_omni else {"position_ids": (mask.cumsum(-1) - 1).clamp_min(0)}  # what generate() passes
    kwargs["input_features_mask" if windowed else "feature_attention_mask"] = feature_mask
    try:
        with torch.no_grad():
            logits = hf(input_ids=ids, attention_mask=mask, input_features=feats, **kwargs).logits
    finally:
        handle.remove()
    out = captured[0]
    if family_omni:
        audio = out.last_hidden_state
    else:  # projector output is padded to 750 rows per audio; keep each audio's own tokens
        audio = torch.cat([o[: num_audio_tokens(int(n))] for o, n in zip(out, num_frames)])
    return logits, audio
