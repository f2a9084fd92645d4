"""``POST /v1/embeddings``."""

from __future__ import annotations

import base64
import struct
from typing import TYPE_CHECKING

from ...runtime.cpu_pool import run_cpu
from ...errors import InvalidRequestError
from ..core.decoding import decode_body
from ..core.http import Request, Response
from ..core.responses import json_response
from .types.embeddings import EmbeddingData, EmbeddingList, EmbeddingUsage, embedding_request_decoder

if TYPE_CHECKING:
    from ...engine.engine import Engine


def _inputs(value: str | list[object]) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not value:
        raise InvalidRequestError("'input' must not be empty.", param="input")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidRequestError(
                "'input' must be a string or a list of strings; token-id input is not supported.",
                param=f"input[{i}]",
            )
    return value  # type: ignore[return-value]


def base64_float32(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the vector as little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def embeddings(engine: Engine, request: Request, request_id: str) -> Response:
    """Embed every input, in input order."""
    body = await run_cpu(decode_body, request, embedding_request_decoder)
    inputs = _inputs(body.input)
    model = engine.resolve_model(body.model, task="embed")
    result = await engine.embed(inputs, model=model, dimensions=body.dimensions)
    as_base64 = body.encoding_format == "base64"
    data = [
        EmbeddingData(index=i, embedding=base64_float32(vector) if as_base64 else vector)
        for i, vector in enumerate(result.vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return json_response(EmbeddingList(data=data, model=result.model, usage=usage))
