"""The raw bytes of each token, as OpenAI's logprobs report them.

Decoding a single token of a multi-byte character gives U+FFFD, which loses the bytes a
client needs to rebuild the text.  Byte-level BPE vocabularies (GPT-2 style) spell each byte
as a printable character; SentencePiece vocabularies spell byte fallbacks as ``<0xAB>`` and
spaces as U+2581.  Anything else falls back to the UTF-8 of the decoded token.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's reversible map from bytes to printable characters, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenBytes:
    """Maps token ids to their bytes for one tokenizer (cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = type(getattr(backend, "decoder", None)).__name__ if backend is not None else ""
        self._byte_level = decoder == "ByteLevel"
        self._cache: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is None:
            cached = self._cache[token_id] = self._compute(token_id)
        return cached

    def _compute(self, token_id: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if token_id in self._tokenizer.all_special_ids:
            return piece.encode("utf-8")
        if self._byte_level:
            alphabet = _byte_level_alphabet()
            if all(ch in alphabet for ch in piece):
                return bytes(alphabet[ch] for ch in piece)
        match = _BYTE_FALLBACK.match(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        if "\u2581" in piece:
            return piece.replace("\u2581", " ").encode("utf-8")
        return self._tokenizer.decode([token_id], clean_up_tokenization_spaces=False).encode("utf-8")
