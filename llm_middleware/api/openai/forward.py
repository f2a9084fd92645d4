"""Routes answered by an engine that forwards OpenAI request bodies (such as ``RemoteEngine``).

An upstream OpenAI-compatible server already validates fields, applies ``response_format`` and
``tool_choice`` and parses tool calls.  Going through deltas and back would lose what deltas
cannot carry, so for an engine with this capability these routes hand it the request body as
sent and relay the answer (whole, or chunk by chunk), rewriting only ``id`` to the request id,
as every answer of this API does; the engine gives the model its public name.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from dataclasses import replace
from functools import partial
from typing import Any, Protocol, runtime_checkable

import msgspec

from ...runtime.cpu_pool import run_cpu
from ...engine.outputs import Usage
from ...errors import InvalidRequestError
from ..core.decoding import decode_body
from ..core.forwarding import ForwardedAnswer
from ..core.http import Request, Response
from ..core.responses import json_response
from ..core.routing import Route
from ..core.sse import EventStream, event, streaming_response
from ..core.streams import first_items
from .streaming import FRAMING

#: Request path -> the route the engine forwards it to (relative to an upstream's ``/v1``, or its root).
FORWARDED_ROUTES = {
    "/v1/chat/completions": "chat/completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
}
_STREAMING_ROUTES = frozenset({"chat/completions", "completions"})

_object_decoder = msgspec.json.Decoder(dict[str, Any])


@runtime_checkable
class ForwardingEngine(Protocol):
    """An engine that answers whole OpenAI requests itself; the API then relays its answers."""

    async def forward(self, route: str, body: dict[str, Any], *, request_id: str) -> dict[str, Any]:
        """The answer to ``body``; raises an ``LLMError`` for a refused or failed request."""
        ...

    def forward_stream(
        self, route: str, body: dict[str, Any], *, request_id: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks answering a ``stream: true`` body; errors before the first chunk come from the first
        ``__anext__``."""
        ...


def forwarding_routes(routes: list[Route], engine: ForwardingEngine, keep: Collection[str] = ()) -> list[Route]:
    """``routes`` with the forwarded paths (but those in ``keep``) answered by ``engine`` instead of the API's
    own handlers."""
    return [
        replace(route, handler=partial(forward, engine, FORWARDED_ROUTES[route.path]))
        if route.path in FORWARDED_ROUTES and route.path not in keep
        else route
        for route in routes
    ]


def _check_fields(body: dict[str, Any]) -> None:
    """The two fields the API itself relies on; the upstream validates the rest."""
    if not isinstance(body.get("model"), str | None):
        raise InvalidRequestError("Invalid value for 'model': expected a string.", param="model")
    if not isinstance(body.get("stream", False), bool | None):
        raise InvalidRequestError("Invalid value for 'stream': expected a boolean.", param="stream")


def _with_id(message: dict[str, Any], request_id: str) -> dict[str, Any]:
    if "id" in message:
        message["id"] = request_id
    return message


async def forward(engine: ForwardingEngine, route: str, request: Request, request_id: str) -> Response:
    """Answer ``request`` through ``engine``: a JSON answer, or the relayed event stream."""
    body = await run_cpu(decode_body, request, _object_decoder)
    _check_fields(body)
    if route in _STREAMING_ROUTES and body.get("stream"):
        stream = engine.forward_stream(route, body, request_id=request_id)
        [first] = await first_items([stream])  # errors before the first chunk are HTTP errors
        relayed = EventStream(stream, lambda chunk: event(_with_id(chunk, request_id)), FRAMING, first=first)
        return streaming_response(relayed)
    return json_response(_with_id(await engine.forward(route, body, request_id=request_id), request_id))


def read_answer(message: dict[str, Any]) -> ForwardedAnswer:
    """What an OpenAI answer or stream chunk says about its model, output and token counts."""
    model = message.get("model")
    return ForwardedAnswer(
        model=model if isinstance(model, str) else None,
        has_output=bool(message.get("choices")),
        usage=Usage.from_json(message.get("usage")),
    )
