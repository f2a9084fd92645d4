"""An MCP server for the tests: ``python tests/mcp_tools_server.py stdio`` or ``... http PORT`` (streamable HTTP).

Its tool ``count_letters`` counts a letter in a word; ``mcp_fails`` always fails.
"""

from __future__ import annotations

import sys

from mcp.server import MCPServer

server = MCPServer("test-tools")


@server.tool()
def count_letters(word: str, letter: str) -> str:
    """How many times ``letter`` occurs in ``word``."""
    return f"{word.count(letter)} letters"


@server.tool()
def mcp_fails() -> str:
    """Always fails."""
    raise ValueError("broken on purpose")


if __name__ == "__main__":
    if sys.argv[1] == "http":
        server.run("streamable-http", port=int(sys.argv[2]))
    else:
        server.run("stdio")
