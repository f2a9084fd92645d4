"""A Litestar app with its own routes and an OpenAI-compatible API under ``/ai``.

Run it with ``hypercorn examples.litestar.app:app`` (or ``litestar --app examples.litestar.app:app run``).
The plugin mounts the API, ties the engine to the app's lifespan and lists the API's operations
in Litestar's own OpenAPI document (``/schema``).
"""

from __future__ import annotations

from litestar import Litestar, MediaType, get, post

from examples._model import model_path, summary_messages
from llm_middleware.integrations.litestar import LLMPlugin

llm = LLMPlugin(base_path="/ai", model=model_path(), include_in_schema=True)  # the API in /schema too


@get("/", media_type=MediaType.HTML)
async def index() -> str:
    """A page of the host app, untouched by the plugin."""
    return (
        "<h1>Litestar shop</h1>"
        '<p>The LLM API lives under <a href="/ai/docs">/ai</a>; try <code>POST /summarize</code>.</p>'
    )


@post("/summarize")
async def summarize(data: dict[str, str]) -> dict[str, str]:
    """Summarize ``{"text": ...}`` with the shared engine."""
    completion = await llm.engine.chat(summary_messages(data.get("text", "")), max_tokens=48)
    return {"summary": completion.choices[0].text}


app = Litestar(route_handlers=[index, summarize], plugins=[llm])
