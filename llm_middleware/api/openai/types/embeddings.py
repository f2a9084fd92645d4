"""Bodies of ``POST /v1/embeddings``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from ...core.limits import MAX_EMBEDDING_INPUTS


class EmbeddingRequest(Struct, kw_only=True):
    """Body of ``POST /v1/embeddings``."""

    input: str | Annotated[list[Any], Meta(max_length=MAX_EMBEDDING_INPUTS)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class EmbeddingData(Struct, kw_only=True):
    """One embedding vector; a base64 string of little-endian float32 with ``encoding_format=base64``."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(Struct, kw_only=True):
    """Token counts of an embeddings request."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct, kw_only=True):
    """Response of ``POST /v1/embeddings``."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


embedding_request_decoder = msgspec.json.Decoder(EmbeddingRequest)
