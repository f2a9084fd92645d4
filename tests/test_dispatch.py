"""LLMMiddleware in process: prefix dispatch, pass-through, errors, CORS, docs, lifespan, both protocols."""

from __future__ import annotations

import asyncio
import copy
import inspect
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from engine_state import StepLog, default_worker, idle_stats
from flask import Flask, Response as FlaskResponse, stream_with_context
from hypercorn.utils import is_asgi

from llm_middleware.engine.engine import Engine
from llm_middleware.middleware import LLMMiddleware

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
LONG_STREAM = {**CHAT, "stream": True, "max_tokens": 200, "min_tokens": 200}


# ---- apps to wrap -------------------------------------------------------------------------------


class ShopASGI:
    """A raw ASGI app: plain and streamed responses, a websocket echo, lifespan hooks that record."""

    def __init__(self, on_startup: Any = None, on_shutdown: Any = None) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.on_startup, self.on_shutdown = on_startup, on_shutdown

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "lifespan":
            await receive()
            if self.on_startup:
                self.on_startup()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            if self.on_shutdown:
                self.on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            message = await receive()
            await send({"type": "websocket.send", "text": "echo:" + message["text"]})
            await send({"type": "websocket.close", "code": 1000})
        elif scope["type"] == "http":
            headers = [(b"content-type", b"text/plain"), (b"x-shop", b"yes")]
            await send({"type": "http.response.start", "status": 201, "headers": headers})
            if scope["path"].endswith("/stream"):
                for part in (b"one ", b"two ", b"three"):
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": b"shop:" + scope["path"].encode()})
        else:
            await send({"type": "custom.reply", "seen": scope["type"]})


def shop_wsgi(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A raw WSGI app answering with its path; ``/stream`` yields three chunks."""
    start_response("201 Created", [("Content-Type", "text/plain"), ("X-Shop", "yes")])
    if environ["PATH_INFO"].endswith("/stream"):
        return iter([b"one ", b"two ", b"three"])
    return iter([b"shop:" + (environ["SCRIPT_NAME"] + "|" + environ["PATH_INFO"]).encode()])


# ---- protocol drivers ---------------------------------------------------------------------------


def http_scope(path: str, *, method: str = "GET", root_path: str = "", headers: Any = (), query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": root_path, "query_string": query,
        "headers": [(k.encode(), v.encode()) for k, v in headers], "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


async def asgi_messages(app: Any, scope: dict[str, Any], body: bytes | list[bytes] = b"") -> list[dict[str, Any]]:
    """Every message ``app`` sends for one HTTP request, up to the last body message."""
    comm = ApplicationCommunicator(app, scope)
    parts = body if isinstance(body, list) else [body]
    for i, part in enumerate(parts):
        await comm.send_input({"type": "http.request", "body": part, "more_body": i < len(parts) - 1})
    messages = []
    while True:
        message = await comm.receive_output(30)
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            await comm.wait(5)
            return messages


async def asgi_request(app: Any, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    body = kw.pop("body", b"")
    if "json" in kw:
        body = json.dumps(kw.pop("json")).encode()
        kw.setdefault("method", "POST")
        kw["headers"] = [*kw.get("headers", ()), ("content-type", "application/json")]
    messages = await asgi_messages(app, http_scope(path, **kw), body)
    headers = {k.decode().lower(): v.decode() for k, v in messages[0]["headers"]}
    return messages[0]["status"], headers, b"".join(m.get("body", b"") for m in messages[1:])


def wsgi_call(
    app: Any, path: str, *, method: str = "GET", script_name: str = "", body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    environ = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": script_name, "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(body)) if body else "", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "5000",
    }
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    started: list[Any] = []
    iterable = app(environ, lambda status, hdrs, exc_info=None: started.append((status, hdrs)))
    try:
        chunks = list(iterable)
    finally:
        getattr(iterable, "close", lambda: None)()
    return started[0][0], started[0][1], chunks


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    """One real engine on the tiny model, shared by the module's middlewares (none of them owns it)."""
    engine = Engine(tiny_model_dir)
    engine.start()
    engine.wait_ready_sync(120)
    yield engine
    engine.shutdown()


@pytest.fixture
def shop() -> ShopASGI:
    return ShopASGI()


@pytest.fixture
def mw(shop: ShopASGI, engine: Engine) -> LLMMiddleware:
    return LLMMiddleware(shop, engine=engine)


@pytest.fixture
def wsgi_mw(engine: Engine) -> Iterator[LLMMiddleware]:
    middleware = LLMMiddleware(shop_wsgi, engine=engine)
    yield middleware
    middleware.close()


# ---- protocol detection and arguments -----------------------------------------------------------


def test_served_as_asgi_by_hypercorn_even_around_a_wsgi_app(engine: Engine) -> None:
    middleware = LLMMiddleware(Flask(__name__), engine=engine)
    assert not middleware.app_is_asgi
    assert is_asgi(middleware)
    assert inspect.iscoroutinefunction(middleware.__call__)
    assert asyncio.iscoroutinefunction(middleware.__call__)


def test_detects_an_asgi_app(mw: LLMMiddleware) -> None:
    assert mw.app_is_asgi


def test_engine_or_model_is_required(engine: Engine) -> None:
    with pytest.raises(TypeError, match="model="):
        LLMMiddleware(shop_wsgi)
    with pytest.raises(TypeError, match="not both"):
        LLMMiddleware(shop_wsgi, engine=engine, model="x")
    with pytest.raises(TypeError, match="quantize"):
        LLMMiddleware(shop_wsgi, engine=engine, quantize="4bit")
    with pytest.raises(ValueError, match="root"):
        LLMMiddleware(shop_wsgi, engine=engine, base_path="/")


def test_wsgi_server_around_an_asgi_app_is_refused(mw: LLMMiddleware) -> None:
    with pytest.raises(TypeError, match="ASGI server"):
        wsgi_call(mw, "/")


def test_nothing_starts_at_construction(tiny_model_dir: Path) -> None:
    middleware = LLMMiddleware(shop_wsgi, model=tiny_model_dir, base_path="ai/")
    assert middleware.base_path == "/ai"
    assert middleware.engine.state == "stopped"


# ---- pass-through -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/aix", "/aix/v1/models", "/stream", "/a/ai/v1/models"])
async def test_asgi_pass_through_is_byte_identical(mw: LLMMiddleware, path: str) -> None:
    direct = await asgi_messages(ShopASGI(), http_scope(path))
    through = await asgi_messages(mw, http_scope(path))
    assert through == direct
    if path == "/stream":
        assert [m.get("more_body") for m in through[1:]] == [True, True, True, None]


async def test_pass_through_scope_is_the_original(mw: LLMMiddleware, shop: ShopASGI) -> None:
    scope = http_scope("/shop/page", root_path="/shop")
    before = copy.deepcopy(scope)
    await asgi_messages(mw, scope)
    assert shop.scopes == [before]


async def test_api_request_does_not_mutate_the_scope(mw: LLMMiddleware) -> None:
    scope = http_scope("/ai/v1/models")
    before = copy.deepcopy(scope)
    await asgi_messages(mw, scope)
    assert scope == before


async def test_websocket_passes_through_even_under_the_prefix(mw: LLMMiddleware) -> None:
    for path in ("/ws", "/ai/ws"):
        comm = ApplicationCommunicator(mw, {"type": "websocket", "path": path, "root_path": "", "headers": [], "query_string": b""})
        await comm.send_input({"type": "websocket.connect"})
        assert (await comm.receive_output(5))["type"] == "websocket.accept"
        await comm.send_input({"type": "websocket.receive", "text": "hi"})
        assert await comm.receive_output(5) == {"type": "websocket.send", "text": "echo:hi"}
        assert (await comm.receive_output(5))["type"] == "websocket.close"


async def test_unknown_scope_type_passes_through(mw: LLMMiddleware) -> None:
    comm = ApplicationCommunicator(mw, {"type": "custom", "path": "/ai/v1/models"})
    assert await comm.receive_output(5) == {"type": "custom.reply", "seen": "custom"}


def test_wsgi_pass_through_is_identical(wsgi_mw: LLMMiddleware) -> None:
    for path in ("/", "/aix", "/stream"):
        assert wsgi_call(wsgi_mw, path) == wsgi_call(shop_wsgi, path)
    assert wsgi_call(wsgi_mw, "/stream")[2] == [b"one ", b"two ", b"three"]


async def test_wsgi_app_under_asgi_passes_through(wsgi_mw: LLMMiddleware) -> None:
    status, headers, body = await asgi_request(wsgi_mw, "/shop/page", root_path="/shop")
    assert (status, headers["x-shop"], body) == (201, "yes", b"shop:/shop|/page")
    status, _, body = await asgi_request(wsgi_mw, "/stream")
    assert (status, body) == (201, b"one two three")


# ---- the API under the prefix -------------------------------------------------------------------


async def test_models_under_prefix_asgi(mw: LLMMiddleware, engine: Engine) -> None:
    status, headers, body = await asgi_request(mw, "/ai/v1/models")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert [m["id"] for m in json.loads(body)["data"]] == [m.name for m in engine.models()]


async def test_root_path_is_honoured_asgi(mw: LLMMiddleware, shop: ShopASGI) -> None:
    status, _, body = await asgi_request(mw, "/shop/ai/v1/models", root_path="/shop")
    assert status == 200 and json.loads(body)["object"] == "list"
    assert shop.scopes == []


def test_models_under_prefix_and_script_name_wsgi(wsgi_mw: LLMMiddleware) -> None:
    for script_name in ("", "/shop"):
        status, headers, chunks = wsgi_call(wsgi_mw, "/ai/v1/models", script_name=script_name)
        assert status == "200 OK"
        assert json.loads(b"".join(chunks))["object"] == "list"


def _assert_openai_error(status: int, body: bytes, expected_status: int) -> dict[str, Any]:
    assert status == expected_status
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


async def test_unknown_path_and_wrong_method_are_openai_errors(mw: LLMMiddleware) -> None:
    status, _, body = await asgi_request(mw, "/ai/v1/nothing-here")
    _assert_openai_error(status, body, 404)
    status, headers, body = await asgi_request(mw, "/ai/v1/chat/completions")
    _assert_openai_error(status, body, 405)
    assert "POST" in headers.get("allow", "POST")


async def test_body_over_the_limit_is_413_asgi(shop: ShopASGI, engine: Engine) -> None:
    middleware = LLMMiddleware(shop, engine=engine, max_body_size=1000)
    # Announced by Content-Length: refused before reading.
    status, _, body = await asgi_request(
        middleware, "/ai/v1/chat/completions", method="POST", headers=[("content-length", "5000")], body=b"x" * 5000
    )
    assert _assert_openai_error(status, body, 413)["code"] == "request_too_large"
    # Streamed without a length: refused once the count passes the limit.
    status, _, body = await asgi_request(middleware, "/ai/v1/chat/completions", method="POST", body=[b"x" * 600] * 3)
    _assert_openai_error(status, body, 413)


@pytest.mark.parametrize(
    ("headers", "sizes"),
    [([("content-length", "3000")], [600] * 5 + [0]), ([], [600] * 5 + [0]), ([], [600, 600])],
    ids=["announced", "streamed", "over-on-the-last-chunk"],
)
async def test_body_over_the_limit_is_read_to_its_end_before_the_413(
    shop: ShopASGI, engine: Engine, headers: list[tuple[str, str]], sizes: list[int]
) -> None:
    # A server that closes the connection with request bytes unread resets it, and clients that
    # finish uploading before reading (the openai SDK's async client) then never see the 413.
    # Reading past the last chunk would wait for a disconnect (here: pop from an empty list).
    middleware = LLMMiddleware(shop, engine=engine, max_body_size=1000)
    parts: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"x" * size, "more_body": i < len(sizes) - 1} for i, size in enumerate(sizes)
    ]
    unread_at_start: list[int] = []
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return parts.pop(0)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            unread_at_start.append(len(parts))
            statuses.append(message["status"])

    await middleware(http_scope("/ai/v1/chat/completions", method="POST", headers=headers), receive, send)
    assert statuses == [413] and unread_at_start == [0]


def test_body_over_the_limit_is_413_wsgi(engine: Engine) -> None:
    middleware = LLMMiddleware(shop_wsgi, engine=engine, max_body_size=1000)
    status, _, chunks = wsgi_call(middleware, "/ai/v1/chat/completions", method="POST", body=b"x" * 5000)
    assert status.startswith("413")
    assert json.loads(b"".join(chunks))["error"]["code"] == "request_too_large"
    middleware.close()


async def test_docs_and_openapi(mw: LLMMiddleware, shop: ShopASGI, engine: Engine) -> None:
    status, headers, body = await asgi_request(mw, "/ai/docs")
    assert status == 200 and headers["content-type"].startswith("text/html")
    status, _, body = await asgi_request(mw, "/ai/openapi.json")
    assert status == 200 and "/v1/chat/completions" in json.loads(body)["paths"]
    without = LLMMiddleware(shop, engine=engine, include_docs=False)
    assert (await asgi_request(without, "/ai/docs"))[0] == 404


# ---- CORS ---------------------------------------------------------------------------------------


async def test_cors_preflight_and_headers(shop: ShopASGI, engine: Engine) -> None:
    middleware = LLMMiddleware(shop, engine=engine, allowed_origins=["https://app.example"])
    preflight = [("origin", "https://app.example"), ("access-control-request-method", "POST"),
                 ("access-control-request-headers", "authorization, content-type")]
    status, headers, body = await asgi_request(middleware, "/ai/v1/chat/completions", method="OPTIONS", headers=preflight)
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "authorization, content-type"
    assert int(headers["access-control-max-age"]) > 0

    status, headers, _ = await asgi_request(middleware, "/ai/v1/models", headers=[("origin", "https://app.example")])
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
    status, headers, _ = await asgi_request(middleware, "/ai/v1/models", headers=[("origin", "https://evil.example")])
    assert status == 200 and "access-control-allow-origin" not in headers
    status, _, body = await asgi_request(middleware, "/ai/v1/models", method="OPTIONS",
                                         headers=[("origin", "https://evil.example"), ("access-control-request-method", "GET")])
    _assert_openai_error(status, body, 403)


async def test_no_cors_headers_by_default(mw: LLMMiddleware) -> None:
    _, headers, _ = await asgi_request(mw, "/ai/v1/models", headers=[("origin", "https://app.example")])
    assert "access-control-allow-origin" not in headers


def test_cors_wildcard_over_wsgi(engine: Engine) -> None:
    middleware = LLMMiddleware(shop_wsgi, engine=engine, allowed_origins=["*"])
    status, headers, _ = wsgi_call(middleware, "/ai/v1/models", headers={"Origin": "https://x.example"})
    assert ("Access-Control-Allow-Origin", "*") in headers
    status, headers, _ = wsgi_call(middleware, "/ai/anything", method="OPTIONS",
                                   headers={"Origin": "https://x.example", "Access-Control-Request-Method": "POST"})
    assert status.startswith("204")
    middleware.close()


# ---- generation through both protocols ----------------------------------------------------------


async def test_chat_completion_asgi(mw: LLMMiddleware) -> None:
    status, _, body = await asgi_request(mw, "/ai/v1/chat/completions", json=CHAT)
    assert status == 200
    answer = json.loads(body)
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] > 0


async def test_streamed_chat_goes_out_chunk_by_chunk_asgi(mw: LLMMiddleware) -> None:
    scope = http_scope("/ai/v1/chat/completions", method="POST", headers=[("content-type", "application/json")])
    # An answer long enough to outlast the first read: a short one may be generated whole before it.
    messages = await asgi_messages(mw, scope, json.dumps(LONG_STREAM).encode())
    assert dict(messages[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    events = [m["body"] for m in messages[1:] if m["body"]]
    assert len(events) >= 3  # role chunk, content deltas, finish chunk, [DONE]: not one buffered body
    assert events[-1].strip().endswith(b"data: [DONE]")


async def test_client_disconnect_cancels_the_engine_request(mw: LLMMiddleware, engine: Engine) -> None:
    body = json.dumps({**CHAT, "stream": True, "max_tokens": 1500, "min_tokens": 1500}).encode()
    comm = ApplicationCommunicator(mw, http_scope("/ai/v1/chat/completions", method="POST", headers=[("content-type", "application/json")]))
    with StepLog(default_worker(engine)) as log:
        await comm.send_input({"type": "http.request", "body": body})
        start = await comm.receive_output(30)
        assert start["type"] == "http.response.start"
        await comm.receive_output(30)
        assert engine.stats()["running"] == 1
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(30)  # the middleware returns once it has cancelled the request
        stats = await idle_stats(engine, timeout=60)  # a hang guard: the step log tells whether it was cancelled
    assert log.steps_after_abort(dict(start["headers"])[b"x-request-id"].decode()) in (0, 1)
    assert stats["running"] == 0


def test_chat_and_stream_over_wsgi(wsgi_mw: LLMMiddleware) -> None:
    status, _, chunks = wsgi_call(wsgi_mw, "/ai/v1/chat/completions", method="POST", body=json.dumps(CHAT).encode(),
                                  headers={"Content-Type": "application/json"})
    assert status == "200 OK" and json.loads(b"".join(chunks))["object"] == "chat.completion"
    status, headers, chunks = wsgi_call(wsgi_mw, "/ai/v1/chat/completions", method="POST",
                                        body=json.dumps(LONG_STREAM).encode(), headers={"Content-Type": "application/json"})
    assert len(chunks) >= 3 and chunks[-1].strip().endswith(b"data: [DONE]")


def test_closing_the_wsgi_iterable_cancels_the_engine_request(wsgi_mw: LLMMiddleware, engine: Engine) -> None:
    body = json.dumps({**CHAT, "stream": True, "max_tokens": 1500, "min_tokens": 1500}).encode()
    environ_body = io.BytesIO(body)
    started: list[Any] = []
    with StepLog(default_worker(engine)) as log:
        iterable = wsgi_mw(
            {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/ai/v1/chat/completions", "QUERY_STRING": "",
             "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "wsgi.input": environ_body},
            lambda status, headers, exc_info=None: started.append(dict(headers)),
        )
        next(iter(iterable))
        assert engine.stats()["running"] == 1
        iterable.close()
        deadline = time.monotonic() + 60  # a hang guard: the step log tells whether it was cancelled
        while engine.stats()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert log.steps_after_abort(started[0]["x-request-id"]) in (0, 1)
    assert engine.stats()["running"] == 0


# ---- Flask idiom ---------------------------------------------------------------------------------


def test_flask_wsgi_app_idiom_with_test_client(engine: Engine) -> None:
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "flask home"

    @app.get("/countdown")
    def countdown() -> FlaskResponse:
        return FlaskResponse(stream_with_context(iter(["3", "2", "1"])), mimetype="text/plain")

    app.wsgi_app = LLMMiddleware(app.wsgi_app, engine=engine)  # type: ignore[method-assign]
    client = app.test_client()
    assert client.get("/").text == "flask home"
    assert client.get("/countdown").text == "321"
    assert client.get("/ai/v1/models").json["object"] == "list"
    response = client.post("/ai/v1/chat/completions", json=LONG_STREAM, buffered=False)
    chunks = list(response.response)
    response.close()
    assert len(chunks) >= 3 and b"[DONE]" in chunks[-1]
    assert client.post("/ai/v1/chat/completions", json=CHAT).json["object"] == "chat.completion"
    app.wsgi_app.close()  # type: ignore[attr-defined]


# ---- lifespan -----------------------------------------------------------------------------------


async def run_lifespan(app: Any) -> list[dict[str, Any]]:
    comm = ApplicationCommunicator(app, {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}})
    await comm.send_input({"type": "lifespan.startup"})
    replies = [await comm.receive_output(30)]
    if replies[0]["type"] == "lifespan.startup.complete":
        await comm.send_input({"type": "lifespan.shutdown"})
        replies.append(await comm.receive_output(60))
    await comm.wait(10)
    return replies


async def test_lifespan_engine_up_before_app_startup_and_down_after_its_shutdown(tiny_model_dir: Path) -> None:
    seen: dict[str, str] = {}
    shop = ShopASGI(on_startup=lambda: seen.setdefault("startup", middleware.engine.state),
                    on_shutdown=lambda: seen.setdefault("shutdown", middleware.engine.state))
    middleware = LLMMiddleware(shop, model=tiny_model_dir)
    assert middleware.engine.state == "stopped"
    replies = await run_lifespan(middleware)
    assert [r["type"] for r in replies] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seen["startup"] in ("loading", "ready")
    assert seen["shutdown"] in ("loading", "ready")
    assert middleware.engine.state == "stopped"  # it built the engine, so it shut it down


async def test_lifespan_leaves_an_engine_it_was_given_running(shop: ShopASGI, engine: Engine) -> None:
    replies = await run_lifespan(LLMMiddleware(shop, engine=engine))
    assert replies[-1]["type"] == "lifespan.shutdown.complete"
    assert engine.state == "ready"


async def test_lifespan_without_app_support(engine: Engine) -> None:
    async def no_lifespan(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("lifespan is not supported")

    for app in (no_lifespan, shop_wsgi):
        replies = await run_lifespan(LLMMiddleware(app, engine=engine))
        assert [r["type"] for r in replies] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_lifespan_startup_failure_is_reported(tiny_model_dir: Path) -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    middleware = LLMMiddleware(failing, model=tiny_model_dir)
    assert await run_lifespan(middleware) == [{"type": "lifespan.startup.failed", "message": "no database"}]
    assert middleware.engine.state == "stopped"


async def test_engine_starts_on_first_request_without_lifespan(shop: ShopASGI, tiny_model_dir: Path) -> None:
    middleware = LLMMiddleware(shop, model=tiny_model_dir)
    await asgi_request(middleware, "/not-ours")
    assert middleware.engine.state == "stopped"
    await asgi_request(middleware, "/ai/v1/models")
    assert middleware.engine.state in ("loading", "ready")
    await asyncio.to_thread(middleware.close)
    assert middleware.engine.state == "stopped"
