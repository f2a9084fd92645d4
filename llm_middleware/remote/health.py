"""Active health checks: every upstream, every ``interval`` seconds, ``GET {url}/models``."""

from __future__ import annotations

import asyncio

from .client import UpstreamClient
from .upstream import Upstream, UpstreamPool


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
        while True:
            await asyncio.gather(*(self.check(u) for u in self._pool.upstreams))
            self.discovered.set()
            await asyncio.sleep(self._interval)

    async def check(self, upstream: Upstream) -> None:
        """Check one upstream now."""
        try:
            models = await self._client.models(upstream)
        except Exception as exc:  # whatever went wrong, the upstream cannot serve now
            self._pool.mark_down(upstream, f"health check failed: {exc}")
        else:
            self._pool.mark_up(upstream, models)
