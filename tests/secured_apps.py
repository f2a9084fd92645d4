"""A raw ASGI app wrapped by a middleware that requires credentials, served by the auth tests.

The model comes from ``$LLM_MODEL``, the API key from ``$SECURED_API_KEY``.  ``authorize`` lets
in the host app's logged-in users: requests with the cookie ``session=$SECURED_SESSION``.
"""

from __future__ import annotations

import os
from typing import Any

from llm_middleware.middleware import LLMMiddleware, RequestInfo

SESSION = os.environ["SECURED_SESSION"]


async def home(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"home"})


async def logged_in(info: RequestInfo) -> bool:
    return info.cookies.get("session") == SESSION


secured = LLMMiddleware(
    home, base_path="/ai", model=os.environ["LLM_MODEL"], api_keys=[os.environ["SECURED_API_KEY"]], authorize=logged_in
)
