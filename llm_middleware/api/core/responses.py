"""JSON responses encoded straight from response Structs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...engine import outputs
from .http import Response
from ..openai.schemas import Usage, encoder

JSON_HEADERS: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)


def json_response(body: Any, *, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A response whose body is ``body`` (a Struct or builtin value) encoded as JSON."""
    return Response(status=status, headers=[*JSON_HEADERS, *headers], body=encoder.encode(body))


def usage_out(usage: outputs.Usage) -> Usage:
    """The engine's token counts as the response's ``usage`` object."""
    return Usage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
    )
