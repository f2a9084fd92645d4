"""A generative model's tokenizer as the engine uses it: prompts in, checked against the context; tokens out."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from ...errors import ContextLengthExceededError, InvalidRequestError
from .chat_template import check_template_kwargs, render_chat, reserved_names
from .detokenizer import TokenDecoder
from .reasoning import Begins, ReasoningFormat, are_added_tokens, output_begins, reasoning_markers
from .token_bytes import TokenBytes

# What a template is asked to render to learn its generation prompt: one user turn, without markers.
_PROBE = [{"role": "user", "content": "."}]


class TextCodec:
    """Encodes prompts and conversations for a model of ``max_model_len`` tokens; decodes single tokens."""

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        # len() of a large tokenizer rebuilds its vocabulary (milliseconds): once, not per request.
        self.vocab_size = len(tokenizer)
        # No token covers more characters of a text than its longest vocabulary entry has.
        self.max_token_chars = max(map(len, tokenizer.get_vocab()), default=1) or 1
        self.token_bytes = TokenBytes(tokenizer)
        self.token_decoder = TokenDecoder(tokenizer)
        self.reasoning_markers = reasoning_markers(tokenizer)
        self._marker_tokens = self.reasoning_markers is not None and are_added_tokens(tokenizer, *self.reasoning_markers)
        # One probe per distinct set of template variables (requests mostly send none or enable_thinking).
        self._begins = lru_cache(maxsize=64)(self._probe_begins)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt; one too long for the context is refused, the longest ones before tokenizing
        (tokenizing megabytes takes seconds)."""
        if len(text) > self.max_model_len * self.max_token_chars:
            raise ContextLengthExceededError(
                f"this model's maximum context length is {self.max_model_len} tokens, but the prompt has "
                f"{len(text)} characters, more than that many tokens can hold; shorten the prompt or the conversation",
                param="messages",
            )
        return self.encode(text)

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """A text prompt's token ids, or token ids checked against the vocabulary."""
        if isinstance(prompt, str):
            return self.encode_prompt(prompt)
        vocab = self.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in prompt):
            raise InvalidRequestError(f"prompt token ids must be integers in 0..{vocab - 1}", param="prompt")
        return list(prompt)

    def chat_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 template_kwargs: dict[str, Any] | None) -> list[int]:
        """The token ids of ``messages`` (and ``tools``) rendered by the chat template, ready for the reply."""
        return self.encode_prompt(render_chat(self.tokenizer, messages, tools, template_kwargs))

    def piece(self, token: int) -> str:
        """One token's text as logprobs show it (part of a character, for some tokens)."""
        return self.tokenizer.decode([token], clean_up_tokenization_spaces=False)

    def reasoning_format(self, template_kwargs: dict[str, Any] | None) -> ReasoningFormat | None:
        """The model's reasoning markers and where its output begins when the template renders with
        ``template_kwargs``; None for a model without reasoning markers."""
        if self.reasoning_markers is None:
            return None
        variables = check_template_kwargs(template_kwargs, reserved_names(self.tokenizer))
        start, end = self.reasoning_markers
        begins = self._begins(json.dumps(variables, sort_keys=True))
        return ReasoningFormat(start, end, begins, self._marker_tokens)

    def _probe_begins(self, variables: str) -> Begins:
        assert self.reasoning_markers is not None
        try:
            prompt = render_chat(self.tokenizer, _PROBE, None, json.loads(variables))
        except InvalidRequestError:  # a template that refuses a lone user turn: the output tells
            return "either"
        return output_begins(prompt, *self.reasoning_markers)
