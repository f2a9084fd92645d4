"""What a remote engine holds while it runs, on its loop: its checked settings, the client, the pool, the checks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import EngineNotReadyError
from .client import UpstreamClient
from .dispatch import Dispatcher
from .health import HealthChecker
from .models import ModelNames, ServedModel, Task, catalog, resolve
from .upstream import UpstreamPool, normalize_url


@dataclass(frozen=True, slots=True)
class Settings:
    """A remote engine's options, checked."""

    urls: tuple[str, ...]
    names: ModelNames
    api_key: str | None
    timeout: float
    connect_timeout: float
    health_interval: float
    http2: bool

    @classmethod
    def checked(cls, upstreams: Sequence[str] | str, *, api_key: str | None, model_map: Mapping[str, str] | None,
                timeout: float, connect_timeout: float, health_interval: float, http2: bool) -> Settings:
        """The settings of :class:`RemoteEngine`'s arguments; ``ValueError`` (or ``ImportError``) naming a bad one."""
        if isinstance(upstreams, str):
            upstreams = [upstreams]
        if not upstreams:
            raise ValueError("RemoteEngine needs at least one upstream URL, such as http://gpu-1:8000/v1")
        urls = tuple(normalize_url(url) for url in upstreams)
        if len(set(urls)) < len(urls):
            raise ValueError(f"an upstream URL is listed twice: {', '.join(urls)}")
        seconds = {"timeout": timeout, "connect_timeout": connect_timeout, "health_interval": health_interval}
        for name, value in seconds.items():
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if http2:
            try:
                import h2  # noqa: F401
            except ImportError:
                raise ImportError("http2=True needs the h2 package: pip install 'llm_middleware[h2]'") from None
        return cls(urls=urls, names=ModelNames(model_map), api_key=api_key, timeout=timeout,
                   connect_timeout=connect_timeout, health_interval=health_interval, http2=http2)


class Runtime:
    """What exists while the engine runs (on its loop): the client, the pool, the checks."""

    def __init__(self, settings: Settings) -> None:
        self.pool = UpstreamPool(settings.urls)
        self.names = settings.names
        self.client = UpstreamClient(
            api_key=settings.api_key, timeout=settings.timeout, connect_timeout=settings.connect_timeout,
            http2=settings.http2,
        )
        self.dispatcher = Dispatcher(self.pool, self.client, retry_after=settings.health_interval)
        self.checker = HealthChecker(self.pool, self.client, settings.health_interval)
        self.retry_after = settings.health_interval
        self._checks: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: Settings) -> Runtime:
        """Build the runtime on the engine loop and start the health checks there."""
        runtime = cls(settings)
        runtime._checks = asyncio.ensure_future(runtime.checker.run())
        return runtime

    async def close(self) -> None:
        """Stop the health checks and close every connection."""
        assert self._checks is not None  # set by open()
        self._checks.cancel()
        await asyncio.gather(self._checks, return_exceptions=True)
        await self.client.aclose()

    def models(self) -> list[ServedModel]:
        """Every model served now (or before its upstreams left rotation)."""
        return catalog(self.pool, self.names)

    def down_reasons(self) -> str:
        """Why each upstream out of rotation is out."""
        return "; ".join(f"{u.url}: {u.error}" for u in self.pool.upstreams if not u.healthy)

    def served(self, name: str | None, task: Task | None) -> ServedModel:
        """The model ``name`` refers to; 503 while no upstream serves anything."""
        models = self.models()
        if not models:  # why each upstream is out was logged when it left rotation
            raise EngineNotReadyError(
                "No upstream server serves a model yet; retry later.", retry_after=self.retry_after
            )
        return resolve(models, name, task)

    async def route(self, name: str | None, task: Task | None) -> ServedModel:
        """The model a request names, once every upstream has been asked what it serves."""
        await self.checker.discovered.wait()
        return self.served(name, task)
