"""Active health checks: every upstream, every ``interval`` seconds, ``GET {url}/models``."""

from __future__ import annotations

import asyncio
import logging

from .client import UpstreamClient
from .upstream import Upstream, UpstreamPool

_httpx_logger = logging.getLogger("httpx")


class _HideHealthChecks(logging.Filter):
    """Drops httpx's INFO line for each health check (one per upstream every few seconds would
    flood the log); every other request httpx makes is still logged."""

    def __init__(self, urls: set[str]) -> None:
        super().__init__()
        self._urls = urls

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) > 1 and args[0] == "GET" and str(args[1]) in self._urls)


class HealthChecker:
    """Puts upstreams in and out of rotation, and keeps the list of models each one serves.

    A check passes when ``GET {url}/models`` answers an OpenAI model list within the connect
    timeout; passing brings an upstream (back) into rotation, failing takes it out.
    ``discovered`` is set once every upstream has been checked once.
    """

    def __init__(self, pool: UpstreamPool, client: UpstreamClient, interval: float) -> None:
        self._pool = pool
        self._client = client
        self._interval = interval
        self.discovered = asyncio.Event()

    async def run(self) -> None:
        """Check every upstream, then again every ``interval`` seconds, until cancelled."""
        quiet = _HideHealthChecks({f"{u.url}/models" for u in self._pool.upstreams})
        _httpx_logger.addFilter(quiet)
        try:
            while True:
                await asyncio.gather(*(self.check(u) for u in self._pool.upstreams))
                self.discovered.set()
                await asyncio.sleep(self._interval)
        finally:
            _httpx_logger.removeFilter(quiet)

    async def check(self, upstream: Upstream) -> None:
        """Check one upstream now."""
        try:
            models = await self._client.models(upstream)
        except Exception as exc:  # whatever went wrong, the upstream cannot serve now
            self._pool.mark_down(upstream, f"health check failed: {exc}")
        else:
            self._pool.mark_up(upstream, models)
