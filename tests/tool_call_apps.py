"""A server whose model calls a tool on its own when offered tools (``calling_engine``); the model comes from ``$LLM_MODEL``."""

from __future__ import annotations

import os
from typing import Any

from calling_engine import CallingEngine

from llm_middleware.middleware import LLMMiddleware


async def _home(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"home"})


app = LLMMiddleware(_home, base_path="/ai", engine=CallingEngine(os.environ["LLM_MODEL"], seed=0))
