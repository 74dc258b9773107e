"""The chat messages / template around Echo's evaluation prompt (``protocol.build_prompt``).

The text is the one the Echo paper evaluates with: the question, the choices written as a Python list, then the
instruction to think step by step, refer to audio segments with timestamps, and answer as
``<think>…</think><answer>…</answer>``. Keeping it verbatim matters: the trained model learned to emit ``<seg>`` tags
and the answer format from exactly this instruction.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..protocol import ECHO_PROMPT, build_prompt


def build_messages(audio: Any, question: str, choices: Sequence[str], template: str = ECHO_PROMPT) -> list[dict]:
    """One user turn with the audio first and the prompt text second (the order Echo's evaluation uses).

    ``audio`` is passed through untouched (a path or a 16 kHz waveform); the chat template renders it as
    ``<|audio_bos|><|AUDIO|><|audio_eos|>``.
    """
    return [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": audio},
                {"type": "text", "text": build_prompt(question, choices, template)},
            ],
        }
    ]


def apply_chat_template(processor_or_tokenizer: Any, messages: list[dict]) -> str:
    """Render ``messages`` with the checkpoint's own chat template, ready for generation (text, not token ids)."""
    return processor_or_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
