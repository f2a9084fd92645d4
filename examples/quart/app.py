"""A Quart app with its own routes and an OpenAI-compatible API under ``/ai``.

Run it with ``hypercorn examples.quart.app:app`` (or ``quart --app examples.quart.app run``).
The middleware wraps ``app.asgi_app``, so Quart's own tooling keeps working.
"""

from __future__ import annotations

from quart import Quart, request

from examples._model import model_path, summary_messages
from llm_middleware.middleware import LLMMiddleware

app = Quart(__name__)
llm = LLMMiddleware(app.asgi_app, base_path="/ai", model=model_path())
app.asgi_app = llm  # type: ignore[method-assign]
engine = llm.engine


@app.get("/")
async def index() -> str:
    """A page of the host app, untouched by the middleware."""
    return (
        "<h1>Quart shop</h1>"
        '<p>The LLM API lives under <a href="/ai/docs">/ai</a>; try <code>POST /summarize</code>.</p>'
    )


@app.post("/summarize")
async def summarize() -> dict[str, str]:
    """Summarize ``{"text": ...}`` with the shared engine, without blocking the event loop."""
    text = ((await request.get_json(silent=True)) or {}).get("text", "")
    completion = await engine.chat(summary_messages(text), max_tokens=48)
    return {"summary": completion.choices[0].text}
