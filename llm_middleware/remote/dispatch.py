"""Sending one request to the fleet: pick an upstream, send, and move on only while it cannot have run."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

from ..errors import EngineNotReadyError, EngineOverloadedError, LLMError
from .client import UpstreamClient
from .errors import UpstreamFailedError, UpstreamFailure, UpstreamTimeoutError, UpstreamUnavailable
from .upstream import Upstream, UpstreamPool

logger = logging.getLogger("llm_middleware")


class Dispatcher:
    """Runs requests on the upstreams serving their model, each upstream tried at most once per request.

    A request moves to the next upstream only when it cannot have run where it was sent (no
    connection, or a 429, 503, 401 or 403 answer).  Any other failure (a timeout, a 5xx, a
    connection closed mid-answer) may come after the upstream did the work, or while it still
    does: replaying it would run it twice, and the fault may be the request's own (a generation
    longer than the timeout), so that request alone fails, with a 502 or 504 that names only its
    id.  Unreachable upstreams leave rotation; for everything else health checks decide.
    """

    def __init__(self, pool: UpstreamPool, client: UpstreamClient, *, retry_after: float) -> None:
        self._pool = pool
        self._client = client
        self._retry_after = retry_after
        #: Requests in flight per upstream model id.
        self.running: Counter[str] = Counter()

    async def request(self, route: str, model: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        """The JSON answer to ``body`` from the first upstream serving ``model`` that takes it."""
        refusals: list[tuple[Upstream, UpstreamUnavailable]] = []
        while True:
            upstream = self._next(model, refusals, request_id)
            with self._in_flight(upstream, model):
                try:
                    return await self._client.post(upstream, route, body, request_id)
                except UpstreamUnavailable as exc:
                    self._refused(upstream, exc, refusals, request_id)
                except UpstreamFailure as exc:
                    raise _failed(upstream, exc, request_id) from exc

    async def stream(
        self, route: str, model: str, body: dict[str, Any], request_id: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The streamed events of ``body``, from the first upstream serving ``model`` that takes it.

        Closing this generator closes the upstream connection, which cancels the request there.
        """
        refusals: list[tuple[Upstream, UpstreamUnavailable]] = []
        while True:
            upstream = self._next(model, refusals, request_id)
            with self._in_flight(upstream, model):
                try:
                    async with aclosing(self._client.stream(upstream, route, body, request_id)) as events:
                        async for event in events:
                            yield event
                    return
                except UpstreamUnavailable as exc:  # raised before the first event only
                    self._refused(upstream, exc, refusals, request_id)
                except UpstreamFailure as exc:
                    raise _failed(upstream, exc, request_id) from exc

    def _next(self, model: str, refusals: list[tuple[Upstream, UpstreamUnavailable]], request_id: str) -> Upstream:
        upstream = self._pool.pick(model, [tried for tried, _ in refusals])
        if upstream is None:
            raise self._exhausted(refusals, request_id)
        return upstream

    def _refused(
        self,
        upstream: Upstream,
        exc: UpstreamUnavailable,
        refusals: list[tuple[Upstream, UpstreamUnavailable]],
        request_id: str,
    ) -> None:
        logger.info("request %s: upstream %s did not take it (%s)", request_id, upstream.url, exc)
        refusals.append((upstream, exc))
        if exc.down:
            self._pool.mark_down(upstream, str(exc))

    def _exhausted(self, refusals: list[tuple[Upstream, UpstreamUnavailable]], request_id: str) -> LLMError:
        reasons = "; ".join(f"{upstream.url}: {exc}" for upstream, exc in refusals) or "none serves its model"
        logger.warning("request %s: no upstream could take it: %s", request_id, reasons)
        if refusals and all(exc.overloaded for _, exc in refusals):
            waits = [exc.retry_after for _, exc in refusals if exc.retry_after is not None]
            return EngineOverloadedError(
                f"Every server of this model is busy; retry later (request {request_id}).",
                retry_after=min(waits) if waits else self._retry_after,
            )
        return EngineNotReadyError(
            f"No server of this model could take this request; retry later (request {request_id}).",
            retry_after=self._retry_after,
        )

    @contextmanager
    def _in_flight(self, upstream: Upstream, model: str) -> Iterator[None]:
        upstream.outstanding += 1
        upstream.requests += 1
        self.running[model] += 1
        try:
            yield
        finally:
            upstream.outstanding -= 1
            self.running[model] -= 1


def _failed(upstream: Upstream, exc: UpstreamFailure, request_id: str) -> UpstreamFailedError:
    """The caller's error for a failure after the request reached ``upstream``; the details go to the log."""
    logger.warning("request %s failed on upstream %s: %s", request_id, upstream.url, exc)
    if exc.timeout:
        return UpstreamTimeoutError(f"The upstream server did not answer in time (request {request_id}).")
    return UpstreamFailedError(
        f"The upstream server failed while answering this request (request {request_id}); "
        "the server's log has the details."
    )
