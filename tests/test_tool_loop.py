"""The server-side tool loop through real servers on loopback: a Flask app (under hypercorn) and an ASGI app
whose own functions are the model's tools, called with the official ``openai`` SDK.

A random-weight model calls a tool only when forced, so the first round names the tool in ``tool_choice``;
what the tool gave is then read in the prompt the engine rendered for the next round (``GET /prompts``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import httpx
import msgspec
import pytest
from openai import BadRequestError, OpenAI
from pydantic import BaseModel
from llm_middleware import RequestInfo
from servers import ROOT, Server, free_port, server_env, serving

APPS = ["flask", "asgi"]


class _Dispatcher(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.received.append(body)
        answer = json.dumps({"content": f"dispatched {body['name']} for you"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def urls(tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    dispatcher = ThreadingHTTPServer(("127.0.0.1", 0), _Dispatcher)
    threading.Thread(target=dispatcher.serve_forever, daemon=True).start()
    mcp_port = free_port()
    mcp = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "mcp_tools_server.py"), "http", str(mcp_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    env = {**server_env(tiny_model_dir), "TOOL_DISPATCH_URL": f"http://127.0.0.1:{dispatcher.server_address[1]}/tools"}
    stdio = json.dumps([sys.executable, str(ROOT / "tests" / "mcp_tools_server.py"), "stdio"])
    servers = {
        "flask": Server(["-m", "hypercorn", "tool_loop_apps:flask_app"], env={"MCP_COMMAND": stdio}),
        "asgi": Server(["-m", "hypercorn", "tool_loop_apps:asgi_app"], env={"MCP_URL": f"http://127.0.0.1:{mcp_port}/mcp"}),
    }
    try:
        with serving(servers, env) as started:
            yield started
    finally:
        dispatcher.shutdown()
        dispatcher.server_close()
        mcp.terminate()
        mcp.wait(15)


def client(url: str, user: str = "alice") -> OpenAI:
    return OpenAI(base_url=url + "/ai/v1", api_key="unused", default_headers={"x-user": user}, max_retries=0)


def forced(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def reset(url: str) -> None:
    httpx.post(url + "/reset").raise_for_status()


def calls(url: str) -> list[dict[str, Any]]:
    return httpx.get(url + "/calls").json()


def prompts(url: str) -> list[str]:
    return httpx.get(url + "/prompts", timeout=30).json()


ASK = [{"role": "user", "content": "What about my order 42?"}]


class Verdict(BaseModel):
    ok: bool


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize(
    ("tool", "result"), [("lookup_order", "of alice: shipped"), ("stock_level", '"in_stock":7')], ids=["sync", "async"]
)
def test_a_host_function_runs_with_the_callers_identity_and_its_result_reaches_the_next_round(
    urls: dict[str, str], app: str, tool: str, result: str
) -> None:
    url = urls[app]
    reset(url)
    answer = client(url).chat.completions.create(model="tiny", messages=ASK, tool_choice=forced(tool), max_tokens=64)
    [choice] = answer.choices
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    [call] = calls(url)
    assert call["tool"] == tool and call["user"] == "alice"
    if tool == "lookup_order":
        assert call["thread"].startswith("llm-tool")  # off the event loop, on the tools' own threads
    first, second = prompts(url)
    assert f'"name": "{tool}"' in first and result not in first
    assert result in second and "<tool_response>" in second and "<tool_call>" in second
    counts = [httpx.post(url + "/ai/tokenize", json={"model": "tiny", "prompt": p}).json()["count"] for p in (first, second)]
    assert answer.usage is not None and answer.usage.prompt_tokens == sum(counts)


@pytest.mark.parametrize(
    ("tool", "user", "told", "hidden", "ran"),
    [
        ("explode", "alice", "Error: explode failed.", "/srv/secret", ["explode"]),
        ("refuse", "alice", "Error: that order belongs to someone else", None, []),
        ("slow", "alice", "Error: slow did not answer within 2 seconds.", None, ["slow"]),
        ("admin_report", "bob", "Error: calling admin_report is not permitted.", "all the numbers", []),
        ("admin_report", "admin", "all the numbers", None, ["admin_report"]),
    ],
)
def test_failures_and_refusals_are_answered_to_the_model(
    urls: dict[str, str], tool: str, user: str, told: str, hidden: str | None, ran: list[str]
) -> None:
    url = urls["asgi"]
    reset(url)
    answer = client(url, user).chat.completions.create(model="tiny", messages=ASK, tool_choice=forced(tool), max_tokens=64)
    assert answer.choices[0].message.tool_calls is None
    _, second = prompts(url)
    assert told in second
    if hidden is not None:
        assert hidden not in second and hidden not in (answer.choices[0].message.content or "")
    assert [c["tool"] for c in calls(url)] == ran


@pytest.mark.parametrize(("requested", "rounds"), [(None, 3), (1, 1), (0, 0), (9, 3)])
def test_max_tool_rounds_bounds_a_model_that_keeps_calling(urls: dict[str, str], requested: int | None, rounds: int) -> None:
    url = urls["flask"]
    reset(url)
    extra = {} if requested is None else {"max_tool_rounds": requested}
    answer = client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "please keep calling"}], max_tokens=64, extra_body=extra
    )
    assert [c["tool"] for c in calls(url)] == ["count_rounds"] * rounds
    rendered = prompts(url)
    assert len(rendered) == rounds + 1
    assert all('"name": "count_rounds"' in p.split("<|im_end|>")[0] for p in rendered[:-1])
    assert '"name": "count_rounds"' not in rendered[-1].split("<|im_end|>")[0]  # withheld in the last generation
    assert answer.choices[0].message.tool_calls is None


def test_a_request_cannot_raise_the_limit_or_clash_with_a_server_tool(urls: dict[str, str]) -> None:
    url = urls["asgi"]
    clash = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
    with pytest.raises(BadRequestError) as caught:
        client(url).chat.completions.create(model="tiny", messages=ASK, tools=clash, max_tokens=64)  # type: ignore[arg-type]
    assert caught.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(BadRequestError) as caught:
        client(url).chat.completions.create(model="tiny", messages=ASK, max_tokens=64, extra_body={"max_tool_rounds": -1})
    assert caught.value.body["param"] == "max_tool_rounds"  # type: ignore[index]


def test_a_clients_tool_goes_to_the_dispatcher_in_mistral_rs_body(urls: dict[str, str]) -> None:
    url = urls["flask"]
    reset(url)
    weather = {"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 5}}, "required": ["city"],
        "additionalProperties": False}}}
    answer = client(url).chat.completions.create(model="tiny", messages=ASK, tools=[weather],  # type: ignore[list-item]
                                                 tool_choice=forced("weather"), max_tokens=64)
    assert answer.choices[0].message.tool_calls is None
    body = _Dispatcher.received[-1]
    assert body["name"] == "weather" and set(body) == {"name", "arguments"} and isinstance(body["arguments"]["city"], str)
    assert "dispatched weather for you" in prompts(url)[1]


@pytest.mark.parametrize("app", APPS, ids=["stdio", "streamable-http"])
def test_an_mcp_servers_tool_is_called_in_the_loop(urls: dict[str, str], app: str) -> None:
    url = urls[app]
    reset(url)
    # Two strings of random characters may take many tokens: room enough for the whole call.
    answer = client(url).chat.completions.create(model="tiny", messages=ASK, tool_choice=forced("count_letters"),
                                                 max_tokens=96)
    assert answer.choices[0].message.tool_calls is None
    second = prompts(url)[1]
    assert " letters\n</tool_response>" in second


@pytest.mark.parametrize("progress", [False, True])
def test_streamed_answers_parse_with_and_without_progress_events(urls: dict[str, str], progress: bool) -> None:
    url = urls["flask"]
    reset(url)
    stream = client(url).chat.completions.create(
        model="tiny", messages=ASK, tool_choice=forced("lookup_order"), max_tokens=64, stream=True,
        stream_options={"include_usage": True, "include_tool_progress": progress},  # type: ignore[typeddict-unknown-key]
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    progress_chunks = [c for c in chunks if getattr(c, "type", None) == "agentic_tool_call_progress"]
    answer_chunks = [c for c in chunks if c.choices]
    assert not any(c.choices[0].delta.tool_calls for c in answer_chunks)
    assert answer_chunks[0].choices[0].delta.role == "assistant"
    assert answer_chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage is not None and not chunks[-1].choices
    if progress:
        phases = [(c.round, c.tool_name, c.phase) for c in progress_chunks]  # type: ignore[attr-defined]
        assert phases == [(1, "lookup_order", "calling"), (1, "lookup_order", "complete")]
        assert progress_chunks[1].data["outcome"] == "ok"  # type: ignore[attr-defined]
        assert chunks.index(progress_chunks[1]) < chunks.index(answer_chunks[-1])
    else:
        assert not progress_chunks
    raw = httpx.post(url + "/ai/v1/chat/completions", json={
        "model": "tiny", "messages": ASK, "tool_choice": forced("lookup_order"), "max_tokens": 64, "stream": True,
        "stream_options": {"include_tool_progress": progress}}, timeout=60).text
    assert ("event: agentic_tool_call_progress\ndata: " in raw) == progress and raw.endswith("data: [DONE]\n\n")


def wait_for_call(url: str, call: dict[str, str], why: str) -> None:
    deadline = time.monotonic() + 60
    while call not in calls(url):
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def test_a_client_that_leaves_mid_loop_cancels_the_async_tool(urls: dict[str, str]) -> None:
    url = urls["asgi"]
    reset(url)
    body = {"model": "tiny", "messages": ASK, "tool_choice": forced("wait_forever"), "max_tokens": 64, "stream": True}
    with httpx.stream("POST", url + "/ai/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        wait_for_call(url, {"tool": "wait_forever", "phase": "started"}, "the tool never started")
    wait_for_call(url, {"tool": "wait_forever", "phase": "cancelled"}, "the tool was not cancelled")


def test_cancelling_a_background_response_cancels_its_async_tool(urls: dict[str, str]) -> None:
    url = urls["asgi"]
    reset(url)
    made = client(url).responses.create(model="tiny", input="What about my order 42?", max_output_tokens=64,
                                        background=True, tool_choice={"type": "function", "name": "wait_forever"})
    wait_for_call(url, {"tool": "wait_forever", "phase": "started"}, "the tool never started")
    assert client(url).responses.cancel(made.id).status == "cancelled"
    wait_for_call(url, {"tool": "wait_forever", "phase": "cancelled"}, "the tool was not cancelled")
    assert client(url).responses.retrieve(made.id).status == "cancelled"


def test_the_loop_reports_metrics(urls: dict[str, str]) -> None:
    url = urls["asgi"]
    client(url).chat.completions.create(model="tiny", messages=ASK, tool_choice=forced("explode"), max_tokens=64)
    metrics = httpx.get(url + "/ai/metrics").text
    assert 'llm_tool_calls_total{outcome="error",tool="explode"}' in metrics
    assert 'llm_tool_call_duration_seconds_count{tool="explode"}' in metrics


def test_engine_chat_runs_host_functions(tiny_model_dir: Path) -> None:
    from tool_loop_engine import RecordingEngine

    seen: list[Any] = []

    def lookup_order(order_id: Annotated[str, msgspec.Meta(max_length=3)], info: RequestInfo | None = None) -> str:
        """Status of an order."""
        seen.append(info)
        return "order shipped yesterday"

    engine = RecordingEngine(tiny_model_dir, name="tiny", seed=0, max_model_len=2048)
    try:
        with contextlib.closing(engine.stream_chat_sync(ASK, max_tokens=1)) as warm:
            list(warm)
        engine.forget()
        reply = engine.chat_sync(ASK, tools=[lookup_order], tool_choice="lookup_order", max_tokens=64)
        assert seen == [None]
        first, second = engine.prompts()
        assert "order shipped yesterday" not in first and "order shipped yesterday" in second
        assert reply.usage.prompt_tokens == sum(len(engine.tokenize(p)) for p in (first, second))
        assert reply.usage.cached_tokens > 0  # the second round's prompt begins with the first's
        with pytest.raises(TypeError):
            engine.chat_sync(ASK, tools=[lookup_order, {"type": "function", "function": {"name": "x"}}])
    finally:
        engine.shutdown()


@pytest.mark.parametrize("stream", [False, True])
def test_the_responses_api_shows_the_calls_the_server_ran(urls: dict[str, str], stream: bool) -> None:
    url = urls["asgi"]
    reset(url)
    options: dict[str, Any] = {"model": "tiny", "input": "What about my order 42?", "max_output_tokens": 64,
                               "tool_choice": {"type": "function", "name": "lookup_order"}}
    if stream:
        events = list(client(url).responses.create(stream=True, **options))
        response = events[-1].response  # type: ignore[union-attr]
        assert events[-1].type in ("response.completed", "response.incomplete")  # the answer may reach its limit
    else:
        response = client(url).responses.create(**options)
    call = response.output[0]
    assert (call.type, call.name, call.status, call.server_label) == ("mcp_call", "lookup_order", "completed", "app")  # type: ignore[union-attr]
    assert json.loads(call.arguments).keys() == {"order_id"} and "of alice: shipped" in call.output  # type: ignore[union-attr]
    assert all(item.type not in ("function_call", "mcp_call") for item in response.output[1:])
    assert [c["user"] for c in calls(url)] == ["alice"]
    assert "of alice: shipped" in prompts(url)[1]
    if stream:
        kinds = [event.type for event in events if "mcp_call" in event.type or event.type.startswith("response.output_item")]
        assert kinds[:6] == ["response.output_item.added", "response.mcp_call_arguments.delta",
                             "response.mcp_call_arguments.done", "response.mcp_call.in_progress",
                             "response.mcp_call.completed", "response.output_item.done"]
    # Given back, as a client replays a conversation, the call and its result are where the loop put them.
    replay = client(url).responses.create(
        model="tiny", max_output_tokens=4,
        input=[{"role": "user", "content": "What about my order 42?"}, call.model_dump(exclude_none=True),  # type: ignore[list-item]
               {"role": "user", "content": "Thanks"}],
    )
    assert replay.status in ("completed", "incomplete") and "of alice: shipped" in prompts(url)[-1]


def test_a_background_response_runs_the_servers_tools_on_the_hosts_loop(urls: dict[str, str]) -> None:
    url = urls["asgi"]
    reset(url)
    options: dict[str, Any] = {"model": "tiny", "input": "What about my order 42?", "max_output_tokens": 64,
                               "tool_choice": {"type": "function", "name": "stock_level"}}
    client(url).responses.create(**options)  # in the foreground: the async tool runs on the host's loop
    made = client(url).responses.create(background=True, **options)
    assert made.status in ("queued", "in_progress")
    deadline = time.monotonic() + 120
    response = made
    while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.1)
        response = client(url).responses.retrieve(made.id)
    assert response.status in ("completed", "incomplete")
    call = response.output[0]
    assert (call.type, call.name, call.status) == ("mcp_call", "stock_level", "completed")  # type: ignore[union-attr]
    assert '"in_stock":7' in call.output  # type: ignore[union-attr]
    foreground, background = calls(url)
    assert background["user"] == "alice" and background["thread"] == foreground["thread"]
    assert '"in_stock":7' in prompts(url)[3]


def test_a_failed_server_call_is_a_failed_mcp_call_item(urls: dict[str, str]) -> None:
    response = client(urls["asgi"]).responses.create(model="tiny", input="Go", max_output_tokens=64,
                                                     tool_choice={"type": "function", "name": "explode"})
    call = response.output[0]
    assert (call.type, call.status, call.output) == ("mcp_call", "failed", None)  # type: ignore[union-attr]
    assert call.error.type == "mcp_tool_execution_error" and call.error.content == "Error: explode failed."  # type: ignore[union-attr]


def test_an_agents_sdk_agent_sees_the_servers_calls_as_done(urls: dict[str, str]) -> None:
    import openai
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)
    url = urls["flask"]  # fewer tools: two turns fit the tiny model's context
    reset(url)

    def agent() -> Agent:
        model = OpenAIResponsesModel(model="tiny", openai_client=openai.AsyncOpenAI(
            base_url=url + "/ai/v1", api_key="unused", default_headers={"x-user": "alice"}, max_retries=0))
        # The agent has no tools of its own: the server's lookup_order is forced in the first round, then the
        # answer is structured so that a random model ends it.
        return Agent(name="Shop", instructions="Be brief.", model=model, output_type=Verdict,
                     model_settings=ModelSettings(tool_choice="lookup_order", temperature=0, max_tokens=80))

    result = Runner.run_sync(agent(), "What about my order 42?")
    assert [item.type for item in result.new_items] == ["tool_call_item", "message_output_item"]
    assert result.new_items[0].raw_item.type == "mcp_call"  # type: ignore[union-attr]
    assert [c["tool"] for c in calls(url)] == ["lookup_order"]
    # The next turn replays the conversation, the server's call included.
    again = Runner.run_sync(agent(), [*result.to_input_list(), {"role": "user", "content": "And order 7?"}])
    assert again.final_output is not None and [c["tool"] for c in calls(url)] == ["lookup_order"] * 2


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages_show_the_calls_the_server_ran(urls: dict[str, str], stream: bool) -> None:
    import anthropic

    url = urls["flask"]  # fewer tools: the replayed turn fits the tiny model's context
    reset(url)
    claude = anthropic.Anthropic(base_url=url + "/ai", api_key="unused", default_headers={"x-user": "alice"},
                                 max_retries=0)
    options: dict[str, Any] = {"model": "tiny", "max_tokens": 64, "messages": ASK,
                               "tool_choice": {"type": "tool", "name": "stock_level"}}
    if stream:
        with claude.messages.stream(**options) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**options)
    use, result = message.content[0], message.content[1]
    assert (use.type, use.name, use.server_name) == ("mcp_tool_use", "stock_level", "app")  # type: ignore[union-attr]
    assert result.type == "mcp_tool_result" and result.tool_use_id == use.id and not result.is_error  # type: ignore[union-attr]
    assert '"in_stock":7' in result.content  # type: ignore[union-attr]
    assert all(block.type not in ("tool_use", "mcp_tool_use") for block in message.content[2:])
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert [c["tool"] for c in calls(url)] == ["stock_level"]
    assert '"in_stock":7' in prompts(url)[1]
    # Replayed as the next turn's history, the blocks give the model the conversation the loop wrote.
    history = [*ASK, {"role": "assistant", "content": [block.model_dump(warnings=False) for block in message.content]},
               {"role": "user", "content": "Thanks"}]
    claude.messages.create(model="tiny", max_tokens=2, messages=history)
    assert prompts(url)[-1].startswith(prompts(url)[1])


def test_langchain_anthropic_does_not_take_the_servers_calls_for_its_own(urls: dict[str, str]) -> None:
    from langchain_anthropic import ChatAnthropic

    url = urls["asgi"]
    reset(url)
    chat = ChatAnthropic(model="tiny", base_url=url + "/ai", api_key="unused", max_tokens=64, max_retries=0,
                         default_headers={"x-user": "alice"})
    answer = chat.invoke(ASK, tool_choice={"type": "tool", "name": "stock_level"})
    assert answer.tool_calls == []  # nothing for the client to run
    assert [c["tool"] for c in calls(url)] == ["stock_level"]