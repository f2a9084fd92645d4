"""An MCP server for the tests: ``python tests/mcp_tools_server.py stdio`` or ``... http PORT`` (streamable HTTP).

Its tool ``count_letters`` counts a letter in a word; ``mcp_fails`` always fails.
"""

from __future__ import annotations

import sys
from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

server = MCPServer("test-tools")


@server.tool()
def count_letters(word: Annotated[str, Field(max_length=4)], letter: Annotated[str, Field(max_length=1)]) -> str:
    """How many times ``letter`` occurs in ``word``."""
    return f"{word.count(letter)} letters"


# A random model steered by the schema writes extra keys until told there are none.
server._tool_manager.get_tool("count_letters").parameters["additionalProperties"] = False  # noqa: SLF001


@server.tool()
def mcp_fails() -> str:
    """Always fails."""
    raise ValueError("broken on purpose")


if __name__ == "__main__":
    if sys.argv[1] == "http":
        server.run("streamable-http", port=int(sys.argv[2]))
    else:
        server.run("stdio")
