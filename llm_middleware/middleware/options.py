"""The keyword options that ``LLMMiddleware`` and ``LLMPlugin`` share, checked once."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..tools.mcp import MCPServer
from ..tools.tool import Tool
from ..tools.toolbox import (
    DEFAULT_MAX_TOOL_RESULT_SIZE,
    DEFAULT_MAX_TOOL_ROUNDS,
    DEFAULT_TOOL_TIMEOUT,
    ToolBox,
    ToolPermission,
)
from .paths import normalize_base_path
from .policy.auth import Authorize

if TYPE_CHECKING:
    from ..engine.engine import Engine


@dataclass(frozen=True, slots=True, kw_only=True)
class APIOptions:
    """How the API is served (see :class:`~llm_middleware.LLMMiddleware` for each option).

    ``base_path`` is normalised (``"ai/"`` -> ``"/ai"``) and the numbers are checked at construction.
    """

    base_path: str = "/ai"
    allowed_origins: Iterable[str] | None = None
    max_body_size: int = 10 * 2**20
    include_docs: bool = True
    docs_cdn: str | None = None
    include_playground: bool = False
    api_keys: Iterable[str] | None = None
    authorize: Authorize | None = None
    public_paths: Iterable[str] = ("/health",)
    request_timeout: float | None = 600.0
    drain_timeout: float = 30.0
    tools: Iterable[Tool | Callable[..., Any]] = ()
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS
    tool_timeout: float = DEFAULT_TOOL_TIMEOUT
    tool_dispatch_url: str | None = None
    mcp_servers: Iterable[MCPServer | str | Sequence[str]] = ()
    tool_permission: ToolPermission | None = None
    max_tool_result_size: int = DEFAULT_MAX_TOOL_RESULT_SIZE

    def toolbox(self) -> ToolBox:
        """The server-side tools these options describe (checked here, at construction)."""
        return ToolBox(
            self.tools, max_tool_rounds=self.max_tool_rounds, tool_timeout=self.tool_timeout,
            tool_dispatch_url=self.tool_dispatch_url, mcp_servers=self.mcp_servers,
            tool_permission=self.tool_permission, max_tool_result_size=self.max_tool_result_size,
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_path", normalize_base_path(self.base_path))
        if self.allowed_origins is not None:
            object.__setattr__(self, "allowed_origins", list(self.allowed_origins))
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0 seconds or None, got {self.request_timeout}")


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
