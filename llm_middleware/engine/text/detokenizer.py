"""Incremental detokenization with stop strings that are never emitted.

Decoding one token at a time breaks multi-byte characters (a byte-level BPE may split an
emoji over several tokens) and word-boundary spacing, so text is released only once it ends
in a whole character, decoded with a few tokens of context before it.  Text that could still
turn into a stop string is held back until it cannot.

Special tokens (end of turn, padding, role headers) leave no text, except the markers of tool
calls and reasoning (``llm_middleware.markers``): tokenizers that register those as special
tokens would otherwise lose them, and with them every tool call the model writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from tokenizers.decoders import DecodeStream

from ...markers import OUTPUT_MARKERS

# Tokens of context decoded before the new ones, so tokenizers that drop a leading space
# on the first token of a string (SentencePiece) still produce the right spacing.
_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"

# A UTF-8 character has at most four bytes: more tokens than this without text can never form
# one, and are released as U+FFFD (as decoding all the tokens at once would show them).
_MAX_HELD_TOKENS = 4


class StepDecoder(Protocol):
    """One sequence's incremental decoder."""

    held: int  # tokens taken but not yet released as text

    def step(self, token_id: int) -> str | None:
        """Take the next token id; return the text it completes, if any."""

    def flush(self) -> str:
        """Release the held tokens' text as it stands (U+FFFD for incomplete characters)."""


def silent_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of ``tokenizer``'s special tokens that leave no text: all of them but the output markers."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(i for i, token in added.items() if getattr(token, "special", False))
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    if convert is not None:
        ids = {i for i in ids if convert(i) not in OUTPUT_MARKERS}
    return frozenset(ids)


class TokenDecoder:
    """Makes the per-sequence step decoders of one tokenizer.

    A Rust-backed tokenizer gets the ``tokenizers`` library's own ``DecodeStream``: one call
    per token, no Python-side windowing.  Other tokenizers decode a sliding window.  Both decode
    special tokens as text and never see the silent ones (``silent_ids``).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self.silent = silent_ids(tokenizer)

    def visible(self, ids: Iterable[int]) -> list[int]:
        """``ids`` without the silent ones."""
        return [i for i in ids if i not in self.silent]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` as a whole: what the step decoders release for them, joined."""
        visible = self.visible(ids)
        if self._backend is not None:
            return self._backend.decode(visible, skip_special_tokens=False)
        return self._tokenizer.decode(visible, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def stream(self, context: list[int]) -> StepDecoder:
        """A step decoder that continues after the token ids ``context``."""
        context = self.visible(context)[-_CONTEXT_TOKENS:]
        if self._backend is None:
            return _WindowDecoder(self._tokenizer, context, self.silent)
        return _RustStreamDecoder(self._backend, context, self.silent)


class _RustStreamDecoder:
    """``DecodeStream``, plus what it needs to release held tokens on demand."""

    __slots__ = ("_backend", "_context", "_pending", "_silent", "_stream", "held")

    def __init__(self, backend: Any, context: list[int], silent: frozenset[int]) -> None:
        self._backend = backend
        self._context = context  # the last tokens already released, for spacing
        self._silent = silent
        self._pending: list[int] = []
        self.held = 0
        self._stream = self._fresh()

    def _fresh(self) -> DecodeStream:
        stream = DecodeStream(skip_special_tokens=False)
        if self._context:
            stream.step(self._backend, self._context)  # the context's own text is not output
        return stream

    def step(self, token_id: int) -> str | None:
        if token_id in self._silent:
            return ""
        self._pending.append(token_id)
        text = self._stream.step(self._backend, token_id)
        if text is None:
            self.held += 1
            return None
        self._context = (self._context + self._pending)[-_CONTEXT_TOKENS:]
        self._pending = []
        self.held = 0
        return text

    def flush(self) -> str:
        if not self._pending:
            return ""
        ids = self._context + self._pending
        decode = self._backend.decode
        text = decode(ids, skip_special_tokens=False)[len(decode(self._context, skip_special_tokens=False)) :]
        self._context = ids[-_CONTEXT_TOKENS:]
        self._pending = []
        self.held = 0
        self._stream = self._fresh()
        return text


class _WindowDecoder:
    """Decodes a short window of recent tokens and releases what the newest ones added."""

    __slots__ = ("_tokenizer", "_ids", "_prefix", "_read", "_silent", "held")

    def __init__(self, tokenizer: Any, context: list[int], silent: frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(context)
        self._prefix = 0
        self._read = len(self._ids)
        self._silent = silent
        self.held = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def step(self, token_id: int) -> str | None:
        if token_id in self._silent:
            return ""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full = self._decode(self._ids[self._prefix :])
        if len(full) <= len(prefix_text) or full.endswith(_REPLACEMENT):
            self.held += 1
            return None  # part of a character: wait for the rest
        return self._release(full, prefix_text)

    def flush(self) -> str:
        if self._read == len(self._ids):
            return ""
        return self._release(self._decode(self._ids[self._prefix :]), self._decode(self._ids[self._prefix : self._read]))

    def _release(self, full: str, prefix_text: str) -> str:
        self._prefix, self._read = self._read, len(self._ids)
        self.held = 0
        return full[len(prefix_text) :]


class IncrementalDetokenizer:
    """Turns one sequence's output token ids into text deltas."""

    __slots__ = ("_decoder", "_stops", "_max_stop", "text", "_emitted", "stopped", "stop")

    def __init__(self, decoder: TokenDecoder, prompt_ids: list[int], stop: list[str]) -> None:
        self._decoder = decoder.stream(prompt_ids)
        self._stops = stop
        self._max_stop = max((len(s) for s in stop), default=0)
        self.text = ""  # all output text so far, stop string excluded
        self._emitted = 0
        self.stopped = False
        self.stop: str | None = None  # the stop string that ended the text

    def add(self, token_id: int) -> None:
        """Append a token; updates ``text`` (whole characters only) and ``stopped``."""
        new = self._decoder.step(token_id)
        if new is None and self._decoder.held > _MAX_HELD_TOKENS:
            new = self._decoder.flush()
        if new:
            self._append(new)

    def _append(self, new: str) -> None:
        start = max(0, len(self.text) - self._max_stop + 1)
        self.text += new
        if self._stops:
            self._check_stop(start)

    def _check_stop(self, start: int) -> None:
        hits = [(i, s) for s in self._stops if (i := self.text.find(s, start)) >= 0]
        if hits:
            at, self.stop = min(hits, key=lambda hit: hit[0])
            self.text = self.text[:at]
            self.stopped = True

    def take(self, final: bool) -> str:
        """The text not yet handed out, keeping back a tail that may begin a stop string."""
        if final and not self.stopped and (tail := self._decoder.flush()):
            self._append(tail)  # the sequence ended inside a character: show what there is
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
