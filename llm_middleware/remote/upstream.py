"""The upstream servers of a remote engine, and which one takes the next request.

Every attribute here is read and written on the remote engine's own event loop only; other
threads read snapshots (:class:`UpstreamStatus`) or single attributes, never a half-made change.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("llm_middleware")

#: Routes served at the server's root rather than under ``/v1`` (vLLM's and our own layout).
ROOT_ROUTES = frozenset({"tokenize", "detokenize"})


def normalize_url(url: str) -> str:
    """``url`` without a trailing slash; raise ValueError unless it is an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"upstream URLs must be absolute http(s) URLs such as http://gpu-1:8000/v1, got {url!r}")
    return url.rstrip("/")


@dataclass(eq=False)
class Upstream:
    """One OpenAI-compatible server, by its base URL (``http://gpu-1:8000/v1``), and its live state."""

    url: str
    healthy: bool = False
    outstanding: int = 0
    requests: int = 0
    error: str | None = "not checked yet"
    #: Upstream model id -> its card from ``GET /models``, as of the last passing health check.
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def endpoint(self, route: str) -> str:
        """The URL of ``route`` (``chat/completions``, ``tokenize``, ...) on this server."""
        if route in ROOT_ROUTES:
            root = self.url.removesuffix("/v1")
            return f"{root}/{route}"
        return f"{self.url}/{route}"


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    """A snapshot of one upstream, as :meth:`RemoteEngine.upstreams` reports it."""

    url: str
    healthy: bool
    outstanding: int
    requests: int
    error: str | None
    models: list[str]


class UpstreamPool:
    """Every upstream, in the order given, and the choice of one for each attempt at a request."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.upstreams = [Upstream(url) for url in urls]
        self._turn = 0

    def pick(self, model: str, tried: Collection[Upstream]) -> Upstream | None:
        """The upstream for the next attempt at a request for ``model`` (an upstream model id).

        Among the untried upstreams in rotation that serve ``model``, the one with the fewest
        outstanding requests; ties go round the list, so sequential requests alternate.  When
        none is in rotation, the ones out of it are tried anyway: a fleet that restarted at once
        then serves again before the next health check notices.  None when every one was tried.
        """
        serving = [u for u in self.upstreams if model in u.models and u not in tried]
        candidates = [u for u in serving if u.healthy] or serving
        if not candidates:
            return None
        least = min(u.outstanding for u in candidates)
        tied = [u for u in candidates if u.outstanding == least]
        self._turn += 1
        return tied[self._turn % len(tied)]

    def mark_down(self, upstream: Upstream, reason: str) -> None:
        """Take ``upstream`` out of rotation until a health check passes."""
        if upstream.healthy:
            logger.warning("upstream %s taken out of rotation: %s", upstream.url, reason)
        upstream.healthy = False
        upstream.error = reason

    def mark_up(self, upstream: Upstream, models: dict[str, dict[str, Any]]) -> None:
        """Put ``upstream`` (back) in rotation, serving ``models``."""
        if not upstream.healthy:
            logger.info("upstream %s in rotation, serving %s", upstream.url, ", ".join(models) or "no model")
        upstream.models = models
        upstream.healthy = True
        upstream.error = None

    def statuses(self) -> list[UpstreamStatus]:
        """A snapshot of every upstream."""
        return [
            UpstreamStatus(u.url, u.healthy, u.outstanding, u.requests, u.error, list(u.models)) for u in self.upstreams
        ]
