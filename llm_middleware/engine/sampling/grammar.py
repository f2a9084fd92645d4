"""Constrained decoding through llguidance: a grammar becomes a per-step token mask.

A request's ``guided`` option names what the output must follow: ``{"json_schema": {...}}``,
``{"lark": "..."}`` or ``{"regex": "..."}``.  Each sequence gets its own matcher; before
sampling, the matcher's allowed-token bitmask masks the logits, and each sampled token
advances it.  llguidance computes masks in native code, so the per-token cost stays small.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from ...errors import InvalidRequestError

_KINDS = ("json_schema", "lark", "regex")


class GrammarCompiler:
    """Builds matchers for one tokenizer; the llguidance tokenizer is made once, on first use."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> None:
        self._hf_tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_ids = eos_ids
        self._ll_tokenizer: Any = None
        self._lock = threading.Lock()

    def _tokenizer(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self._vocab_size, eos_token=self._eos_ids[0] if self._eos_ids else None
                )
            return self._ll_tokenizer

    def compile(self, spec: dict[str, Any]) -> Any:
        """A fresh ``LLMatcher`` for ``spec``; :class:`InvalidRequestError` if it does not compile."""
        from llguidance import LLMatcher

        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in _KINDS:
            raise InvalidRequestError(f"'guided' must have exactly one of the keys {', '.join(_KINDS)}", param="guided")
        kind, value = next(iter(spec.items()))
        try:
            if kind == "json_schema":
                # Compact JSON: flexible whitespace lets a weak model wander through blank space.
                grammar = LLMatcher.grammar_from_json_schema(value, defaults={"whitespace_flexible": False})
            elif kind == "lark":
                grammar = LLMatcher.grammar_from_lark(value)
            else:
                grammar = LLMatcher.grammar_from_regex(value)
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"invalid {kind}: {exc}", param="guided") from exc
        matcher = LLMatcher(self._tokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(f"invalid {kind}: {matcher.get_error()}", param="guided")
        return matcher


def apply_grammar_masks(logits: torch.Tensor, matchers: list[Any]) -> None:
    """Set to -inf, in place, every token that a row's matcher does not allow (rows without one are left alone)."""
    import llguidance.torch

    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    vocab = logits.shape[1]
    bitmask = llguidance.torch.allocate_token_bitmask(len(rows), vocab)  # [R, ceil(V / 32)] int32
    for j, i in enumerate(rows):
        llguidance.torch.fill_next_token_bitmask(matchers[i], bitmask, j)
    bits = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask[:, :, None] >> bits) & 1).reshape(len(rows), -1)[:, :vocab].bool()  # [R, V]
    index = torch.tensor(rows).to(logits.device, non_blocking=True)  # no wait for the running step
    logits[index] = logits[index].masked_fill(~allowed.to(logits.device, non_blocking=True), float("-inf"))
