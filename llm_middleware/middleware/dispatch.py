"""``LLMMiddleware``: the API under a path prefix, everything else to the wrapped app."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from asgiref.typing import ASGIApplication, ASGIReceiveCallable, ASGISendCallable, Scope

from ..store.resolve import ResponseStoreOption
from ..runtime.hooks import is_async
from ..tools.mcp import MCPServer
from ..tools.tool import Tool
from ..tools.toolbox import DEFAULT_MAX_TOOL_RESULT_SIZE, DEFAULT_MAX_TOOL_ROUNDS, DEFAULT_TOOL_TIMEOUT, ToolPermission
from .dual_call import mark_coroutine_function
from .endpoint import APIEndpoint
from .lifespan import run_lifespan
from .options import APIOptions, resolve_engine
from .paths import match_prefix, relative_path
from .policy.auth import Authorize
from .wsgi import decode_wsgi_str

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from ..engine.engine import Engine


class LLMMiddleware:
    """Mount an OpenAI-compatible LLM API under ``base_path`` of a WSGI or ASGI app.

    Requests under ``base_path`` (at a segment boundary: ``/ai`` and ``/ai/...``, never
    ``/aix``) go to the API; every other request, websocket and unknown scope reaches
    ``app`` unchanged.  The object is itself both an ASGI and a WSGI app: ASGI servers see an
    async ``__call__``; WSGI servers call it with ``(environ, start_response)``.

    Args:
        app: The wrapped WSGI or ASGI application.
        base_path: Where the API lives, relative to the app's root (``/ai`` serves ``/ai/v1/...``).
        engine: An existing engine to serve, shared with your own code. The middleware starts it
            but never shuts it down: whoever created it does.
        model: A hub id or a local directory; the middleware then builds the engine with
            ``engine_options`` (for example ``quantize="4bit"``) and shuts it down with the app.
        allowed_origins: Browser origins allowed to call the API (``["*"]`` for any); None sends
            no CORS headers.
        max_body_size: Largest request body in bytes; larger ones get a 413 without being read.
        include_docs: Serve ``{base_path}/docs`` (Swagger UI) and ``{base_path}/openapi.json``.
        docs_cdn: Where the docs page loads Swagger UI from (e.g. ``SWAGGER_UI_CDN``); None serves
            it from the installed ``swagger-ui-py`` package, so the page works offline.
        include_playground: Serve ``{base_path}/playground``, a page to chat with the models from a
            browser (behind the same access rules as every route).
        api_keys: Keys that clients send as ``Authorization: Bearer <key>`` or ``x-api-key``.
        authorize: ``authorize(info)`` (or an async function): a non-empty string naming the
            caller lets the request in as that identity, True lets it in anonymously, anything
            false refuses it; ``info`` has ``method``, ``path`` (relative to ``base_path``),
            ``headers``, ``client`` and ``cookies``.  With ``api_keys`` too, either one is enough.
            With neither, the API is open.
        public_paths: Paths under ``base_path`` that need no credentials (exact matches).
        request_timeout: Seconds after which a request is ended (504, or an error event
            mid-stream) and its engine request cancelled; None for no limit.
        drain_timeout: Seconds that requests in flight get to finish on shutdown, while new
            ones get 503; those still running then end with an error.
        tools: Functions (or :class:`~llm_middleware.Tool` objects) the model may call, run by the
            server: offered on every chat request beside the client's own tools.
        max_tool_rounds: Most rounds of server-side tool calls per request (a request may ask for
            fewer); then one last generation runs without the server's tools.
        tool_timeout: Seconds one tool call may take before the model is told it timed out.
        tool_dispatch_url: Where calls to tools that a client sent (and the server has no function
            for) are POSTed as ``{"name", "arguments"}``; the answer is the result.
        mcp_servers: MCP servers whose tools are offered too: URLs (streamable HTTP), commands (lists,
            spoken to over stdio) or :class:`~llm_middleware.MCPServer` objects.
        tool_permission: ``tool_permission(call, info) -> bool`` (or async) decides each call.
        max_tool_result_size: Most characters of a tool's result; a longer one is an error for the model.
        response_store: Where stored responses live: None for a bounded in-process store, a URL
            (``"sqlite:////var/lib/app/responses.db"``, ``"memory://?max_entries=5000"``), or an
            object implementing :class:`~llm_middleware.store.ResponseStore`.
        **engine_options: Keyword arguments for the engine built from ``model``.
    """

    def __init__(
        self,
        app: ASGIApplication | WSGIApplication,
        *,
        base_path: str = "/ai",
        engine: Engine | None = None,
        model: str | os.PathLike[str] | None = None,
        allowed_origins: Iterable[str] | None = None,
        max_body_size: int = 10 * 2**20,
        include_docs: bool = True,
        docs_cdn: str | None = None,
        include_playground: bool = False,
        api_keys: Iterable[str] | None = None,
        authorize: Authorize | None = None,
        public_paths: Iterable[str] = ("/health",),
        request_timeout: float | None = 600.0,
        drain_timeout: float = 30.0,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
        tool_timeout: float = DEFAULT_TOOL_TIMEOUT,
        tool_dispatch_url: str | None = None,
        mcp_servers: Iterable[MCPServer | str | Sequence[str]] = (),
        tool_permission: ToolPermission | None = None,
        max_tool_result_size: int = DEFAULT_MAX_TOOL_RESULT_SIZE,
        response_store: ResponseStoreOption = None,
        **engine_options: Any,
    ) -> None:
        self.app = app
        self.app_is_asgi = is_async(app)  # an ASGI app is a coroutine function, or its __call__ is
        options = APIOptions(
            base_path=base_path, allowed_origins=allowed_origins, max_body_size=max_body_size,
            include_docs=include_docs, docs_cdn=docs_cdn, include_playground=include_playground,
            api_keys=api_keys, authorize=authorize, public_paths=public_paths,
            request_timeout=request_timeout, drain_timeout=drain_timeout, tools=tools,
            max_tool_rounds=max_tool_rounds, tool_timeout=tool_timeout, tool_dispatch_url=tool_dispatch_url,
            mcp_servers=mcp_servers, tool_permission=tool_permission, max_tool_result_size=max_tool_result_size,
            response_store=response_store,
        )
        engine, owns_engine = resolve_engine(engine, model, engine_options)
        self.endpoint = APIEndpoint(engine, owns_engine=owns_engine, options=options)
        self.base_path = options.base_path
        # Built on the first ASGI pass-through: its thread pool is per process.
        self._wsgi_as_asgi: ASGIApplication | None = None

    @property
    def engine(self) -> Engine:
        """The engine behind the API, for the host app's own views (``engine.chat_sync(...)``)."""
        return self.endpoint.engine

    def close(self) -> None:
        """Shut down the engine if the middleware built it, and stop its WSGI event loop thread.

        ASGI servers do this through lifespan; call it yourself when serving over WSGI and the
        process does not simply exit.
        """
        self.endpoint.close()

    async def drain(self) -> None:
        """Stop taking API requests (503) and wait up to ``drain_timeout`` for those in flight;
        end the ones still running with an error.  Lifespan shutdown calls it; call it yourself
        from a server's shutdown trigger to drain before the server stops listening."""
        await self.endpoint.drain()

    @mark_coroutine_function
    def __call__(self, *args: Any) -> Awaitable[None] | Iterable[bytes]:
        """ASGI ``(scope, receive, send)`` returns a coroutine; WSGI ``(environ, start_response)`` an iterable."""
        if len(args) == 3:
            return self._asgi(*args)
        if len(args) == 2:
            return self._wsgi(*args)
        raise TypeError(
            "LLMMiddleware is called as an ASGI app (scope, receive, send) or a WSGI app "
            f"(environ, start_response), not with {len(args)} arguments"
        )

    async def _asgi(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(
                scope,
                receive,
                send,
                app=self.app if self.app_is_asgi else None,  # type: ignore[arg-type]
                start=self.endpoint.open,
                shutdown=self.endpoint.shutdown_engine,
                drain=self.endpoint.drain,
            )
            return
        if scope["type"] == "http":
            path = match_prefix(relative_path(scope["path"], scope.get("root_path", "")), self.base_path)
            if path is not None:
                await self.endpoint.serve_asgi(scope, receive, send, path)
                return
        await self._pass_through(scope, receive, send)

    async def _pass_through(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if self.app_is_asgi:
            await self.app(scope, receive, send)  # type: ignore[call-arg, arg-type, misc]
            return
        if self._wsgi_as_asgi is None:
            from a2wsgi import WSGIMiddleware

            self._wsgi_as_asgi = WSGIMiddleware(self.app)  # type: ignore[arg-type, assignment]
        await self._wsgi_as_asgi(scope, receive, send)  # type: ignore[misc, arg-type]

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self.app_is_asgi:
            raise TypeError(
                "LLMMiddleware wraps an ASGI app here, so it cannot answer a WSGI server: "
                "serve it with an ASGI server such as `hypercorn module:app`"
            )
        path = match_prefix(decode_wsgi_str(environ.get("PATH_INFO", "") or "/"), self.base_path)
        if path is None:
            return self.app(environ, start_response)  # type: ignore[call-arg, arg-type, return-value]
        return self.endpoint.serve_wsgi(environ, start_response, path)
