"""A server with two models that reason (``thinking_engine``): ``thinker`` (a template that opens the
reasoning, from ``$LLM_THINKING_MODEL``) and ``qwen3`` (Qwen3's original template, from ``$LLM_MODEL``)."""

from __future__ import annotations

import os
from typing import Any

from thinking_engine import ThinkingEngine

from llm_middleware.middleware import LLMMiddleware


async def _home(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"home"})


engine = ThinkingEngine(os.environ["LLM_THINKING_MODEL"], name="thinker", seed=0)
engine.add_model(os.environ["LLM_MODEL"], name="qwen3")
app = LLMMiddleware(_home, base_path="/ai", engine=engine)
