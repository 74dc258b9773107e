"""Admission: a request's audio, prompt and sampling parameters checked and turned into what the engine runs.

Everything here raises EchoError (or a subclass) naming the problem, before any step runs, so one bad request
never fails a batch in flight: ``Engine.add_request`` raises it, ``Engine.generate`` puts it in the request's
result.
"""

from __future__ import annotations

import numbers
import os

import numpy as np
import torch

from ..audio import FeatureConfig
from ..audio import load as load_audio
from ..audio.features import min_audio_samples
from ..config import EngineConfig, SamplingParams
from ..errors import AudioError, ConfigError, EchoError
from ..protocol import audio_pieces
from .sequence import AudioRun


def load_clip(audio, features: FeatureConfig, config: EngineConfig) -> tuple[np.ndarray, list[str]]:
    """The request's clip as the model hears it, and what was changed to get there."""
    wave = load_audio(audio, name=os.fspath(audio) if isinstance(audio, (str, os.PathLike)) else None)
    warnings = []
    shortest = min_audio_samples(features)
    if len(wave) < shortest:
        raise AudioError(f"audio of {len(wave)} samples ({len(wave) / 16:.1f} ms) is too short: the encoder "
                         f"needs at least {shortest} samples to give one audio token")
    limit = features.max_audio_samples
    if len(wave) > limit:
        if config.long_audio == "error":
            seconds = f"{len(wave) / features.sampling_rate:.1f} s"
            raise AudioError(f"audio lasts {seconds}, above the feature extractor's maximum of "
                             f"{features.max_audio_s} s (EngineConfig.long_audio='error')")
        warnings.append(truncation_warning(len(wave), features))
        wave = np.ascontiguousarray(wave[:limit])
    return wave, warnings


def truncation_warning(num_samples: int, features: FeatureConfig) -> str:
    """What a clip longer than the feature extractor's maximum gets (the engine's and SFT's words alike)."""
    return (f"audio of {num_samples / features.sampling_rate:.1f} s truncated to its first {features.max_audio_s} s, "
            "the feature extractor's maximum; re-listens are limited to them")


def prompt_ids(model, prompt, num_frames: int, max_model_len: int) -> list[int]:
    """Token ids of a prompt given as question text, a chat conversation or token ids (checked against the audio's
    token count, the vocabulary and ``max_model_len``)."""
    ids = _prompt_ids(model, prompt, num_frames)
    vocab = model.config.decoder.vocab_size
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise EchoError(f"prompt holds {len(bad)} token ids outside the model's vocabulary [0, {vocab}): {bad[:5]}")
    if len(ids) >= max_model_len:
        raise EchoError(f"prompt of {len(ids)} tokens does not fit max_model_len={max_model_len}")
    return ids


def prompt_audio(ids: list[int], cfg, clip) -> AudioRun:
    """The prompt's audio run: its ``<|AUDIO|>`` tokens (one block, as every chat template writes them, with time
    marks between its pieces when ``cfg.time_marks_s``) are the whole clip."""
    audio_id = cfg.audio_token_id
    n = ids.count(audio_id)
    if not n:
        raise EchoError("the prompt holds no <|AUDIO|> token (the request's audio has nowhere to go)")
    first = ids.index(audio_id)
    if not cfg.time_marks_s:
        if ids[first: first + n].count(audio_id) != n:
            raise EchoError(f"the prompt's {n} <|AUDIO|> tokens are not one consecutive block (the request's one "
                            "audio)")
        return AudioRun(first, n, clip, 0, clip.num_samples)
    pieces = audio_pieces(ids, audio_id, first, n)
    last = first + pieces[-1][0] + pieces[-1][2] - pieces[-1][1]
    if {cfg.audio_bos_token_id, cfg.audio_eos_token_id} & set(ids[first:last]):
        raise EchoError(f"the prompt's {n} <|AUDIO|> tokens are not one audio run (the request's one audio)")
    return AudioRun(first, n, clip, 0, clip.num_samples, pieces=pieces)


def _prompt_ids(model, prompt, num_frames: int) -> list[int]:
    if isinstance(prompt, torch.Tensor) and prompt.ndim == 1 and not prompt.is_floating_point() \
            and prompt.dtype != torch.bool:
        prompt = prompt.tolist()
    elif isinstance(prompt, np.ndarray) and prompt.ndim == 1 and np.issubdtype(prompt.dtype, np.integer):
        prompt = prompt.tolist()
    if isinstance(prompt, (list, tuple)) and prompt and all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt):
        ids = [int(t) for t in prompt]
        n = sum(1 for t in ids if t == model.config.audio_token_id)
        need = model.num_audio_tokens(num_frames)  # the family's frames -> tokens
        if n != need:
            raise EchoError(f"prompt ids hold {n} <|AUDIO|> tokens but the audio needs {need}")
        return ids
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        _check_conversation(prompt)
    elif not isinstance(prompt, str):
        raise EchoError(f"prompt must be question text, a chat conversation (a list of message dicts) or a list "
                        f"of token ids; got {_describe(prompt)}")
    proc = model.processor
    if proc is None:
        raise ConfigError("this model has no tokenizer/chat template: pass prompt token ids")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise EchoError("empty prompt")
        prompt = [{"role": "user", "content": [{"type": "audio", "audio": "<audio>"},
                                                {"type": "text", "text": prompt}]}]
    try:
        return proc(prompt, [num_frames])
    except EchoError:
        raise
    except Exception as exc:  # the checkpoint's Jinja template rejecting the conversation
        raise EchoError(f"the chat template cannot render this conversation ({type(exc).__name__}: {exc})") from exc


def sampling_params(params) -> SamplingParams:
    """SamplingParams from None (the defaults), a dict of its fields or SamplingParams (re-validated: a dataclass
    stays mutable after construction)."""
    if params is None:
        return SamplingParams()
    if isinstance(params, dict):
        try:
            return SamplingParams(**params)
        except TypeError as exc:
            raise ConfigError(f"sampling parameters {params!r}: {exc}") from None
    if not isinstance(params, SamplingParams):
        raise ConfigError(f"sampling parameters must be SamplingParams or a dict, got {type(params).__name__}")
    params.validate()
    return params


def request_fields(item, params: SamplingParams | None) -> tuple:
    """(audio, prompt, params) of a Request, a dict or an object with .audio and .prompt."""
    if isinstance(item, dict):
        missing = [k for k in ("audio", "prompt") if k not in item]
        if missing:
            raise EchoError(f"request dict lacks {' and '.join(map(repr, missing))} (it has {sorted(map(str, item))})")
        return item["audio"], item["prompt"], item.get("params") or params
    if not (hasattr(item, "audio") and hasattr(item, "prompt")):
        raise EchoError(f"a request must be a Request, a dict or an object with .audio and .prompt; got "
                        f"{type(item).__name__}")
    return item.audio, item.prompt, getattr(item, "params", None) or params


def _describe(x) -> str:
    text = repr(x)
    return f"{type(x).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _check_conversation(messages: list[dict]) -> None:
    """A chat conversation must hold role/content messages and exactly one audio part (the request's audio)."""
    audio_parts = 0
    for i, m in enumerate(messages):
        if not isinstance(m.get("role"), str):
            raise EchoError(f"message {i} has no role string: {_describe(m)}")
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, (list, tuple)) or not all(isinstance(part, dict) for part in content):
            raise EchoError(f"message {i}: content must be text or a list of parts (dicts), got {_describe(content)}")
        for part in content:
            if part.get("type") == "audio":
                audio_parts += 1
            elif part.get("type") == "text" and not isinstance(part.get("text"), str):
                raise EchoError(f"message {i}: a text part without a text string: {_describe(part)}")
    if audio_parts != 1:
        raise EchoError(f"the conversation has {audio_parts} audio parts; a request carries one audio, so it needs "
                        "exactly one")
