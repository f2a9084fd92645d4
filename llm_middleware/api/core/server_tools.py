"""Whether a request runs through the server's tool loop, and with what: one decision for every protocol."""

from __future__ import annotations

from ...conversation.tool_loop import ToolLoop, uses_server_tools
from ...conversation.turn import Turn
from ...request_info import request_info
from ...tools.toolbox import ToolBox
from .http import Request


async def server_loop(tools: ToolBox | None, turn: Turn, request: Request,
                      requested: int | None = None) -> ToolLoop | None:
    """The loop ``turn`` runs through (the server's MCP tools connected first), with the caller's request for
    the tools that take it and at most ``requested`` rounds; None when the server has no tools for it."""
    if tools is None or not tools:
        return None
    await tools.ready()
    if not uses_server_tools(tools, turn):
        return None
    return ToolLoop.of(tools, request_info(request.method, request.path, request.headers, request.client), requested)
