"""A generative model's tokenizer as the engine uses it: prompts in, checked against the context; tokens out."""

from __future__ import annotations

from typing import Any

from ...errors import ContextLengthExceededError, InvalidRequestError
from .chat_template import render_chat
from .detokenizer import TokenDecoder
from .token_bytes import TokenBytes


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
