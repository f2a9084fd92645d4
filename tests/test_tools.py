"""Server-side tools without a model: schemas from signatures, the runner's rules, the dispatcher and MCP sources."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any, Literal

import msgspec
import pytest

from llm_middleware import RequestInfo
from llm_middleware.request_info import request_info
from llm_middleware.tools import MCPServer, PendingCall, Tool, ToolBox, ToolError, ToolInvocation, tool
from llm_middleware.tools.mcp import MCPSources
from servers import ROOT, free_port

ALICE = request_info("POST", "/v1/chat/completions", {"x-user": "alice"}, ("127.0.0.1", 5000))


def lookup_order(order_id: str, info: RequestInfo) -> str:
    """Status of one of the caller's orders."""
    return f"order {order_id} of {info.headers['x-user']}: shipped"


def search(
    query: Annotated[str, msgspec.Meta(min_length=1, description="Words to look for")],
    limit: Annotated[int, msgspec.Meta(ge=1, le=50)] = 10,
    sort: Literal["new", "relevant"] = "relevant",
    info: RequestInfo | None = None,
) -> list[str]:
    """Search the catalogue."""
    return [f"{query}-{i}" for i in range(limit)]


def run(box: ToolBox, name: str, arguments: Any, info: RequestInfo | None = ALICE) -> Any:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return asyncio.run(box.run(PendingCall("call_1", name, text), info=info, round=1, request_id="req-1"))


def test_schema_of_a_signature_honours_types_constraints_defaults_and_leaves_out_the_request() -> None:
    order, found = Tool(lookup_order), Tool(search)
    assert (order.name, order.description) == ("lookup_order", "Status of one of the caller's orders.")
    assert order.parameters == {
        "type": "object",
        "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"],
        "additionalProperties": False,
    }
    assert found.parameters == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "description": "Words to look for"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10},
            "sort": {"enum": ["new", "relevant"], "default": "relevant"},
        },
        "required": ["query"],
        "additionalProperties": False,
    }


class Point(msgspec.Struct):
    x: float
    y: float


def test_nested_types_keep_their_definitions() -> None:
    def distance(a: Point, b: Point) -> float:
        return ((a.x - b.x) ** 2 + (a.y - b.y) ** 2) ** 0.5

    measured = Tool(distance)
    assert measured.parameters["properties"]["a"] == {"$ref": "#/$defs/Point"}
    assert measured.parameters["$defs"]["Point"]["required"] == ["x", "y"]
    result = run(ToolBox([measured]), "distance", {"a": {"x": 0, "y": 0}, "b": {"x": 3, "y": 4}})
    assert (result.outcome, result.content) == ("ok", "5.0")


def test_overrides_and_the_decorator() -> None:
    @tool
    def plain(x: int) -> int:
        """Doubles."""
        return 2 * x

    @tool(name="renamed", description="Says hi.", parameters={"type": "object", "properties": {"who": {"type": "string"}}})
    def greet(**anything: Any) -> str:
        return f"hi {anything['who']}"

    assert isinstance(plain, Tool) and plain.name == "plain" and plain.description == "Doubles."
    assert (greet.name, greet.description) == ("renamed", "Says hi.")
    assert greet.parameters["properties"] == {"who": {"type": "string"}}
    box = ToolBox([plain, greet])
    assert run(box, "renamed", {"who": "you"}).content == "hi you"
    assert run(box, "plain", {"x": 21}).content == "42"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Tool(lambda *args: None, name="star"),
        lambda: Tool(lambda **kw: None, name="kw"),
        lambda: Tool(lambda x, /: None, name="positional"),
        lambda: Tool(lookup_order, name="has space"),
        lambda: ToolBox([lookup_order, lookup_order]),
        lambda: ToolBox(max_tool_rounds=-1),
        lambda: ToolBox(tool_timeout=0),
        lambda: ToolBox(tool_dispatch_url="ftp://x"),
        lambda: MCPServer(url="http://x", command=["x"]),
    ],
)
def test_what_cannot_be_a_tool_is_refused_at_construction(make: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        make()


def test_sync_tools_run_on_the_tools_pool_and_async_ones_on_the_loop_with_the_callers_request() -> None:
    seen: dict[str, Any] = {}

    def sync_tool(order_id: str, info: RequestInfo) -> str:
        seen["sync"] = (threading.current_thread().name, info)
        return lookup_order(order_id, info)

    async def async_tool(n: int, info: RequestInfo | None = None) -> dict[str, Any]:
        seen["async"] = (threading.current_thread().name, info)
        return {"n": n, "user": info.headers["x-user"] if info else None}

    box = ToolBox([sync_tool, async_tool])
    assert run(box, "sync_tool", {"order_id": "7"}).content == "order 7 of alice: shipped"
    assert json.loads(run(box, "async_tool", {"n": 3}).content) == {"n": 3, "user": "alice"}
    assert seen["sync"][0].startswith("llm-tool") and seen["sync"][1] is ALICE
    assert seen["async"][0] == threading.current_thread().name and seen["async"][1] is ALICE


def test_failures_become_text_for_the_model() -> None:
    def crashes() -> str:
        raise RuntimeError("/secret/path leaked")

    def explains() -> str:
        raise ToolError("no such order")

    async def slow() -> str:
        await asyncio.sleep(60)
        return "late"

    def huge() -> str:
        return "x" * 101

    def long_error() -> str:
        raise ToolError("y" * 500)

    def unencodable() -> object:
        return object()

    box = ToolBox([crashes, explains, slow, huge, long_error, unencodable, search], tool_timeout=0.5,
                  max_tool_result_size=100)
    crashed = run(box, "crashes", {})
    assert crashed.outcome == "error" and "secret" not in crashed.content and "crashes failed" in crashed.content
    assert (run(box, "explains", {}).outcome, run(box, "explains", {}).content) == ("error", "Error: no such order")
    assert run(box, "slow", {}).outcome == "timeout"
    assert run(box, "huge", {}).outcome == "too_large"
    cut = run(box, "long_error", {})
    assert cut.outcome == "error" and cut.content == ("Error: " + "y" * 500)[:100]
    assert run(box, "unencodable", {}).outcome == "error"
    invalid = run(box, "search", {"query": "", "limit": 3})
    assert invalid.outcome == "invalid_arguments" and "$.query" in invalid.content
    assert run(box, "search", "not json").outcome == "invalid_arguments"
    assert run(box, "search", {"query": "a", "misspelt": 1}).outcome == "invalid_arguments"
    assert run(box, "nowhere", {}).outcome == "unavailable"


@pytest.mark.parametrize("kind", ["sync", "async", "raising"])
def test_permission_decides_each_call(kind: str) -> None:
    asked: list[tuple[ToolInvocation, RequestInfo | None]] = []

    def sync_permission(call: ToolInvocation, info: RequestInfo | None) -> bool:
        asked.append((call, info))
        return call.arguments.get("order_id") != "secret"

    async def async_permission(call: ToolInvocation, info: RequestInfo | None) -> bool:
        return sync_permission(call, info)

    def raising(call: ToolInvocation, info: RequestInfo | None) -> bool:
        asked.append((call, info))
        if call.arguments.get("order_id") == "secret":
            raise RuntimeError("permission store down")
        return True

    permission = {"sync": sync_permission, "async": async_permission, "raising": raising}[kind]
    box = ToolBox([lookup_order], tool_permission=permission)
    assert run(box, "lookup_order", {"order_id": "1"}).outcome == "ok"
    refused = run(box, "lookup_order", {"order_id": "secret"})
    assert refused.outcome == "refused" and "not permitted" in refused.content
    call, info = asked[-1]
    assert (call.name, call.arguments, call.call_id, call.round, info) == (
        "lookup_order", {"order_id": "secret"}, "call_1", 1, ALICE,
    )


def test_a_round_runs_calls_concurrently_and_cancelling_it_cancels_async_tools() -> None:
    started: list[str] = []
    cancelled: list[str] = []
    both_running = asyncio.Event

    async def main() -> None:
        gate = both_running()

        async def waits(name: str) -> str:
            started.append(name)
            if len(started) == 2:
                gate.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(name)
                raise
            return name

        box = ToolBox([waits])
        calls = [PendingCall("a", "waits", '{"name": "a"}'), PendingCall("b", "waits", '{"name": "b"}')]
        round_ = asyncio.ensure_future(box.run_round(calls, info=None, round=1, request_id="r"))
        await asyncio.wait_for(gate.wait(), 10)  # both calls run at once
        round_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await round_

    asyncio.run(main())
    assert sorted(started) == ["a", "b"] and sorted(cancelled) == ["a", "b"]


def test_a_round_runs_a_bounded_number_of_calls_and_survives_deep_arguments() -> None:
    from llm_middleware.tools.toolbox import MAX_CALLS_PER_ROUND

    ran: list[str] = []

    def note(word: str) -> str:
        ran.append(word)
        return word

    box = ToolBox([note])
    deep = PendingCall("deep", "note", "[" * 100_000 + "]" * 100_000)  # deeper than json can decode
    calls = [deep, *(PendingCall(f"c{i}", "note", json.dumps({"word": str(i)})) for i in range(MAX_CALLS_PER_ROUND + 2))]
    results = asyncio.run(box.run_round(calls, info=None, round=1, request_id="r"))
    assert [r.call_id for r in results] == [c.call_id for c in calls]
    assert results[0].outcome == "invalid_arguments" and len(ran) == MAX_CALLS_PER_ROUND - 1
    assert {r.outcome for r in results[MAX_CALLS_PER_ROUND:]} == {"refused"}
    assert "at most" in results[-1].content


def test_observers_and_the_access_log_see_every_call(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, str, int, str]] = []
    box = ToolBox([lookup_order])
    box.observers.append(lambda result, round, request_id: seen.append((result.name, result.outcome, round, request_id)))
    with caplog.at_level(logging.INFO, logger="llm_middleware.access"):
        run(box, "lookup_order", {"order_id": "1"})
    assert seen == [("lookup_order", "ok", 1, "req-1")]
    [record] = [r for r in caplog.records if r.name == "llm_middleware.access"]
    assert record.getMessage().startswith("request_id=req-1 tool=lookup_order round=1 outcome=ok duration_ms=")
    assert record.access["tool"] == "lookup_order"


class _Dispatcher(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.received.append(body)
        name = body["name"]
        if name == "broken":
            self.send_response(500)
            answer = b"Traceback: /srv/internal"
        elif name == "plain":
            self.send_response(200)
            answer = b"just text"
        elif name == "slow":
            time.sleep(3)
            self.send_response(200)
            answer = b"late"
        else:
            self.send_response(200)
            answer = json.dumps({"content": f"{name} got {body['arguments']}"}).encode()
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the slow call's client has gone
            self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def test_dispatch_url_receives_the_mistral_rs_body_and_its_answer_becomes_the_result() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dispatcher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tools"
        box = ToolBox(tool_dispatch_url=url, tool_timeout=1)
        assert box.runs("weather", {"weather"}) and not box.runs("weather", set())
        result = run(box, "weather", {"city": "Oslo"})
        assert _Dispatcher.received[-1] == {"name": "weather", "arguments": {"city": "Oslo"}}
        assert (result.outcome, result.content) == ("ok", "weather got {'city': 'Oslo'}")
        assert run(box, "plain", {}).content == "just text"
        broken = run(box, "broken", {})
        assert broken.outcome == "error" and "500" in broken.content and "/srv" not in broken.content
        assert run(box, "slow", {}).outcome == "timeout"
    finally:
        server.shutdown()
        server.server_close()
    gone = run(ToolBox(tool_dispatch_url=url), "weather", {})
    assert gone.outcome == "error" and "127.0.0.1" not in gone.content


def _offered(box: ToolBox) -> set[str]:
    return {item.name for item in box.offered()}


def test_mcp_server_over_stdio() -> None:
    async def main() -> None:
        box = ToolBox([lookup_order], mcp_servers=[[sys.executable, str(ROOT / "tests" / "mcp_tools_server.py"), "stdio"]])
        await box.ready(timeout=60)
        try:
            assert _offered(box) == {"lookup_order", "count_letters", "mcp_fails"}
            result = await box.run(PendingCall("c", "count_letters", '{"word": "abba", "letter": "a"}'),
                                   info=None, round=1, request_id="r")
            assert (result.outcome, result.content) == ("ok", "2 letters")
            failed = await box.run(PendingCall("c", "mcp_fails", "{}"), info=None, round=1, request_id="r")
            # The server's own error text (an exception's) stays in the log: the model, and so the client, read less.
            assert (failed.outcome, failed.content) == ("error", "Error: the tool mcp_fails failed")
        finally:
            box.stop()

    asyncio.run(main())


def _start_http_mcp(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "mcp_tools_server.py"), "http", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def _until(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def test_mcp_server_over_streamable_http_is_reconnected_and_its_tools_withdrawn_meanwhile() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    process = _start_http_mcp(port)

    async def main() -> None:
        nonlocal process
        box = ToolBox(mcp_servers=[url])
        box.mcp = MCPSources([MCPServer(url=url)], check_interval=0.3)
        await box.ready(timeout=1)
        try:
            await _until(lambda: "count_letters" in _offered(box))
            result = await box.run(PendingCall("c", "count_letters", '{"word": "noon", "letter": "n"}'),
                                   info=None, round=1, request_id="r")
            assert result.content == "2 letters"
            process.terminate()
            process.wait(15)
            await _until(lambda: not _offered(box))
            gone = await box.run(PendingCall("c", "count_letters", "{}"), info=None, round=1, request_id="r")
            assert gone.outcome == "unavailable"
            process = _start_http_mcp(port)
            await _until(lambda: "count_letters" in _offered(box))
        finally:
            box.stop()

    try:
        asyncio.run(main())
    finally:
        process.terminate()
        process.wait(15)


def test_the_middleware_checks_its_tool_options(tiny_model_dir: Any) -> None:
    from llm_middleware import LLMMiddleware
    from llm_middleware.integrations.litestar import LLMPlugin

    def app(environ: Any, start_response: Any) -> list[bytes]:
        return []

    for bad in ({"max_tool_rounds": -1}, {"tool_timeout": 0}, {"tools": [lambda *a: None]},
                {"tool_dispatch_url": "file:///etc/passwd"}, {"mcp_servers": ["ftp://x"]}):
        with pytest.raises((TypeError, ValueError)):
            LLMMiddleware(app, model=tiny_model_dir, **bad)
    middleware = LLMMiddleware(app, model=tiny_model_dir, tools=[lookup_order], max_tool_rounds=2)
    plugin = LLMPlugin(model=tiny_model_dir, tools=[search], tool_timeout=5)
    assert [t.name for t in middleware.endpoint.tools.offered()] == ["lookup_order"]
    assert middleware.endpoint.tools.max_tool_rounds == 2 and plugin.endpoint.tools.tool_timeout == 5
