"""Answering requests under the base path: engine start, body limit, CORS, the API, both protocols."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope

from ..api.app import API
from ..api.http import Request, Response
from . import asgi, wsgi
from .body import BodyTooLargeError, body_too_large_response
from .cors import CORSPolicy
from .loop_thread import LoopThread

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..engine.engine import Engine


def resolve_engine(
    engine: Engine | None, model: str | os.PathLike[str] | None, options: dict[str, Any]
) -> tuple[Engine, bool]:
    """The engine to serve and whether we created it (and so must shut it down).

    Exactly one of ``engine`` and ``model`` is required; engine options only apply to a
    model we load ourselves.
    """
    if engine is not None:
        if model is not None:
            raise TypeError("pass either engine= or model=, not both (the engine already has its models)")
        if options:
            raise TypeError(
                f"engine options {sorted(options)} only apply with model=; configure the engine you pass instead"
            )
        return engine, False
    if model is None:
        raise TypeError("pass model= (a hub id or a local directory) or engine= (an Engine you built)")
    from ..engine.engine import Engine  # torch is imported only when a model is served

    return Engine(model, **options), True


class APIEndpoint:
    """Serves the API for requests already known to be under ``base_path``, over ASGI or WSGI.

    It starts the engine on first use (once per process) and shuts it down only if it owns it.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        owns_engine: bool,
        base_path: str,
        allowed_origins: list[str] | None,
        max_body_size: int,
        include_docs: bool,
    ) -> None:
        self.engine = engine
        self.owns_engine = owns_engine
        self.base_path = base_path
        self.max_body_size = max_body_size
        self._api = API(engine, base_path=base_path, include_docs=include_docs)
        self._cors = CORSPolicy(allowed_origins) if allowed_origins is not None else None
        self._loop = LoopThread()
        self._start_lock = threading.Lock()
        self._started_in: int | None = None

    def start_engine(self) -> None:
        """Start the engine once per process; returns at once (the model loads in the background)."""
        if self._started_in == os.getpid():
            return
        with self._start_lock:
            if self._started_in != os.getpid():
                self.engine.start()
                self._started_in = os.getpid()

    def shutdown_engine(self) -> None:
        """Shut the engine down if this endpoint created it; an engine passed in is left to its owner."""
        if self.owns_engine:
            self.engine.shutdown()

    def close(self) -> None:
        """Shut down an owned engine and stop the WSGI event loop thread."""
        self.shutdown_engine()
        self._loop.close()

    async def respond(self, request: Request) -> Response:
        """The response to ``request``: a CORS preflight answer or the API's, with CORS headers."""
        if self._cors is None:
            return await self._api.handle(request)
        if self._cors.is_preflight(request.method, request.headers):
            return self._cors.preflight(request.headers)
        return self._cors.apply(request.headers, await self._api.handle(request))

    def _too_large(self, headers: dict[str, str]) -> Response:
        response = body_too_large_response(self.max_body_size)
        return response if self._cors is None else self._cors.apply(headers, response)

    async def serve_asgi(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable, path: str
    ) -> None:
        """Answer an ASGI HTTP request; ``path`` is relative to the base path, ``root_path`` is the server's."""
        self.start_engine()
        headers = asgi.scope_headers(scope)
        try:
            body = await asgi.read_body(receive, headers, self.max_body_size)
        except asgi.ClientDisconnectedError:
            return
        except BodyTooLargeError:
            await asgi.send_response(send, self._too_large(headers))
            return
        request = asgi.build_request(scope, path, scope.get("root_path", "") + self.base_path, headers, body)

        async def answer() -> None:
            await asgi.send_response(send, await self.respond(request))

        await asgi.run_until_disconnect(receive, answer())

    def serve_wsgi(self, environ: WSGIEnvironment, start_response: StartResponse, path: str) -> Any:
        """Answer a WSGI request; ``path`` is relative to the base path, ``SCRIPT_NAME`` is the server's."""
        self.start_engine()
        headers = wsgi.environ_headers(environ)
        try:
            body = wsgi.read_body(environ, headers, self.max_body_size)
        except BodyTooLargeError:
            response = self._too_large(headers)
        else:
            root_path = wsgi.decode_wsgi_str(environ.get("SCRIPT_NAME", "")) + self.base_path
            request = wsgi.build_request(environ, path, root_path, headers, body)
            response = self._loop.run(self.respond(request))
        return wsgi.serve_response(response, start_response, self._loop)
