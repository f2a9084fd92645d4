"""Sending one request to the fleet: pick an upstream, send, and fail over while nothing reached the caller."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

from ..errors import EngineNotReadyError, EngineOverloadedError, EngineStepError, LLMError
from .client import UpstreamClient
from .errors import UpstreamUnavailable
from .upstream import Upstream, UpstreamPool


class Dispatcher:
    """Runs requests on the upstreams serving their model, each upstream tried at most once per request.

    A failure before the first byte reached the caller (no connection, a timeout, a 5xx, a 429)
    moves the request to the next upstream; once a stream has started it is not replayed, it ends
    with an error.  Failed upstreams leave rotation (overloaded ones stay) until a health check passes.
    """

    def __init__(self, pool: UpstreamPool, client: UpstreamClient, *, retry_after: float) -> None:
        self._pool = pool
        self._client = client
        self._retry_after = retry_after
        #: Requests in flight per upstream model id.
        self.running: Counter[str] = Counter()

    async def request(self, route: str, model: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        """The JSON answer to ``body`` from the first upstream serving ``model`` that takes it."""
        tried: list[Upstream] = []
        failures: list[UpstreamUnavailable] = []
        while True:
            upstream = self._next(model, tried, failures)
            with self._in_flight(upstream, model):
                try:
                    return await self._client.post(upstream, route, body, request_id)
                except UpstreamUnavailable as exc:
                    self._failed(upstream, exc, failures)

    async def stream(
        self, route: str, model: str, body: dict[str, Any], request_id: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The streamed events of ``body``, from the first upstream serving ``model`` that starts them.

        Closing this generator closes the upstream connection, which cancels the request there.
        """
        tried: list[Upstream] = []
        failures: list[UpstreamUnavailable] = []
        while True:
            upstream = self._next(model, tried, failures)
            started = False
            with self._in_flight(upstream, model):
                try:
                    async with aclosing(self._client.stream(upstream, route, body, request_id)) as events:
                        async for event in events:
                            started = True
                            yield event
                    return
                except UpstreamUnavailable as exc:
                    self._failed(upstream, exc, failures)
                    if started:
                        raise EngineStepError(
                            f"the upstream {upstream.url} failed during the stream ({exc}); the answer is incomplete",
                            code="upstream_failed",
                        ) from exc

    def _next(self, model: str, tried: list[Upstream], failures: list[UpstreamUnavailable]) -> Upstream:
        upstream = self._pool.pick(model, tried)
        if upstream is None:
            raise self._exhausted(model, failures)
        tried.append(upstream)
        return upstream

    def _failed(self, upstream: Upstream, exc: UpstreamUnavailable, failures: list[UpstreamUnavailable]) -> None:
        failures.append(exc)
        if not exc.overloaded:
            self._pool.mark_down(upstream, str(exc))

    def _exhausted(self, model: str, failures: list[UpstreamUnavailable]) -> LLMError:
        if failures and all(f.overloaded for f in failures):
            waits = [f.retry_after for f in failures if f.retry_after is not None]
            retry_after = min(waits) if waits else self._retry_after
            return EngineOverloadedError(f"every upstream serving {model!r} is overloaded", retry_after=retry_after)
        reasons = "; ".join(str(f) for f in failures) or "none is in rotation"
        return EngineNotReadyError(
            f"no upstream could take the request for {model!r}: {reasons}", retry_after=self._retry_after
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
