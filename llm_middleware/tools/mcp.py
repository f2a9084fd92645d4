"""Model Context Protocol servers as sources of tools, through the official ``mcp`` SDK.

Each server is held open by a task on a loop thread of the sources' own (the SDK's sessions belong to
the task and loop that opened them, while calls come from whichever loop serves a request).  The task
connects, lists the server's tools, pings it every few seconds, and when the connection fails withdraws
the tools and reconnects with a growing delay; the model is offered only the tools of servers connected
at the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..runtime.loop_thread import LoopThread
from .calls import result_text
from .tool import NAME, ToolError

logger = logging.getLogger("llm_middleware.tools")

_RETRY_FIRST, _RETRY_MAX = 0.5, 30.0
# Seconds a live server has to list its tools.
_CHECK_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class MCPServer:
    """An MCP server: ``url`` (streamable HTTP) or ``command`` (a program and its arguments, spoken to over
    stdio, with ``env`` added to its environment and ``cwd`` its directory); ``name`` labels it in the log."""

    url: str | None = None
    command: Sequence[str] | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.command is None):
            raise ValueError("an MCP server needs exactly one of url= and command=")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"an MCP server's url must be http:// or https://, got {self.url!r}")
        if self.command is not None and (isinstance(self.command, str) or not self.command):
            raise ValueError("an MCP server's command is a non-empty list: the program and its arguments")

    @property
    def label(self) -> str:
        """How the log names the server."""
        return self.name or self.url or " ".join(self.command or ())

    def target(self) -> Any:
        """What ``mcp.Client`` connects to."""
        if self.url is not None:
            return self.url
        from mcp import StdioServerParameters

        command = list(self.command or ())
        return StdioServerParameters(command=command[0], args=command[1:], env=dict(self.env or {}) or None, cwd=self.cwd)


def mcp_server(item: MCPServer | str | Sequence[str]) -> MCPServer:
    """An ``mcp_servers`` entry as an :class:`MCPServer`: a URL string, or a command as a list of strings."""
    if isinstance(item, MCPServer):
        return item
    if isinstance(item, str):
        return MCPServer(url=item)
    return MCPServer(command=list(item))


@dataclass(frozen=True, slots=True)
class MCPTool:
    """A tool one connected MCP server offers."""

    name: str
    description: str
    parameters: dict[str, Any]
    server: MCPConnection = field(repr=False, compare=False)


def _text(result: Any) -> str:
    """A ``CallToolResult`` as text: its text blocks joined, else its structured content as JSON."""
    texts = [block.text for block in result.content if getattr(block, "type", None) == "text"]
    if texts:
        return "\n".join(texts)
    if result.structured_content is not None:
        return result_text(result.structured_content)
    return "\n".join(f"[{getattr(block, 'type', 'content')}]" for block in result.content)


class MCPConnection:
    """One MCP server held open (on the sources' loop thread), its tools while connected."""

    def __init__(self, server: MCPServer, *, check_interval: float) -> None:
        self.server = server
        self.tools: dict[str, MCPTool] = {}
        self._check_interval = check_interval
        self._client: Any = None
        self.tried = asyncio.Event()  # set once the first attempt connected or failed

    async def hold(self) -> None:
        """Connect, keep the connection, and reconnect when it fails, until cancelled."""
        from mcp import Client

        delay = _RETRY_FIRST
        while True:
            try:
                async with Client(self.server.target(), cache=None) as client:
                    self.tools = await self._list(client)
                    self._client = client
                    self.tried.set()
                    delay = _RETRY_FIRST
                    logger.info("MCP server %s connected: %d tools", self.server.label, len(self.tools))
                    while True:  # listing the tools again both checks the connection and follows changes
                        await asyncio.sleep(self._check_interval)
                        self.tools = await asyncio.wait_for(self._list(client), _CHECK_TIMEOUT)
            except Exception as exc:  # whatever ends a connection: the server's, the transport's, a ping's
                logger.warning("MCP server %s unavailable (retrying in %.1f s): %r", self.server.label, delay, exc)
            finally:
                self.tools, self._client = {}, None
                self.tried.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)

    async def _list(self, client: Any) -> dict[str, MCPTool]:
        tools: dict[str, MCPTool] = {}
        cursor = None
        while True:
            page = await client.list_tools(cursor=cursor)
            for item in page.tools:
                if not NAME.match(item.name):
                    logger.warning("MCP server %s: tool %r skipped (not a valid function name)", self.server.label, item.name)
                    continue
                schema = dict(item.input_schema or {"type": "object", "properties": {}})
                tools[item.name] = MCPTool(item.name, item.description or "", schema, self)
            cursor = page.next_cursor
            if not cursor:
                return tools

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Run the tool ``name`` on the server (on the sources' loop); ``ToolError`` when it cannot be had."""
        client = self._client
        if client is None:
            raise ToolError(f"the tool {name} is unavailable right now")
        try:
            result = await client.call_tool(name, arguments)
        except Exception as exc:
            logger.warning("MCP server %s: call to %s failed: %r", self.server.label, name, exc)
            raise ToolError(f"the tool {name} failed") from None
        text = _text(result)
        if result.is_error:
            # An MCP server reports a tool's exception as text, paths and all: logged, never passed on (what the
            # model reads may reach the client).
            logger.warning("MCP server %s: %s reported an error: %s", self.server.label, name, text[:2000])
            raise ToolError(f"the tool {name} failed")
        return text


class MCPSources:
    """Every configured MCP server, held open from :meth:`start` to :meth:`stop`."""

    def __init__(self, servers: Sequence[MCPServer], *, check_interval: float = 5.0) -> None:
        self.connections = [MCPConnection(server, check_interval=check_interval) for server in servers]
        self._loop = LoopThread("llm-mcp")
        self._holds: list[asyncio.Task[None]] = []

    def tools(self) -> dict[str, MCPTool]:
        """The tools of the servers connected now; a name two servers offer is the first one's."""
        merged: dict[str, MCPTool] = {}
        for connection in self.connections:
            for name, tool in connection.tools.items():
                merged.setdefault(name, tool)
        return merged

    def find(self, name: str) -> MCPTool | None:
        """The tool ``name`` of the first connected server that offers it (what :meth:`tools` would hold)."""
        for connection in self.connections:
            if (tool := connection.tools.get(name)) is not None:
                return tool
        return None

    def start(self) -> None:
        """Begin connecting to every server (idempotent; returns once the connecting tasks exist)."""
        if self.connections and not self._holds:
            self._loop.run(self._spawn())

    async def _spawn(self) -> None:
        for connection in self.connections:
            connection.tried = asyncio.Event()  # bound to this loop
            self._holds.append(asyncio.create_task(connection.hold()))

    async def wait_tried(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until every server connected or failed once."""
        if self._holds and not all(connection.tried.is_set() for connection in self.connections):
            with contextlib.suppress(TimeoutError):
                await self._loop.call(asyncio.wait_for(self._all_tried(), timeout))

    async def _all_tried(self) -> None:
        for connection in self.connections:
            await connection.tried.wait()

    async def call(self, tool: MCPTool, arguments: dict[str, Any]) -> str:
        """The result of ``tool`` called with ``arguments``; cancelling the caller cancels the call."""
        return await self._loop.call(tool.server.call(tool.name, arguments))

    def stop(self) -> None:
        """Close every connection (stdio servers end with it) and the loop thread."""
        if self._holds:
            self._loop.run(self._cancel())
            self._holds = []
        self._loop.close()

    async def _cancel(self) -> None:
        for task in self._holds:
            task.cancel()
        await asyncio.gather(*self._holds, return_exceptions=True)
