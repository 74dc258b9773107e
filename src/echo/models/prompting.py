"""Prompt processing: the checkpoint's chat template and tokenizer, with ``<|AUDIO|>`` expanded per audio.

The ids equal those of ``Qwen2_5OmniProcessor`` / ``Qwen2AudioProcessor`` for the same conversation: the template
is rendered the way transformers renders it (sandboxed Jinja, trim/lstrip blocks), the text is tokenized with the
checkpoint's own tokenizer.json, and the i-th ``<|AUDIO|>`` becomes ``num_audio_tokens(num_frames[i])`` copies.
``<|AUDIO|>`` is an added special token, so expanding ids after tokenizing equals tokenizing the expanded text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer

from ..errors import CheckpointError, ConfigError, EchoError
from ..protocol import TimeMarks, audio_run_ids, splice_ids, without_audio_runs
from .audio_encoder import num_audio_tokens

AUDIO, AUDIO_BOS, AUDIO_EOS = "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"


class PromptProcessor:
    """Chat template + tokenizer + the audio special tokens of one checkpoint."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str | None = None,
                 eos_token_ids: Sequence[int] | None = None, audio_tokens: tuple = (AUDIO, AUDIO_BOS, AUDIO_EOS)):
        """``audio_tokens``: the placeholder and the tokens around a spliced run (None: the family has none), as
        the model family names them (``ModelFamily.audio_token`` …)."""
        self.tokenizer, self.chat_template = tokenizer, chat_template
        self.audio_token = audio_tokens[0]
        self.audio_token_id = self._special(audio_tokens[0])
        self.audio_bos_token_id, self.audio_eos_token_id = (None if t is None else self._special(t)
                                                            for t in audio_tokens[1:])
        if eos_token_ids is None:
            eos_token_ids = [i for i in (tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>"))
                             if i is not None]
        self.eos_token_ids = list(eos_token_ids)
        self.num_audio_tokens = num_audio_tokens  # mel frames -> audio tokens; the loader sets the model's own
        self._template = None
        self.time_marks: TimeMarks | None = None  # set from the model's config (AudioLanguageModel.processor)

    def use_time_marks(self, every_s: float, tokens_per_s: float) -> None:
        """Lay every audio run out with time marks every ``every_s`` seconds (0: none)."""
        if not every_s:
            self.time_marks = None
            return
        char_ids = []
        for c in TimeMarks.CHARS:
            ids = self.tokenizer.encode(c, add_special_tokens=False).ids
            if len(ids) != 1:
                raise CheckpointError(f"time marks need {c!r} to be one token; this tokenizer gives {ids}")
            char_ids.append((c, ids[0]))
        self.time_marks = TimeMarks(float(every_s), float(tokens_per_s), tuple(char_ids))

    def _special(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise CheckpointError(f"the tokenizer has no {token} token")
        return token_id

    # ---- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | os.PathLike, family=None) -> "PromptProcessor":
        """Read tokenizer.json, the chat template (chat_template.jinja, chat_template.json or
        tokenizer_config.json) and the EOS ids of generation_config.json from a checkpoint directory; ``family``
        (a ``ModelFamily``) names its audio tokens (default: the Qwen ones)."""
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise CheckpointError(f"{path}: no tokenizer.json")
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        eos = _json(path / "generation_config.json").get("eos_token_id")
        return cls(tokenizer, _chat_template(path), [eos] if isinstance(eos, int) else eos, _audio_tokens(family))

    @classmethod
    def from_transformers(cls, processor, family=None) -> "PromptProcessor":
        """Wrap a transformers processor (or tokenizer) in memory: its fast tokenizer and chat template."""
        tok = getattr(processor, "tokenizer", processor)
        backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise ConfigError(f"{type(tok).__name__} has no fast (tokenizers) backend to wrap")
        template = getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)
        return cls(backend, template if isinstance(template, str) else None, audio_tokens=_audio_tokens(family))

    # ---- text -> ids --------------------------------------------------------------------------------------------

    def apply_chat_template(self, conversation: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render ``conversation`` (transformers' message format) with the checkpoint's template."""
        if self.chat_template is None:
            raise ConfigError("this checkpoint has no chat template; pass prompt text to encode() instead")
        if self._template is None:
            self._template = _compile(self.chat_template)
        return self._template.render(messages=conversation, add_generation_prompt=add_generation_prompt, **kwargs)

    def encode(self, text: str, audio_num_frames: Sequence[int] = ()) -> list[int]:
        """Token ids of ``text`` with its i-th ``<|AUDIO|>`` expanded for an audio of ``audio_num_frames[i]`` mel
        frames (100 per second); the counts of placeholders and audios must match."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        slots = [i for i, t in enumerate(ids) if t == self.audio_token_id]
        if len(slots) != len(audio_num_frames):
            raise EchoError(f"{len(slots)} {self.audio_token} placeholders in the prompt but {len(audio_num_frames)} "
                            "audios")
        out, prev = [], 0
        for slot, frames in zip(slots, audio_num_frames):
            out += ids[prev:slot] + audio_run_ids(self.num_audio_tokens(int(frames)), self.audio_token_id, 0.0,
                                                  self.time_marks)
            prev = slot + 1
        return out + ids[prev:]

    def __call__(self, conversation: list[dict] | str, audio_num_frames: Sequence[int] = (),
                 add_generation_prompt: bool = True) -> list[int]:
        """Ids of a conversation (rendered with the chat template) or of already-rendered prompt text."""
        text = conversation if isinstance(conversation, str) else self.apply_chat_template(
            conversation, add_generation_prompt=add_generation_prompt)
        return self.encode(text, audio_num_frames)

    def splice_ids(self, num_tokens: int, start_s: float = 0.0) -> list[int]:
        """``<|audio_bos|> <|AUDIO|>×num_tokens <|audio_eos|>``: what a re-listen of a span starting at ``start_s``
        seconds inserts after ``</seg>`` (with its time marks when the model has them)."""
        return splice_ids(num_tokens, self.audio_bos_token_id, self.audio_token_id, self.audio_eos_token_id,
                          start_s, self.time_marks)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; ``skip_special_tokens`` also drops what spliced audio runs hold (their time marks)."""
        if skip_special_tokens and self.time_marks is not None:
            ids = without_audio_runs(ids, self.audio_bos_token_id, self.audio_eos_token_id)
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _audio_tokens(family) -> tuple:
    return (AUDIO, AUDIO_BOS, AUDIO_EOS) if family is None else \
        (family.audio_token, family.audio_bos_token, family.audio_eos_token)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e


def _chat_template(path: Path) -> str | None:
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        template = _json(path / name).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def _compile(source: str):
    """Compile like transformers: sandboxed, trim_blocks + lstrip_blocks, loop controls, its tojson and
    raise_exception helpers."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)
