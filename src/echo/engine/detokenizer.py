"""Incremental detokenizing for streams (``Engine.stream`` and the server): a sample's text as it grows, decoding
only the tokens past the last committed point, and the new text to send at each step."""

from __future__ import annotations

from typing import Sequence

CONTEXT_TOKENS = 4  # decoded again before the new tokens, so merges and leading spaces come out as in a full decode
COMMIT_EVERY = 64  # tokens between commits: the text up to a commit is never decoded again


class IncrementalDetokenizer:
    """One sample's text: ``text(generated)`` equals ``processor.decode(generated, skip_special_tokens=True)`` at
    every step without decoding all of it each time (that would cost O(length) per sample per step); ``emit``
    gives the part of a text not sent yet."""

    def __init__(self, processor):
        self.processor = processor
        self.done, self.committed = 0, ""  # tokens whose text is final, and that text
        self.printed = ""  # the text sent so far

    def text(self, generated: Sequence[int]) -> str:
        decode = self.processor.decode
        ctx = max(0, self.done - CONTEXT_TOKENS)
        head = decode(generated[ctx:self.done], skip_special_tokens=True)
        whole = decode(generated[ctx:], skip_special_tokens=True)
        if not whole.startswith(head):  # a character split across the boundary: decode it all once
            return decode(generated, skip_special_tokens=True)
        text = self.committed + whole[len(head):]
        # commit only at a character boundary (a trailing U+FFFD may be a character still being written)
        if len(generated) - self.done >= COMMIT_EVERY and not whole.endswith("\ufffd"):
            self.done, self.committed = len(generated), text
        return text

    def emit(self, text: str, final: bool = False) -> str:
        """What ``text`` adds to the text sent so far (now counted as sent); "" while it ends in a character still
        being written (unless ``final``) or does not extend what was sent."""
        if (text.endswith("\ufffd") and not final) or not text.startswith(self.printed):
            return ""
        delta, self.printed = text[len(self.printed):], text
        return delta
