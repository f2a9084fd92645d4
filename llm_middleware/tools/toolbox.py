"""The tools a server runs itself, and the running of one round of calls.

Host functions, the tools of connected MCP servers and, with a ``tool_dispatch_url``, the tools a
client sent are run here.  Every call passes ``tool_permission``, runs under ``tool_timeout``, and
ends as text for the model: a result, or an error (raised, timed out, too large, refused) that never
becomes a failure of the request.  Calls of one round run concurrently; cancelling the round cancels
the async ones (synchronous ones finish on their thread and their results are dropped).  Each call is
reported to the observers (metrics) and written as one line on the access log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..request_info import RequestInfo
from .. import access_line
from ..runtime.hooks import call_hook, is_async
from .calls import Outcome, ToolInvocation, ToolResult, result_text
from .dispatch import Dispatcher
from .mcp import MCPServer, MCPSources, mcp_server
from .signature import ArgumentsError
from .tool import Tool, ToolError, as_tool

logger = logging.getLogger("llm_middleware.tools")

#: ``tool_permission(call, info)`` returns (or, when async, resolves to) True to let the call run.
ToolPermission = Callable[[ToolInvocation, RequestInfo | None], bool | Awaitable[bool]]

#: Told of every finished call: ``(result, round, request_id)``.
ToolObserver = Callable[[ToolResult, int, str], None]

DEFAULT_MAX_TOOL_ROUNDS = 8
DEFAULT_TOOL_TIMEOUT = 30.0
DEFAULT_MAX_TOOL_RESULT_SIZE = 64 * 1024
#: The most calls of one round that run; a model steered into writing hundreds gets an error for the rest.
MAX_CALLS_PER_ROUND = 32
#: Seconds a request waits at most for the MCP servers' first connection.
MCP_CONNECT_WAIT = 10.0


class OfferedTool(Protocol):
    """What the model is told of a tool."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PendingCall:
    """A call the model wrote, to be run: its id, the tool's name and the arguments' JSON text."""

    call_id: str
    name: str
    arguments: str


class _Unavailable(Exception):
    """No source runs the tool now (an MCP server went away since the model was offered it)."""


def _arguments_object(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


class ToolBox:
    """The server's tools and the rules they run by (see ``LLMMiddleware``'s tool options)."""

    def __init__(
        self,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        *,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
        tool_timeout: float = DEFAULT_TOOL_TIMEOUT,
        tool_dispatch_url: str | None = None,
        mcp_servers: Iterable[MCPServer | str | Sequence[str]] = (),
        tool_permission: ToolPermission | None = None,
        max_tool_result_size: int = DEFAULT_MAX_TOOL_RESULT_SIZE,
    ) -> None:
        if isinstance(max_tool_rounds, bool) or not isinstance(max_tool_rounds, int) or max_tool_rounds < 0:
            raise ValueError(f"max_tool_rounds must be an integer >= 0, got {max_tool_rounds!r}")
        if not tool_timeout > 0:
            raise ValueError(f"tool_timeout must be > 0 seconds, got {tool_timeout!r}")
        if not max_tool_result_size > 0:
            raise ValueError(f"max_tool_result_size must be > 0 characters, got {max_tool_result_size!r}")
        self.tools: dict[str, Tool] = {}
        for item in tools:
            tool = as_tool(item)
            if tool.name in self.tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self.tools[tool.name] = tool
        self.max_tool_rounds = max_tool_rounds
        self.tool_timeout = float(tool_timeout)
        self.max_tool_result_size = max_tool_result_size
        self.dispatcher = (
            Dispatcher(tool_dispatch_url, timeout=self.tool_timeout, max_bytes=4 * max_tool_result_size)
            if tool_dispatch_url is not None
            else None
        )
        self.mcp = MCPSources([mcp_server(item) for item in mcp_servers])
        self._permission = tool_permission
        self._permission_is_async = tool_permission is not None and is_async(tool_permission)
        self.observers: list[ToolObserver] = []

    def __bool__(self) -> bool:
        return bool(self.tools or self.mcp.connections or self.dispatcher)

    # ---- lifecycle (MCP connections) ------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting to the MCP servers (idempotent; returns at once)."""
        self.mcp.start()

    async def ready(self, timeout: float = MCP_CONNECT_WAIT) -> None:
        """Start if needed and wait (at most ``timeout`` seconds) until every MCP server connected or failed
        once, so that a request right after start-up is offered the tools of servers that are there."""
        self.mcp.start()
        await self.mcp.wait_tried(timeout)

    def stop(self) -> None:
        """Close the MCP connections (a later :meth:`start` opens them again)."""
        self.mcp.stop()

    # ---- what is offered ------------------------------------------------------------------------

    def offered(self) -> list[OfferedTool]:
        """The tools the model is offered now: the host's, then the connected MCP servers' (a name the host
        already uses stays the host's)."""
        offered: dict[str, OfferedTool] = dict(self.tools)
        for name, tool in self.mcp.tools().items():
            offered.setdefault(name, tool)
        return list(offered.values())

    def runs(self, name: str, client_tools: Collection[str]) -> bool:
        """True when the server runs calls to ``name``: a tool of its own, or a client's tool it dispatches."""
        if name in self.tools or self.mcp.find(name) is not None:
            return True
        return self.dispatcher is not None and name in client_tools

    def source(self, name: str) -> str:
        """Where a call to ``name`` runs, as a client may be told: ``app`` (the host's functions), the
        MCP server's ``name`` (``mcp`` when it has none: its URL or command stays private) or
        ``dispatcher``."""
        if name in self.tools:
            return "app"
        mcp_tool = self.mcp.find(name)
        if mcp_tool is not None:
            return mcp_tool.server.server.name or "mcp"
        return "dispatcher"

    def label(self, name: str) -> str:
        """``name`` for metrics when it is a tool the server knows, else ``other`` (names a model or
        client made up must not grow the label set without bound)."""
        return name if name in self.tools or self.mcp.find(name) is not None else "other"

    # ---- running --------------------------------------------------------------------------------

    async def run_round(
        self, calls: Sequence[PendingCall], *, info: RequestInfo | None, round: int, request_id: str
    ) -> list[ToolResult]:
        """Run ``calls`` concurrently; their results in the same order.  Past ``MAX_CALLS_PER_ROUND`` the calls
        are not run: the model reads that it made too many."""
        ran = list(await asyncio.gather(*(self.run(call, info=info, round=round, request_id=request_id)
                                          for call in calls[:MAX_CALLS_PER_ROUND])))
        skipped = [
            ToolResult(call.call_id, call.name,
                       f"Error: {call.name} was not run: at most {MAX_CALLS_PER_ROUND} calls run in one round.",
                       "refused", 0.0)
            for call in calls[MAX_CALLS_PER_ROUND:]
        ]
        for result in skipped:
            self._report(result, round, request_id)
        return ran + skipped

    async def run(self, call: PendingCall, *, info: RequestInfo | None, round: int, request_id: str) -> ToolResult:
        """Run one call and report it; never raises but for cancellation."""
        started = time.perf_counter()
        content, outcome = await self._outcome(call, info, round)
        if len(content) > self.max_tool_result_size:
            if outcome == "ok":
                content, outcome = f"Error: the result of {call.name} is larger than the size limit.", "too_large"
            else:  # a long error message (a ToolError's, an MCP server's) is cut rather than replaced
                content = content[: self.max_tool_result_size]
        result = ToolResult(call.call_id, call.name, content, outcome, time.perf_counter() - started)
        self._report(result, round, request_id)
        return result

    async def _outcome(self, call: PendingCall, info: RequestInfo | None, round: int) -> tuple[str, Outcome]:
        invocation = ToolInvocation(call.name, _arguments_object(call.arguments), call.call_id, round)
        if not await self._permitted(invocation, info):
            return f"Error: calling {call.name} is not permitted.", "refused"
        try:
            value = await asyncio.wait_for(self._execute(call, invocation, info), self.tool_timeout)
            return result_text(value), "ok"
        except TimeoutError:
            return f"Error: {call.name} did not answer within {self.tool_timeout:g} seconds.", "timeout"
        except ArgumentsError as exc:
            return f"Error: invalid arguments for {call.name}: {exc}", "invalid_arguments"
        except _Unavailable:
            return f"Error: there is no tool named {call.name} right now.", "unavailable"
        except ToolError as exc:
            return f"Error: {exc}", "error"
        except Exception:
            logger.exception("tool %s raised", call.name)
            return f"Error: {call.name} failed.", "error"

    async def _execute(self, call: PendingCall, invocation: ToolInvocation, info: RequestInfo | None) -> Any:
        tool = self.tools.get(call.name)
        if tool is not None:
            return await tool.invoke(call.arguments, info)
        mcp_tool = self.mcp.find(call.name)
        if mcp_tool is not None:
            return await self.mcp.call(mcp_tool, invocation.arguments)
        if self.dispatcher is not None:
            return await self.dispatcher.call(call.name, invocation.arguments)
        raise _Unavailable

    async def _permitted(self, call: ToolInvocation, info: RequestInfo | None) -> bool:
        if self._permission is None:
            return True
        try:
            verdict = await call_hook(self._permission, self._permission_is_async, call, info)
        except Exception:
            # A permission check that fails refuses: the call is the host's to allow, not ours.
            logger.exception("tool_permission raised for %s; the call is refused", call.name)
            return False
        if verdict is not True:
            logger.info("tool call refused: tool=%s round=%d", call.name, call.round)
        return verdict is True

    def _report(self, result: ToolResult, round: int, request_id: str) -> None:
        for observer in self.observers:
            observer(result, round, request_id)
        if access_line.enabled():
            access_line.write({"request_id": request_id, "tool": result.name, "round": round,
                               "outcome": result.outcome, "duration_ms": access_line.milliseconds(result.seconds)})
