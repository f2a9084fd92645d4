"""Apps the Responses client tests serve: a raw ASGI app and the Flask app, each behind two API keys.

The model comes from ``$LLM_MODEL``.  Each key is its own identity, so a response stored with one
key is not there for the other.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from llm_middleware.middleware import LLMMiddleware

MODEL = os.environ["LLM_MODEL"]
KEYS = ["sk-alice", "sk-bob"]


async def home(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"home"})


flask_app = Flask(__name__)


@flask_app.get("/")
def index() -> str:
    return "flask home"


#: A raw ASGI app wrapped by the middleware.
asgi = LLMMiddleware(home, base_path="/ai", model=MODEL, api_keys=KEYS)
#: Flask wrapped by the middleware (hypercorn serves it as ASGI, the Flask app through a2wsgi).
flask = LLMMiddleware(flask_app, base_path="/ai", model=MODEL, api_keys=KEYS)
