"""JSON responses encoded straight from response Structs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from .http import Response

#: One encoder for every response body: msgspec encoders are reusable and thread-safe.
encoder = msgspec.json.Encoder()

JSON_HEADERS: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)


def json_response(body: Any, *, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A response whose body is ``body`` (a Struct or builtin value) encoded as JSON."""
    return Response(status=status, headers=[*JSON_HEADERS, *headers], body=encoder.encode(body))
