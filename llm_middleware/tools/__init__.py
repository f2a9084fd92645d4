"""Tools the server runs itself: the host's functions, a dispatch URL, MCP servers; one round of calls at a time.

``signature`` derives a function's JSON Schema, ``tool`` wraps a function, ``calls`` holds what a call
is and gave, ``dispatch`` and ``mcp`` are the two remote sources, and ``toolbox`` runs a round of calls
under the permission hook, the timeout and the size cap.  The loop that alternates generation and tool
rounds is ``llm_middleware.conversation.tool_loop``.
"""

from .calls import Outcome, ToolInvocation, ToolResult
from .mcp import MCPServer
from .tool import Tool, ToolError, tool
from .toolbox import PendingCall, ToolBox, ToolPermission

__all__ = [
    "MCPServer", "Outcome", "PendingCall", "Tool", "ToolBox", "ToolError", "ToolInvocation", "ToolPermission",
    "ToolResult", "tool",
]
