"""A Flask app with its own views and an OpenAI-compatible API under ``/ai``.

Run it with any of::

    flask --app examples.flask.app run          # Flask's CLI (it finds ``flask_app``)
    hypercorn examples.flask.app:app            # ASGI: streaming with disconnect cancellation
    gunicorn examples.flask.app:app             # WSGI

``app`` is the middleware itself, which answers both ASGI and WSGI servers; Flask's own
tooling (``flask run``, ``flask_app.test_client()``) goes through ``flask_app.wsgi_app``,
which is the same object.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, request, stream_with_context

from examples._model import model_path, summary_messages
from llm_middleware.middleware import LLMMiddleware

flask_app = Flask(__name__)
llm = LLMMiddleware(flask_app.wsgi_app, base_path="/ai", model=model_path())
flask_app.wsgi_app = llm  # type: ignore[method-assign]
app = llm
engine = llm.engine


@flask_app.get("/")
def index() -> str:
    """A page of the host app, untouched by the middleware."""
    return (
        "<h1>Flask shop</h1>"
        '<p>The LLM API lives under <a href="/ai/docs">/ai</a>; try <code>POST /summarize</code>.</p>'
    )


@flask_app.post("/summarize")
def summarize() -> dict[str, str]:
    """Summarize ``{"text": ...}`` with the shared engine, from a plain sync view."""
    text = (request.get_json(silent=True) or {}).get("text", "")
    completion = engine.chat_sync(summary_messages(text), max_tokens=48)
    return {"summary": completion.choices[0].text}


@flask_app.get("/countdown")
def countdown() -> Response:
    """A streamed response of the host app, to show that streaming passes through."""

    def lines() -> Iterator[str]:
        for n in range(3, 0, -1):
            yield f"{n}\n"

    return Response(stream_with_context(lines()), mimetype="text/plain")
