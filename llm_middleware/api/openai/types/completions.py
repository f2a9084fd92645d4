"""Bodies of ``POST /v1/completions``: the request, and the answer (whole, and each streamed chunk)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from ...core.limits import MAX_PROMPT_LIST
from .common import SamplingFields, Usage


class CompletionRequest(SamplingFields, kw_only=True):
    """Body of ``POST /v1/completions``: ``prompt`` is a string, a list of strings, token ids,
    or a list of token-id lists."""

    prompt: str | Annotated[list[Any], Meta(max_length=MAX_PROMPT_LIST)]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class CompletionLogprobs(Struct, kw_only=True):
    """``choices[i].logprobs`` of a text completion (the legacy layout)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(Struct, kw_only=True):
    """One answer of a text completion (or its piece, when streamed)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class TextCompletion(Struct, kw_only=True):
    """Response of ``POST /v1/completions``, and each streamed chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None | UnsetType = UNSET


completion_request_decoder = msgspec.json.Decoder(CompletionRequest)
