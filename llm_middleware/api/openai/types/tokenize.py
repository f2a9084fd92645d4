"""Bodies of ``POST /tokenize`` and ``POST /detokenize`` (vLLM's)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from ...core.limits import MAX_MESSAGES, MAX_TOOLS
from .chat import ChatMessage, ToolDefinition


class TokenizeRequest(Struct, kw_only=True):
    """Body of ``POST /tokenize``: either ``prompt`` or chat ``messages`` (rendered by the template,
    with the assistant's turn opened)."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Meta(max_length=MAX_MESSAGES)] | None = None
    tools: Annotated[list[ToolDefinition], Meta(max_length=MAX_TOOLS)] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class DetokenizeRequest(Struct, kw_only=True):
    """Body of ``POST /detokenize``."""

    tokens: list[int]
    model: str | None = None


class TokenizeResponse(Struct, kw_only=True):
    """Response of ``POST /tokenize``."""

    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(Struct, kw_only=True):
    """Response of ``POST /detokenize``."""

    prompt: str


tokenize_request_decoder = msgspec.json.Decoder(TokenizeRequest)
detokenize_request_decoder = msgspec.json.Decoder(DetokenizeRequest)
