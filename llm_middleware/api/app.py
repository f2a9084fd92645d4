"""The API: a handler table, built once, and a dispatcher that turns every failure into an OpenAI error."""

from __future__ import annotations

import re
import uuid
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from .openai.chat import chat_completions
from .openai.completions import completions
from .docs import openapi_document, openapi_handler, swagger_ui
from .openai.embeddings import embeddings
from .core.errors import error_response, exception_response
from .openai.forward import ForwardingEngine, forwarding_routes
from .openai.health import health
from .core.http import Request, Response
from .openai.models import MODEL_PREFIX, list_models, retrieve_model
from .core.routing import Route
from .openai.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingList,
    EmbeddingRequest,
    HealthStatus,
    ModelCard,
    ModelList,
    TextCompletion,
    TokenizeRequest,
    TokenizeResponse,
)
from .openai.tokenize import detokenize, tokenize

if TYPE_CHECKING:
    from ..engine.engine import Engine

# Incoming request ids are echoed in a header and in JSON: only visible ASCII, of sane length.
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")


def _package_version() -> str:
    try:
        return version("llm_middleware")
    except PackageNotFoundError:
        return "0"


class API:
    """OpenAI-compatible endpoints over one :class:`~llm_middleware.engine.Engine`.

    ``base_path`` is where the API is mounted; the docs fall back to it for their server URL
    when a request carries no root path.  ``include_docs`` serves ``/openapi.json`` and ``/docs``.
    """

    def __init__(self, engine: Engine, *, base_path: str = "/ai", include_docs: bool = True) -> None:
        self.engine = engine
        self.base_path = base_path
        routes = [
            Route("POST", "/v1/chat/completions", partial(chat_completions, engine), "Create a chat completion",
                  id_prefix="chatcmpl-", request_type=ChatCompletionRequest, response_type=ChatCompletion,
                  stream_type=ChatCompletionChunk),
            Route("POST", "/v1/completions", partial(completions, engine), "Create a text completion",
                  id_prefix="cmpl-", request_type=CompletionRequest, response_type=TextCompletion,
                  stream_type=TextCompletion),
            Route("POST", "/v1/embeddings", partial(embeddings, engine), "Create embeddings",
                  request_type=EmbeddingRequest, response_type=EmbeddingList),
            Route("GET", "/v1/models", partial(list_models, engine), "List models", response_type=ModelList),
            Route("GET", MODEL_PREFIX, partial(retrieve_model, engine), "Retrieve a model", prefix=True,
                  response_type=ModelCard, param_name="model"),
            Route("POST", "/tokenize", partial(tokenize, engine), "Tokenize a prompt or chat messages",
                  request_type=TokenizeRequest, response_type=TokenizeResponse),
            Route("POST", "/detokenize", partial(detokenize, engine), "Turn token ids back into text",
                  request_type=DetokenizeRequest, response_type=DetokenizeResponse),
            Route("GET", "/health", partial(health, engine), "Readiness of the engine", response_type=HealthStatus),
        ]
        if isinstance(engine, ForwardingEngine):  # e.g. RemoteEngine: upstream servers answer OpenAI requests
            routes = forwarding_routes(routes, engine)
        if include_docs:
            document = openapi_document(routes, title="llm_middleware OpenAI-compatible API", version=_package_version())
            routes += [
                Route("GET", "/openapi.json", openapi_handler(document, base_path), "The OpenAPI document"),
                Route("GET", "/docs", swagger_ui, "Interactive API docs"),
            ]
        self._routes: dict[tuple[str, str], Route] = {(r.method, r.path): r for r in routes if not r.prefix}
        self._prefix_routes = [r for r in routes if r.prefix]
        self._methods: dict[str, list[str]] = {}
        for r in routes:
            self._methods.setdefault(r.path, []).append(r.method)

    def _route(self, method: str, path: str) -> Route | Response:
        """The route for ``method path``, or the 404/405 response."""
        route = self._routes.get((method, path))
        if route is not None:
            return route
        methods = self._methods.get(path)
        for candidate in self._prefix_routes:
            if path.startswith(candidate.path):  # with an empty parameter too: the handler says what is missing
                if candidate.method == method:
                    return candidate
                methods = self._methods[candidate.path]
        if methods:
            allowed = ", ".join(methods)
            return error_response(
                405, f"Method {method} is not allowed for {path}; use {allowed}.", code="method_not_allowed",
                headers=[("allow", allowed)],
            )
        return error_response(404, f"Unknown path {path}.", code="not_found")

    def route_path(self, path: str) -> str | None:
        """The path of the route serving ``path``, with parameters as placeholders
        (``/v1/models/{model}``); None for an unknown path.  A label of low cardinality for metrics."""
        if path in self._methods:
            return path
        for candidate in self._prefix_routes:
            if path.startswith(candidate.path):
                return candidate.path + "{" + (candidate.param_name or "id") + "}"
        return None

    async def handle(self, request: Request) -> Response:
        """Answer ``request``; never raises (every failure becomes an OpenAI error response)."""
        incoming = request.headers.get("x-request-id")
        route = self._route(request.method, request.path)
        prefix = route.id_prefix if isinstance(route, Route) else "req-"
        if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming):
            request_id = incoming
        else:
            request_id = prefix + uuid.uuid4().hex
        if isinstance(route, Route):
            try:
                response = await route.handler(request, request_id)
            except Exception as exc:
                response = exception_response(exc)
        else:
            response = route
        response.headers.append(("x-request-id", request_id))
        return response
