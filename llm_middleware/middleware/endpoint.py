"""Answering requests under the base path, over ASGI or WSGI.

In order: CORS preflight, authentication, refusal while draining, ``/metrics``, the body limit,
then the API within the request's deadline.  Every request ends in one place
(:meth:`APIEndpoint._end`), which counts it and writes its access log line.
"""

from __future__ import annotations

import asyncio
import os
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope

from ..api.app import API
from ..api.core.http import Request, Response
from ..api.core.routing import MethodNotAllowedError
from . import asgi, wsgi
from ..runtime.loop_thread import LoopThread
from .observe.access_log import log_access
from .observe.exchange import Exchange, ObservedStream, current_exchange
from .observe.metrics import Metrics
from .observe.observed_engine import ObservedEngine
from .options import APIOptions
from ..request_info import request_info
from ..tools.calls import ToolResult
from .policy.auth import Authenticator
from .policy.body_limit import BodyTooLargeError
from .policy.cors import CORSPolicy
from .policy.deadline import Deadline, RequestTimeoutError, respond_within
from .policy.drain import Drain

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..engine.engine import Engine

#: Where the Prometheus metrics are served, relative to the base path.
METRICS_PATH = "/metrics"
# The status logged for a request whose client went away before any response (as nginx logs it).
_CLIENT_GONE = 499


class APIEndpoint:
    """Serves the API for requests already known to be under ``base_path``, over ASGI or WSGI.

    It starts the engine on first use (once per process) and shuts it down only if it owns it.
    """

    def __init__(self, engine: Engine, *, owns_engine: bool, options: APIOptions) -> None:
        self.engine = engine
        self.owns_engine = owns_engine
        self.base_path = options.base_path
        self.max_body_size = options.max_body_size
        self.request_timeout = options.request_timeout
        self.metrics = Metrics(engine)
        self.tools = options.toolbox()
        self.tools.observers.append(self._count_tool_call)
        observed = ObservedEngine(engine, self.metrics, API.read_forwarded)
        self._api = API(
            observed, base_path=self.base_path, include_docs=options.include_docs,  # type: ignore[arg-type]
            docs_cdn=options.docs_cdn, include_playground=options.include_playground, tools=self.tools,
        )
        self._cors = CORSPolicy(options.allowed_origins) if options.allowed_origins is not None else None
        self._auth = Authenticator(options.api_keys, options.authorize, options.public_paths)
        self._drain = Drain(options.drain_timeout)
        self._loop = LoopThread()
        self._start_lock = threading.Lock()
        self._started_in: int | None = None

    def openapi(self) -> dict[str, Any]:
        """The API's OpenAPI document, paths relative to the base path."""
        return self._api.openapi

    # ---- lifecycle ------------------------------------------------------------------------------

    def start_engine(self) -> None:
        """Start the engine on the first request of a process; returns at once (the model loads in
        the background).  An engine shut down later stays down: only :meth:`open` starts it again."""
        if self._started_in == os.getpid():
            return
        with self._start_lock:
            if self._started_in != os.getpid():
                self.engine.start()
                self.tools.start()
                self._started_in = os.getpid()

    def open(self) -> None:
        """Take requests (again, after a drain) and start the engine: the server is starting up."""
        self._drain.reopen()
        with self._start_lock:
            self.engine.start()
            self.tools.start()
            self._started_in = os.getpid()

    async def drain(self) -> None:
        """Refuse new requests (503), wait up to ``drain_timeout`` for those in flight, end the rest."""
        await self._drain.drain()

    def shutdown_engine(self) -> None:
        """Close the MCP connections, and shut the engine down if this endpoint created it (an engine passed
        in is left to its owner)."""
        self.tools.stop()
        if self.owns_engine:
            self.engine.shutdown()

    def _count_tool_call(self, result: ToolResult, round: int, request_id: str) -> None:
        self.metrics.count_tool_call(self.tools.label(result.name), result.outcome, result.seconds)

    async def stop(self) -> None:
        """Drain, then shut down an owned engine: the server is shutting down."""
        await self.drain()
        await asyncio.to_thread(self.shutdown_engine)

    def close(self) -> None:
        """Shut down an owned engine and stop the WSGI event loop thread."""
        self.shutdown_engine()
        self._loop.close()

    # ---- one request, whichever the protocol ----------------------------------------------------

    def _begin(self, method: str, path: str, full_path: str, client: tuple[str, int] | None) -> Exchange:
        route = METRICS_PATH if path == METRICS_PATH else self._api.route_path(path) or "other"
        exchange = Exchange(method=method, path=full_path, route=route, client=client)
        current_exchange.set(exchange)
        return exchange

    async def _admit(
        self, method: str, path: str, headers: dict[str, str], client: tuple[str, int] | None
    ) -> Response | None:
        """The answer to give without reading the body, or None to go on to the API."""
        try:
            if self._cors is not None and self._cors.is_preflight(method, headers):
                return self._cors.preflight(headers)
            await self._auth.check(request_info(method, path, headers, client))
            self._drain.check()
            if path == METRICS_PATH:
                if method != "GET":
                    raise MethodNotAllowedError(method, METRICS_PATH, ["GET"])
                return self.metrics.response()
        except Exception as exc:  # a refusal, or the host app's authorize failed (a logged 500)
            return self._api.error_renderer(path)(exc)
        return None

    async def _respond(self, exchange: Exchange, request: Request) -> Response:
        """The API's answer, within the request's deadline; the request counts as in flight meanwhile."""
        deadline = Deadline(self.request_timeout)
        exchange.deadline = deadline
        self._drain.enter(deadline)
        return await respond_within(deadline, self._api.handle(request), self._api.error_renderer(request.path))

    def _finish(self, exchange: Exchange, headers: dict[str, str], response: Response) -> Response:
        """Note what is being sent, add CORS headers, and watch a stream for its end."""
        exchange.status = response.status
        exchange.request_id = next((v for k, v in response.headers if k.lower() == "x-request-id"), "-")
        if self._cors is not None:
            self._cors.apply(headers, response)
        if response.stream is not None:
            exchange.stream = True
            response.stream = ObservedStream(response.stream, exchange, self._end)
        return response

    def _end(self, exchange: Exchange) -> None:
        """The request is over: count it and log it (once)."""
        if exchange.ended:
            return
        exchange.ended = True
        if exchange.status == 0:
            exchange.status, exchange.outcome = _CLIENT_GONE, "cancelled"
        deadline = exchange.deadline
        if deadline is not None:
            deadline.cancel()
            self._drain.leave(deadline)
            if deadline.error is not None:
                exchange.outcome = "timeout" if isinstance(deadline.error, RequestTimeoutError) else "shutting_down"
        self.metrics.count_request(exchange.route, exchange.status, exchange.model, exchange.duration)
        log_access(exchange)

    def _reading(self, method: str) -> AbstractContextManager[None]:
        """Count a request the engine will be given work by until it submits it (an idle engine waits for it)."""
        intake = getattr(self.engine, "intake", None)  # an engine forwarding to a remote server has none
        return intake.reading() if intake is not None and method == "POST" else nullcontext()

    # ---- ASGI -----------------------------------------------------------------------------------

    async def serve_asgi(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable, path: str
    ) -> None:
        """Answer an ASGI HTTP request; ``path`` is relative to the base path, ``root_path`` is the server's."""
        self.start_engine()
        headers = asgi.scope_headers(scope)
        client = scope.get("client")
        client = (client[0], client[1]) if client else None
        exchange = self._begin(scope["method"], path, scope["path"], client)
        try:
            response = await self._admit(scope["method"], path, headers, client)
            if response is None:
                try:
                    body = await asgi.read_body(receive, headers, self.max_body_size)
                except asgi.ClientDisconnectedError:
                    return
                except BodyTooLargeError as exc:
                    response = self._api.error_renderer(path)(exc)
            if response is not None:
                await asgi.send_response(send, self._finish(exchange, headers, response))
                return
            request = asgi.build_request(scope, path, scope.get("root_path", "") + self.base_path, headers, body)

            async def answer() -> None:
                await asgi.send_response(send, self._finish(exchange, headers, await self._respond(exchange, request)))

            with self._reading(scope["method"]):
                await asgi.run_until_disconnect(receive, answer())
        finally:
            self._end(exchange)

    # ---- WSGI -----------------------------------------------------------------------------------

    def serve_wsgi(self, environ: WSGIEnvironment, start_response: StartResponse, path: str) -> Any:
        """Answer a WSGI request; ``path`` is relative to the base path, ``SCRIPT_NAME`` is the server's."""
        self.start_engine()
        headers = wsgi.environ_headers(environ)
        method = environ["REQUEST_METHOD"]
        root_path = wsgi.decode_wsgi_str(environ.get("SCRIPT_NAME", "")) + self.base_path
        client = wsgi.client_address(environ)
        exchange = self._begin(method, path, root_path + (path if path != "/" else ""), client)
        try:
            response = self._loop.run(self._admit(method, path, headers, client))
            if response is None:
                try:
                    body = wsgi.read_body(environ, headers, self.max_body_size)
                except BodyTooLargeError as exc:
                    response = self._api.error_renderer(path)(exc)
                else:
                    request = wsgi.build_request(environ, path, root_path, headers, body)
                    response = self._loop.run(self._respond(exchange, request))
            response = self._finish(exchange, headers, response)
            result = wsgi.serve_response(response, start_response, self._loop)
        except BaseException:
            self._end(exchange)
            raise
        if response.stream is None:  # a stream ends when the server closes the iterable
            self._end(exchange)
        return result
