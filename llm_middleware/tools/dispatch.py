"""Tool calls POSTed to the host's dispatcher (``tool_dispatch_url``), in the body mistral.rs sends.

The request is ``{"name": ..., "arguments": {...}}``; the answer's ``content`` (of a JSON object that
has one), a JSON string, or else the body's text becomes the result.  Failures become a
:class:`~llm_middleware.tools.tool.ToolError` whose message names neither the URL nor the
dispatcher's own error text, since what the model reads may reach the client.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from .calls import result_text
from .tool import ToolError

logger = logging.getLogger("llm_middleware.tools")

# Seconds to open a connection to the dispatcher; the call as a whole has the tool timeout.
_CONNECT_TIMEOUT = 5.0


class Dispatcher:
    """POSTs calls to one URL; an answer longer than ``max_bytes`` is refused unread past the cap."""

    def __init__(self, url: str, *, timeout: float, max_bytes: int) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"tool_dispatch_url must be an http:// or https:// URL, got {url!r}")
        self.url = url
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT))
        self._max_bytes = max_bytes
        # Made once: building one loads the CA bundle, blocking whichever event loop a call runs on.
        self._ssl = httpx.create_ssl_context()

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """The dispatcher's result for one call (``ToolError`` when it cannot be had)."""
        # A client per call: calls come from whichever event loop serves the request, and a pooled
        # client belongs to one loop.
        async with httpx.AsyncClient(timeout=self._timeout, verify=self._ssl, follow_redirects=False) as client:
            try:
                async with client.stream("POST", self.url, json={"name": name, "arguments": arguments}) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self._max_bytes:
                            raise ToolError(f"the result of {name} is larger than {self._max_bytes} bytes")
            except httpx.TimeoutException:
                raise TimeoutError from None
            except httpx.HTTPError as exc:
                logger.warning("tool dispatcher unreachable for %s: %r", name, exc)
                raise ToolError("the tool dispatcher could not be reached") from None
        if not response.is_success:
            logger.warning("tool dispatcher answered HTTP %d for %s", response.status_code, name)
            raise ToolError(f"the tool dispatcher answered HTTP {response.status_code}")
        return _content(bytes(body), response.encoding or "utf-8")


def _content(body: bytes, encoding: str) -> str:
    text = body.decode(encoding, errors="replace")
    try:
        answer = json.loads(text)
    except ValueError:
        return text
    if isinstance(answer, dict) and "content" in answer:
        return result_text(answer["content"])
    return answer if isinstance(answer, str) else text
