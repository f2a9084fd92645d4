"""Incremental detokenization with stop strings that are never emitted.

Decoding one token at a time breaks multi-byte characters (a byte-level BPE may split an
emoji over several tokens) and word-boundary spacing, so each step decodes a short window
of recent tokens and only releases text that ends in a whole character.  Text that could
still turn into a stop string is held back until it cannot.
"""

from __future__ import annotations

from typing import Any

# Tokens of context decoded before the new ones, so tokenizers that drop a leading space
# on the first token of a string (SentencePiece) still produce the right spacing.
_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns one sequence's output token ids into text deltas."""

    __slots__ = ("_decode_ids", "_ids", "_prefix", "_read", "_stops", "_max_stop", "text", "_emitted", "stopped")

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: list[str]) -> None:
        # The Rust tokenizer itself when there is one: transformers' decode wrapper costs
        # several times the decoding, and this runs twice per token per sequence.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._decode_ids = (
            (lambda ids: backend.decode(ids, skip_special_tokens=True))
            if backend is not None
            else (lambda ids: tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
        )
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        self._stops = stop
        self._max_stop = max((len(s) for s in stop), default=0)
        self.text = ""  # all output text so far, stop string excluded
        self._emitted = 0
        self.stopped = False

    def add(self, token_id: int) -> None:
        """Append a token; updates ``text`` (whole characters only) and ``stopped``."""
        self._ids.append(token_id)
        prefix_text = self._decode_ids(self._ids[self._prefix : self._read])
        full = self._decode_ids(self._ids[self._prefix :])
        if len(full) > len(prefix_text) and not full.endswith(_REPLACEMENT):
            new = full[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            start = max(0, len(self.text) - self._max_stop + 1)
            self.text += new
            if self._stops:
                self._check_stop(start)

    def _check_stop(self, start: int) -> None:
        hits = [i for i in (self.text.find(s, start) for s in self._stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def take(self, final: bool) -> str:
        """The text not yet handed out, keeping back a tail that may begin a stop string."""
        end = len(self.text)
        if not final and not self.stopped:
            end -= self._held_back()
        chunk = self.text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return chunk

    def _held_back(self) -> int:
        for n in range(min(self._max_stop - 1, len(self.text) - self._emitted), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0
