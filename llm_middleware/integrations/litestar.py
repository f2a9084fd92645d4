"""``LLMPlugin``: the LLM API as a Litestar plugin, mounted at ``base_path``.

Litestar only runs middleware for routes it matched, so the plugin mounts an ASGI route at
``base_path`` instead of wrapping the app; the engine starts before every other part of the
app's lifespan and shuts down after all of it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from litestar import Litestar, asgi
from litestar.config.app import AppConfig
from litestar.exceptions import NotFoundException
from litestar.openapi.spec import Tag
from litestar.plugins import InitPlugin
from litestar.types import Receive, Scope, Send

from ..middleware.endpoint import APIEndpoint
from ..middleware.options import APIOptions, resolve_engine
from ..middleware.policy.auth import Authorize
from ..tools.mcp import MCPServer
from ..tools.tool import Tool
from ..tools.toolbox import DEFAULT_MAX_TOOL_RESULT_SIZE, DEFAULT_MAX_TOOL_ROUNDS, DEFAULT_TOOL_TIMEOUT, ToolPermission
from .openapi import TAG, TAG_DESCRIPTION, operations_under

if TYPE_CHECKING:
    from ..engine.engine import Engine


class LLMPlugin(InitPlugin):
    """Serve an OpenAI-compatible LLM API under ``base_path`` of a Litestar app.

    ``Litestar(route_handlers=[...], plugins=[LLMPlugin(base_path="/ai", model="Qwen/Qwen3-4B")])``.
    The options are those of :class:`~llm_middleware.LLMMiddleware`; as there, an ``engine``
    passed in is started but never shut down by the plugin.  On shutdown the plugin drains
    (``drain_timeout``) before the app's ``on_shutdown`` hooks and the engine's shutdown.

    ``include_in_schema=True`` lists the API's operations (tagged ``LLM API``, with their request and
    response schemas) in the app's own OpenAPI document, and so on its ``/schema`` pages, from startup on.
    """

    def __init__(
        self,
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
        include_in_schema: bool = False,
        **engine_options: Any,
    ) -> None:
        options = APIOptions(
            base_path=base_path, allowed_origins=allowed_origins, max_body_size=max_body_size,
            include_docs=include_docs, docs_cdn=docs_cdn, include_playground=include_playground,
            api_keys=api_keys, authorize=authorize, public_paths=public_paths,
            request_timeout=request_timeout, drain_timeout=drain_timeout, tools=tools,
            max_tool_rounds=max_tool_rounds, tool_timeout=tool_timeout, tool_dispatch_url=tool_dispatch_url,
            mcp_servers=mcp_servers, tool_permission=tool_permission, max_tool_result_size=max_tool_result_size,
        )
        engine, owns_engine = resolve_engine(engine, model, engine_options)
        self.endpoint = APIEndpoint(engine, owns_engine=owns_engine, options=options)
        self.include_in_schema = include_in_schema

    @property
    def engine(self) -> Engine:
        """The engine behind the API, for the app's own handlers (``await plugin.engine.chat(...)``)."""
        return self.endpoint.engine

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Mount the API route and hook the engine into the app's lifespan."""
        app_config.route_handlers.append(self._route())
        # Lifespan managers are entered before on_startup hooks and left before on_shutdown
        # hooks run: starting in the first manager and stopping in the last hook brackets both.
        # Leaving that first manager (the last one left) drains.
        app_config.lifespan.insert(0, self._engine_started)
        app_config.on_shutdown.append(self._shutdown_engine)
        if self.include_in_schema and app_config.openapi_config is not None:
            app_config.on_startup.append(self._publish_openapi)
        return app_config

    def _publish_openapi(self, app: Litestar) -> None:
        # Litestar builds its document once and serves it from then on: the operations go into that build.
        openapi = app.openapi_schema
        components = openapi.components
        if components.schemas is None:
            components.schemas = {}
        host_schemas = {name: schema.to_schema() for name, schema in components.schemas.items()}
        paths, schemas = operations_under(self.endpoint.openapi(), self.endpoint.base_path, host_schemas)
        components.schemas.update(schemas)  # type: ignore[arg-type]  # plain dicts render as they are
        openapi.paths = {**(openapi.paths or {}), **paths}
        if not any(tag.name == TAG for tag in openapi.tags or ()):
            openapi.tags = [*(openapi.tags or ()), Tag(name=TAG, description=TAG_DESCRIPTION)]

    @asynccontextmanager
    async def _engine_started(self, app: Litestar) -> AsyncIterator[None]:
        self.endpoint.open()
        yield
        await self.endpoint.drain()

    async def _shutdown_engine(self) -> None:
        await asyncio.to_thread(self.endpoint.shutdown_engine)

    def _route(self) -> Any:
        endpoint = self.endpoint

        # is_static keeps Litestar from appending a slash to the path under the mount.
        @asgi(endpoint.base_path, is_mount=True, is_static=True, copy_scope=True, include_in_schema=False)
        async def llm_api(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope["path"]
            if not path.startswith("/"):  # Litestar mounts match by prefix: /aix lands here too
                raise NotFoundException()
            await endpoint.serve_asgi(scope, receive, send, path)  # type: ignore[arg-type]

        return llm_api
