"""Host apps whose own functions are the model's tools, served with ``$LLM_MODEL``: ``flask_app`` (WSGI, served
by hypercorn as ASGI) and ``asgi_app``.  ``$TOOL_DISPATCH_URL`` adds a dispatcher, ``$MCP_COMMAND`` (a JSON
list: stdio) or ``$MCP_URL`` (streamable HTTP) an MCP server.  ``GET /calls`` lists the calls the tools saw, ``GET /prompts`` the prompts the
engine rendered, ``POST /reset`` forgets both.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Annotated, Any

import msgspec
from flask import Flask, jsonify
from tool_loop_engine import RecordingEngine

from llm_middleware import LLMMiddleware, RequestInfo, ToolError, ToolInvocation

_calls: list[dict[str, Any]] = []
_lock = threading.Lock()


def _record(**fields: Any) -> None:
    with _lock:
        _calls.append(fields)


# Short arguments: a random model writes a string until it must stop, and the call must fit ``max_tokens``.
Short = Annotated[str, msgspec.Meta(max_length=3)]


def lookup_order(order_id: Short, info: RequestInfo) -> str:
    """Status of one of the caller's orders."""
    user = info.headers.get("x-user", "nobody")
    _record(tool="lookup_order", order_id=order_id, user=user, thread=threading.current_thread().name)
    return f"order {order_id} of {user}: shipped"


async def stock_level(item: Short, info: RequestInfo) -> dict[str, Any]:
    """How many of an item are in stock."""
    _record(tool="stock_level", item=item, user=info.headers.get("x-user", "nobody"),
            thread=threading.current_thread().name)
    return {"item": item, "in_stock": 7}


def explode() -> str:
    """Always fails."""
    _record(tool="explode")
    raise RuntimeError("/srv/secret/config.py is broken")


def refuse() -> str:
    """Fails with a reason for the model."""
    raise ToolError("that order belongs to someone else")


async def slow() -> str:
    """Never answers in time."""
    _record(tool="slow")
    await asyncio.sleep(60)
    return "late"


async def wait_forever() -> str:
    """Waits until cancelled."""
    _record(tool="wait_forever", phase="started")
    try:
        await asyncio.sleep(300)
    except asyncio.CancelledError:
        _record(tool="wait_forever", phase="cancelled")
        raise
    return "never"


def count_rounds() -> str:
    """Counts how often it was called."""
    _record(tool="count_rounds")
    return "counted"


def admin_report() -> str:
    """Only for admins."""
    _record(tool="admin_report")
    return "all the numbers"


def only_admins(call: ToolInvocation, info: RequestInfo | None) -> bool:
    return call.name != "admin_report" or (info is not None and info.headers.get("x-user") == "admin")


# The tiny test model's context is short: the Flask app (which also has a dispatcher and an MCP server)
# offers fewer tools.
FLASK_TOOLS = [lookup_order, stock_level, count_rounds]
ASGI_TOOLS = [lookup_order, stock_level, explode, refuse, slow, wait_forever, count_rounds, admin_report]


def _options(tools: list[Any]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "tools": tools, "max_tool_rounds": 3, "tool_timeout": 2, "tool_permission": only_admins,
    }
    if url := os.environ.get("TOOL_DISPATCH_URL"):
        options["tool_dispatch_url"] = url
    if command := os.environ.get("MCP_COMMAND"):
        options["mcp_servers"] = [json.loads(command)]
    if url := os.environ.get("MCP_URL"):
        options["mcp_servers"] = [url]
    return options


def _engine() -> RecordingEngine:
    return RecordingEngine(os.environ["LLM_MODEL"], name="tiny", seed=0, max_model_len=2048)


def _state() -> dict[str, Any]:
    with _lock:
        return {"calls": list(_calls)}


def _reset(engine: RecordingEngine) -> None:
    with _lock:
        _calls.clear()
    engine.forget()


flask = Flask(__name__)
_flask_engine = _engine()


@flask.get("/calls")
def calls() -> Any:
    return jsonify(_state()["calls"])


@flask.get("/prompts")
def prompts() -> Any:
    return jsonify(_flask_engine.prompts())


@flask.post("/reset")
def reset() -> Any:
    _reset(_flask_engine)
    return jsonify({})


flask_app = LLMMiddleware(flask, base_path="/ai", engine=_flask_engine, **_options(FLASK_TOOLS))

_asgi_engine = _engine()


async def _host(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/prompts":
        body = json.dumps(await asyncio.to_thread(_asgi_engine.prompts)).encode()
    elif scope["path"] == "/reset":
        _reset(_asgi_engine)
        body = b"{}"
    else:
        body = json.dumps(_state()["calls"]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


asgi_app = LLMMiddleware(_host, base_path="/ai", engine=_asgi_engine, **_options(ASGI_TOOLS))
