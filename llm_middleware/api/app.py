"""The API: the route table, built once, and a dispatcher that turns every failure into an error response."""

from __future__ import annotations

import re
import uuid
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

from ..errors import LLMError
from ..store.memory import MemoryResponseStore
from ..store.protocol import ResponseStore
from ..tools.toolbox import ToolBox
from .anthropic.errors import exception_response as anthropic_exception_response
from .anthropic.routes import MESSAGES_PATH, anthropic_routes
from .core.errors import ErrorRenderer
from .core.forwarding import AnswerReader
from .core.http import Request, Response
from .core.routing import Route, Router
from .docs import SwaggerUI, distribution_version, openapi_document, openapi_handler
from .openai.chat import chat_completions
from .openai.completions import completions
from .openai.embeddings import embeddings
from .openai.errors import ErrorBody, exception_response
from .openai.forward import ForwardingEngine, forwarding_routes, read_answer
from .openai.health import health
from .openai.models import MODEL_PREFIX, list_models, retrieve_model
from .openai.tokenize import detokenize, tokenize
from .openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from .openai.types.completions import CompletionRequest, TextCompletion
from .openai.types.embeddings import EmbeddingList, EmbeddingRequest
from .openai.types.server import HealthStatus, ModelCard, ModelList
from .openai.types.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from .playground import playground
from .responses.routes import ResponsesRoutes
from .responses.runs import BackgroundRuns

if TYPE_CHECKING:
    from ..engine.engine import Engine

# Incoming request ids are echoed in a header and in JSON: only visible ASCII, of sane length.
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")


def openai_routes(engine: Engine, tools: ToolBox | None = None) -> list[Route]:
    """OpenAI's routes (and the server's own: tokenize, health) over ``engine``, chat with the server's ``tools``."""
    return [
        Route("POST", "/v1/chat/completions", partial(chat_completions, engine, tools=tools), "Create a chat completion",
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


class API:
    """The API's endpoints over one :class:`~llm_middleware.engine.Engine`.

    ``base_path`` is where the API is mounted; the docs fall back to it for their server URL
    when a request carries no root path.  ``include_docs`` serves ``/openapi.json`` and ``/docs``
    (Swagger UI from the installed ``swagger-ui-py`` package, or from ``docs_cdn`` when given);
    ``include_playground`` serves ``/playground``; ``tools`` are the tools the server runs itself.
    ``response_store`` keeps stored responses (a new in-process store when None); background
    responses run until they end, are cancelled, or :meth:`stop_background` fails them.
    """

    #: How the middleware answers the failures it finds itself (a refused key, a body too large).
    render_error: ErrorRenderer = staticmethod(exception_response)
    #: Paths (and the paths below them) whose failures are answered in another protocol's error shape.
    error_shapes: tuple[tuple[str, ErrorRenderer], ...] = ((MESSAGES_PATH, anthropic_exception_response),)
    #: How the middleware's metrics read the answers of an engine that relays whole requests.
    read_forwarded: AnswerReader = staticmethod(read_answer)

    def __init__(self, engine: Engine, *, base_path: str = "/ai", include_docs: bool = True,
                 docs_cdn: str | None = None, include_playground: bool = False, tools: ToolBox | None = None,
                 response_store: ResponseStore | None = None) -> None:
        self.engine = engine
        self.tools = tools if tools is not None else ToolBox()
        self.base_path = base_path
        self.response_store = response_store if response_store is not None else MemoryResponseStore()
        routes = openai_routes(engine, self.tools)
        if isinstance(engine, ForwardingEngine):  # e.g. RemoteEngine: upstream servers answer OpenAI requests
            # Chat stays here when the server runs tools: the loop runs where the tools are.
            routes = forwarding_routes(routes, engine, keep={"/v1/chat/completions"} if self.tools else set())
        routes += anthropic_routes(engine, self.tools)
        self.background = BackgroundRuns()
        routes += ResponsesRoutes(engine, self.response_store, self.background, self.tools).routes()
        self._operations = list(routes)
        if include_docs:
            routes += [
                Route("GET", "/openapi.json", openapi_handler(self.openapi, base_path), "The OpenAPI document"),
                Route("GET", "/docs", SwaggerUI(docs_cdn), "Interactive API docs"),
            ]
        if include_playground:
            routes.append(Route("GET", "/playground", playground, "A page to try the API from a browser"))
        self._router = Router(routes)

    def error_renderer(self, path: str) -> ErrorRenderer:
        """How failures of a request for ``path`` are answered: in the error shape of the protocol it speaks."""
        for prefix, render in self.error_shapes:
            if path == prefix or path.startswith(prefix + "/"):
                return render
        return self.render_error

    @cached_property
    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document of the API's operations, paths relative to the base path, without ``servers``."""
        return openapi_document(
            self._operations, title="llm_middleware OpenAI-compatible API",
            version=distribution_version("llm_middleware"), error_type=ErrorBody,
        )

    async def stop_background(self) -> None:
        """Fail every background response still running (the server is stopping), and wait until each is stored."""
        await self.background.shutdown()

    def close_background(self) -> None:
        """:meth:`stop_background` from a thread outside the event loops (a WSGI server closing)."""
        self.background.shutdown_sync()

    def route_path(self, path: str) -> str | None:
        """The path of the route serving ``path``, with parameters as placeholders
        (``/v1/models/{model}``); None for an unknown path.  A label of low cardinality for metrics."""
        return self._router.template(path)

    async def handle(self, request: Request) -> Response:
        """Answer ``request``; never raises (every failure becomes an error response)."""
        route: Route | None = None
        render_error = self.error_renderer(request.path)
        try:
            route = self._router.find(request.method, request.path)
        except LLMError as exc:
            response = render_error(exc)
        incoming = request.headers.get("x-request-id")
        if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming):
            request_id = incoming
        else:
            request_id = (route.id_prefix if route is not None else "req-") + uuid.uuid4().hex
        if route is not None:
            try:
                response = await route.handler(request, request_id)
            except Exception as exc:
                response = render_error(exc)
        # OpenAI's clients read the id from x-request-id, Anthropic's from request-id.
        response.headers += [("x-request-id", request_id), ("request-id", request_id)]
        return response
