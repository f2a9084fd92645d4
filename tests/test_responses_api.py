"""``/v1/responses`` end to end on a real engine (the tiny random-weight Qwen3 model), in process."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import jsonschema
import pytest

from llm_middleware.api.app import API
from llm_middleware.api.core.http import Request

# Greedy and of fixed length: the tiny random-weight model may write its end token at any point.
GREEDY: dict[str, Any] = {"model": "tiny", "temperature": 0}
FIXED = {"ignore_eos": True, "max_output_tokens": 6}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                          "required": ["city"], "additionalProperties": False}, "strict": True}


class Result:
    def __init__(self, status: int, body: bytes, events: list[dict] | None) -> None:
        self.status, self.body, self.events = status, body, events

    def json(self) -> Any:
        return json.loads(self.body)


async def call(api: API, method: str, path: str, body: Any = None, *, identity: str = "key:alice",
               query: bytes = b"") -> Result:
    request = Request(method=method, path=path, root_path="/ai", headers={"content-type": "application/json"},
                      body=json.dumps(body).encode() if body is not None else b"", query_string=query,
                      identity=identity)
    response = await api.handle(request)
    if response.stream is None:
        return Result(response.status, response.body, None)
    raw = b"".join([chunk async for chunk in response.stream])
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            event = json.loads(data.removeprefix("data: "))
            assert name == "event: " + event["type"]
            events.append(event)
    return Result(response.status, raw, events)


def output_text(response: dict) -> str:
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"])


async def test_a_response_gives_the_same_tokens_as_a_chat_completion(api: API) -> None:
    chat = await call(api, "POST", "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "temperature": 0, "max_tokens": 6, "ignore_eos": True})
    created = await call(api, "POST", "/v1/responses", {
        **GREEDY, **FIXED, "instructions": "Be brief.", "input": "Hi"})
    assert created.status == 200, created.body
    response = created.json()
    assert output_text(response) == chat.json()["choices"][0]["message"]["content"]
    assert response["id"].startswith("resp_") and response["object"] == "response"
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["usage"]["output_tokens"] == 6
    assert response["usage"]["input_tokens"] == chat.json()["usage"]["prompt_tokens"]
    assert response["store"] is True and response["instructions"] == "Be brief." and response["metadata"] == {}


async def test_the_stream_is_openais_event_sequence(api: API) -> None:
    whole = (await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi"})).json()
    streamed = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi", "stream": True})
    events = streamed.events
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-5:] == ["response.output_text.delta", "response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    assert {e["response"]["id"] for e in events if e["type"].startswith("response.") and "response" in e} == {
        events[0]["response"]["id"]}
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == output_text(whole) == events[-1]["response"]["output"][0]["content"][0]["text"]
    assert events[0]["response"]["usage"] is None and events[-1]["response"]["usage"]["output_tokens"] == 6
    # A streamed response is stored when it ends, as a whole one is.
    stored = await call(api, "GET", f"/v1/responses/{events[0]['response']['id']}")
    assert stored.json() == events[-1]["response"]


async def test_stored_responses_belong_to_their_owner(api: API) -> None:
    response = (await call(api, "POST", "/v1/responses", {
        **GREEDY, **FIXED, "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
        "metadata": {"topic": "greeting"}})).json()
    path = f"/v1/responses/{response['id']}"
    assert (await call(api, "GET", path)).json() == response
    for stranger in ("key:bob", "anonymous"):
        for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/input_items"), ("POST", "/cancel")):
            refused = await call(api, method, path + suffix, identity=stranger)
            assert refused.status == 404 and refused.json()["error"]["param"] == "response_id"
        chained = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "more",
                                                             "previous_response_id": response["id"]},
                             identity=stranger)
        assert chained.status == 404 and chained.json()["error"]["code"] == "previous_response_not_found"
    items = (await call(api, "GET", path + "/input_items")).json()
    assert items["object"] == "list" and not items["has_more"]
    [item] = items["data"]
    assert item["type"] == "message" and item["content"] == [{"type": "input_text", "text": "Hi"}]
    assert items["first_id"] == items["last_id"] == item["id"]
    deleted = await call(api, "DELETE", path)
    assert deleted.json() == {"id": response["id"], "object": "response", "deleted": True}
    assert (await call(api, "GET", path)).status == 404
    unstored = (await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi", "store": False})).json()
    assert unstored["store"] is False and (await call(api, "GET", f"/v1/responses/{unstored['id']}")).status == 404


async def test_previous_response_id_continues_the_conversation(api: API) -> None:
    first = (await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "instructions": "Be brief.",
                                                       "input": "Hi"})).json()
    second = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "And then?",
                                                       "previous_response_id": first["id"]})
    # The same conversation, sent whole: the same tokens (instructions are not carried over).
    whole = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": [
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "id": "x", "status": "completed",
         "content": [{"type": "output_text", "text": output_text(first), "annotations": []}]},
        {"role": "user", "content": "And then?"}]})
    assert output_text(second.json()) == output_text(whole.json())
    assert second.json()["previous_response_id"] == first["id"]
    usage = whole.json()["usage"]  # the same prompt again: its full blocks come from the prefix cache
    assert usage["input_tokens"] == second.json()["usage"]["input_tokens"]
    assert 0 < usage["input_tokens_details"]["cached_tokens"] < usage["input_tokens"]
    listed = (await call(api, "GET", f"/v1/responses/{second.json()['id']}/input_items",
                         query=b"order=asc")).json()
    assert [item["content"][0]["text"] for item in listed["data"]] == ["And then?"]


async def test_function_call_round_trip(api: API) -> None:
    called = (await call(api, "POST", "/v1/responses", {
        **GREEDY, "input": "Weather in Paris?", "tools": [WEATHER], "tool_choice": "required"})).json()
    [call_item] = [item for item in called["output"] if item["type"] == "function_call"]
    assert call_item["name"] == "get_weather" and json.loads(call_item["arguments"])["city"] in ("Paris", "Rome")
    assert call_item["id"].startswith("fc_") and call_item["status"] == "completed"
    assert called["status"] == "completed" and called["tools"][0]["name"] == "get_weather"
    answered = await call(api, "POST", "/v1/responses", {
        **GREEDY, **FIXED, "previous_response_id": called["id"], "tools": [WEATHER],
        "input": [{"type": "function_call_output", "call_id": call_item["call_id"], "output": "sunny"}]})
    assert answered.status == 200, answered.body
    # The call and its output, sent whole, give the same answer.
    whole = await call(api, "POST", "/v1/responses", {
        **GREEDY, **FIXED, "tools": [WEATHER], "input": [
            {"role": "user", "content": "Weather in Paris?"}, call_item,
            {"type": "function_call_output", "call_id": call_item["call_id"], "output": "sunny"}]})
    assert output_text(answered.json()) == output_text(whole.json())
    orphan = await call(api, "POST", "/v1/responses", {
        **GREEDY, "input": [{"type": "function_call_output", "call_id": "call_nobody", "output": "x"}]})
    assert orphan.status == 400 and orphan.json()["error"]["param"] == "input[0].call_id"


async def test_streamed_function_call(api: API) -> None:
    events = (await call(api, "POST", "/v1/responses", {
        **GREEDY, "input": "Weather?", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
        "stream": True})).events
    kinds = [e["type"] for e in events]
    start = kinds.index("response.function_call_arguments.delta")
    assert kinds[start - 1:start + 3] == ["response.output_item.added", "response.function_call_arguments.delta",
                                          "response.function_call_arguments.done", "response.output_item.done"]
    done = events[start + 1]
    assert done["name"] == "get_weather" and json.loads(done["arguments"])["city"] in ("Paris", "Rome")
    assert kinds[-1] == "response.completed"


async def test_logprobs_when_included(api: API) -> None:
    body = {**GREEDY, **FIXED, "input": "Hi", "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    whole = (await call(api, "POST", "/v1/responses", body)).json()
    [part] = whole["output"][0]["content"]
    assert len(part["logprobs"]) == 6 and all(len(lp["top_logprobs"]) == 2 for lp in part["logprobs"])
    events = (await call(api, "POST", "/v1/responses", {**body, "stream": True})).events
    streamed = [lp for e in events if e["type"] == "response.output_text.delta" for lp in e["logprobs"]]
    assert streamed == part["logprobs"]
    plain = (await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi"})).json()
    assert plain["output"][0]["content"][0]["logprobs"] == []


async def test_json_schema_format(api: API) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
              "required": ["ok", "n"], "additionalProperties": False}
    response = (await call(api, "POST", "/v1/responses", {
        **GREEDY, "input": "Judge.", "max_output_tokens": 60,
        "text": {"format": {"type": "json_schema", "name": "Verdict", "schema": schema, "strict": True}}})).json()
    jsonschema.validate(json.loads(output_text(response)), schema)
    assert response["text"]["format"]["name"] == "Verdict"
    anything = (await call(api, "POST", "/v1/responses", {
        **GREEDY, "input": "Judge.", "max_output_tokens": 60, "text": {"format": {"type": "json_object"}}})).json()
    assert isinstance(json.loads(output_text(anything)), dict)


async def test_errors_name_the_field(api: API) -> None:
    cases = [
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": "x", "metadata": {"k" * 65: "v"}}, "metadata"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
        ({"input": "word " * 3000}, "input"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "S", "schema": {"type": "nonsense"}}}},
         "text.format.schema"),
    ]
    for body, param in cases:
        refused = await call(api, "POST", "/v1/responses", {**GREEDY, **body})
        assert refused.status == 400, body
        assert (refused.json()["error"]["param"] or "").startswith(param), (body, refused.json())
    missing = await call(api, "GET", "/v1/responses/resp_nothing")
    assert missing.status == 404 and missing.json()["error"]["type"] == "invalid_request_error"


async def until(condition: Any) -> None:
    """Wait for ``condition``; the bound only stops a test that would hang."""
    for _ in range(6000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


class GatedEngine:
    """The test engine, with each stream waiting for ``gate`` before its first delta (a thread-safe
    signal: background runs are on a loop of their own)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.started = self.closed = self.tokens = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def stream_chat(self, messages: list, **kwargs: Any):
        async def gated():
            self.started += 1
            try:
                while not self.gate.is_set():
                    await asyncio.sleep(0.01)
                async for delta in self._engine.stream_chat(messages, **kwargs):
                    self.tokens += len(delta.token_ids)
                    yield delta
            finally:
                self.closed += 1
        return gated()


async def test_background_responses_run_after_the_request_and_can_be_cancelled(api_engine) -> None:
    engine = GatedEngine(api_engine)
    api = API(engine, base_path="/ai")  # type: ignore[arg-type]
    queued = (await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi", "background": True})).json()
    assert queued["status"] == "queued" and queued["background"] is True and queued["output"] == []
    path = f"/v1/responses/{queued['id']}"
    await until(lambda: engine.started == 1)
    assert (await call(api, "GET", path)).json()["status"] == "in_progress"
    assert (await call(api, "POST", path + "/cancel", identity="key:bob")).status == 404
    cancelled = (await call(api, "POST", path + "/cancel")).json()
    assert cancelled["status"] == "cancelled"
    await until(lambda: len(api.background) == 0)
    assert engine.closed == 1 and (await call(api, "GET", path)).json()["status"] == "cancelled"
    refused = await call(api, "GET", path, query=b"stream=true")  # nothing left to follow
    assert refused.status == 400 and refused.json()["error"]["param"] == "stream"

    held = (await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi", "background": True})).json()
    await until(lambda: engine.started == 2)
    following = asyncio.ensure_future(call(api, "GET", f"/v1/responses/{held['id']}", query=b"stream=true&starting_after=1"))
    engine.gate.set()  # a run left alone ends, and is stored; a client following it gets the rest of its events
    followed = (await following).events
    assert followed[0]["sequence_number"] == 2 and followed[-1]["type"] == "response.incomplete"
    assert [e["sequence_number"] for e in followed] == list(range(2, 2 + len(followed)))
    done = (await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi", "background": True})).json()
    await until(lambda: len(api.background) == 0)
    finished = (await call(api, "GET", f"/v1/responses/{done['id']}")).json()
    assert finished["status"] == "incomplete" and finished["usage"]["output_tokens"] == 6
    assert (await call(api, "POST", f"/v1/responses/{done['id']}/cancel")).json() == finished  # as it was
    foreground = (await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi"})).json()
    refused = await call(api, "POST", f"/v1/responses/{foreground['id']}/cancel")
    assert refused.status == 400


async def test_a_streamed_background_response_and_shutdown(api_engine) -> None:
    engine = GatedEngine(api_engine)
    api = API(engine, base_path="/ai")  # type: ignore[arg-type]
    engine.gate.set()
    streamed = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi", "background": True,
                                                         "stream": True})
    kinds = [e["type"] for e in streamed.events]
    assert kinds[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert kinds[-1] == "response.incomplete"
    assert [e["sequence_number"] for e in streamed.events] == list(range(len(kinds)))

    # A client that leaves a background stream leaves the run going.
    engine.gate = threading.Event()
    request = Request(method="POST", path="/v1/responses", root_path="/ai", identity="key:alice",
                      headers={"content-type": "application/json"},
                      body=json.dumps({**GREEDY, **FIXED, "input": "Hi", "background": True, "stream": True}).encode())
    response = await api.handle(request)
    opening = await anext(response.stream)
    await response.stream.aclose()
    engine.gate.set()
    await until(lambda: len(api.background) == 0)
    left = json.loads(opening.split(b"\n\n")[0].split(b"data: ", 1)[1])["response"]["id"]
    assert (await call(api, "GET", f"/v1/responses/{left}")).json()["status"] == "incomplete"

    engine.gate = threading.Event()  # held: the server stops while it waits
    queued = (await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi", "background": True})).json()
    await until(lambda: engine.started == 3)
    await api.stop_background()
    failed = (await call(api, "GET", f"/v1/responses/{queued['id']}")).json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert engine.closed == 3
    late = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi", "background": True})
    assert late.status == 503


@pytest.fixture(scope="module")
def thinking_api(tmp_path_factory: pytest.TempPathFactory):
    """The API over an engine whose model thinks (``thinking_engine``) before it answers or calls a tool."""
    from thinking_engine import ThinkingEngine

    from llm_middleware.demo_model import build_demo_model

    model_dir = build_demo_model(tmp_path_factory.mktemp("qwen3-thinking"), arch="qwen3", size="tiny", thinking=True)
    engine = ThinkingEngine(model_dir, name="thinker", seed=0)
    engine.wait_ready_sync()
    yield API(engine, base_path="/ai")
    engine.shutdown()


async def test_reasoning_items_whole_and_streamed(thinking_api: API) -> None:
    from thinking_engine import ANSWER, THOUGHT

    body = {"model": "thinker", "input": "What is the weather?", "max_output_tokens": 200}
    whole = (await call(thinking_api, "POST", "/v1/responses", body)).json()
    reasoning, message = whole["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_") and reasoning["summary"] == []
    assert reasoning["content"] == [{"type": "reasoning_text", "text": THOUGHT}]
    assert output_text(whole) == ANSWER and whole["status"] == "completed"
    events = (await call(thinking_api, "POST", "/v1/responses", {**body, "stream": True})).events
    deltas = [e for e in events if e["type"] == "response.reasoning_text.delta"]
    assert len(deltas) > 1 and "".join(e["delta"] for e in deltas) == THOUGHT
    assert all(e["output_index"] == 0 for e in deltas)
    kinds = [e["type"] for e in events]
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    assert events[-1]["response"]["output"] == [{**reasoning, "id": deltas[0]["item_id"]},
                                                {**message, "id": events[-1]["response"]["output"][1]["id"]}]
    # Thinking switched off: no reasoning item.
    off = (await call(thinking_api, "POST", "/v1/responses", {
        **body, "max_output_tokens": 8, "reasoning": {"effort": "none"}})).json()
    assert [item["type"] for item in off["output"]] == ["message"]


async def test_a_tool_call_after_thinking_and_the_reasoning_given_back(thinking_api: API) -> None:
    from calling_engine import CALL, PREAMBLE
    from thinking_engine import THOUGHT

    tool = {"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"]}}
    called = (await call(thinking_api, "POST", "/v1/responses", {
        "model": "thinker", "input": "What is the weather?", "tools": [tool], "max_output_tokens": 200})).json()
    assert [item["type"] for item in called["output"]] == ["reasoning", "message", "function_call"]
    assert called["output"][0]["content"][0]["text"] == THOUGHT and output_text(called) == PREAMBLE
    fc = called["output"][2]
    assert (fc["name"], json.loads(fc["arguments"])) == (CALL["name"], CALL["arguments"])
    # The Agents SDK's way: the output replayed as input, the reasoning item included, with the call's result.
    replayed = await call(thinking_api, "POST", "/v1/responses", {
        "model": "thinker", "tools": [tool], "max_output_tokens": 200, "input": [
            {"role": "user", "content": "What is the weather?"}, *called["output"],
            {"type": "function_call_output", "call_id": fc["call_id"], "output": "sunny"}]})
    chained = await call(thinking_api, "POST", "/v1/responses", {
        "model": "thinker", "tools": [tool], "max_output_tokens": 200, "previous_response_id": called["id"],
        "input": [{"type": "function_call_output", "call_id": fc["call_id"], "output": "sunny"}]})
    assert replayed.status == chained.status == 200
    assert [item["type"] for item in replayed.json()["output"]] == [item["type"] for item in chained.json()["output"]]
    assert replayed.json()["usage"]["input_tokens"] == chained.json()["usage"]["input_tokens"]  # the same prompt


async def test_the_openapi_document_lists_the_routes(api: API) -> None:
    paths = (await call(api, "GET", "/openapi.json")).json()["paths"]
    assert set(paths["/v1/responses"]) == {"post"}
    assert set(paths["/v1/responses/{response_id}"]) == {"get", "delete"}
    for path in ("/v1/responses/{response_id}/cancel", "/v1/responses/{response_id}/input_items"):
        [operation] = paths[path].values()
        assert operation["parameters"][0]["name"] == "response_id"
    assert api.route_path("/v1/responses/resp_1/input_items") == "/v1/responses/{response_id}/input_items"


async def test_the_identity_authorize_returns_owns_the_response(api_engine) -> None:
    import httpx

    from llm_middleware.middleware import LLMMiddleware, RequestInfo

    async def home(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never reached
        raise AssertionError

    def user_of(info: RequestInfo) -> str | bool:  # the host app's session: here, a header naming the user
        return info.headers.get("x-user") or False

    app = LLMMiddleware(home, engine=api_engine, authorize=user_of)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test/ai/v1") as http:
        made = await http.post("/responses", json={**GREEDY, **FIXED, "input": "Hi"}, headers={"x-user": "ann"})
        path = f"/responses/{made.json()['id']}"
        assert (await http.get(path, headers={"x-user": "ann"})).json()["id"] == made.json()["id"]
        assert (await http.get(path, headers={"x-user": "ben"})).status_code == 404
        assert (await http.get(path)).status_code == 401
    assert api_engine.state == "ready"  # the middleware was given the engine: it leaves it running


async def test_a_client_leaving_a_stream_cancels_its_generation(api: API, api_engine) -> None:
    request = Request(method="POST", path="/v1/responses", root_path="/ai", identity="key:alice",
                      headers={"content-type": "application/json"},
                      body=json.dumps({**GREEDY, "input": "Hi", "stream": True, "ignore_eos": True,
                                       "max_output_tokens": 900}).encode())
    response = await api.handle(request)
    first = [await anext(response.stream) for _ in range(4)]
    assert first[0].startswith(b"event: response.created")
    assert api_engine.stats("tiny")["running"] == 1
    await response.stream.aclose()
    await until(lambda: api_engine.stats("tiny")["running"] == 0)
    created = json.loads(first[0].split(b"\n\n")[0].split(b"data: ", 1)[1])
    assert (await call(api, "GET", f"/v1/responses/{created['response']['id']}")).status == 404  # never finished


async def test_responses_in_an_sqlite_store_outlive_the_api(api_engine, tmp_path) -> None:
    from llm_middleware.store import SQLiteResponseStore

    first_store = SQLiteResponseStore(tmp_path / "responses.db")
    first = API(api_engine, base_path="/ai", response_store=first_store)
    made = (await call(first, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi"})).json()
    first_store.close()
    second_store = SQLiteResponseStore(tmp_path / "responses.db")  # a restart, or another worker process
    second = API(api_engine, base_path="/ai", response_store=second_store)
    try:
        assert (await call(second, "GET", f"/v1/responses/{made['id']}")).json() == made
        chained = await call(second, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "More",
                                                               "previous_response_id": made["id"]})
        assert chained.status == 200 and chained.json()["previous_response_id"] == made["id"]
        assert (await call(second, "GET", f"/v1/responses/{made['id']}", identity="key:bob")).status == 404
    finally:
        second_store.close()


async def test_a_cancel_through_another_process_stops_the_run(api_engine, tmp_path, monkeypatch) -> None:
    from llm_middleware.api.responses import routes
    from llm_middleware.store import SQLiteResponseStore

    monkeypatch.setattr(routes, "CANCEL_POLL_SECONDS", 0.01)
    stores = [SQLiteResponseStore(tmp_path / "shared.db") for _ in range(2)]
    engine = GatedEngine(api_engine)
    engine.gate.set()
    running, other = API(engine, response_store=stores[0]), API(api_engine, response_store=stores[1])  # type: ignore[arg-type]
    try:
        long = {**GREEDY, "input": "Hi", "background": True, "ignore_eos": True, "max_output_tokens": 1000}
        made = (await call(running, "POST", "/v1/responses", long)).json()
        await until(lambda: engine.started == 1)
        assert (await call(other, "POST", f"/v1/responses/{made['id']}/cancel")).json()["status"] == "cancelled"
        await until(lambda: len(running.background) == 0)
        assert engine.closed == 1
        await until(lambda: api_engine.stats("tiny")["running"] == 0)  # the engine reaps the abort on its next step
        assert engine.tokens < 1000  # stopped, not run to its end
        assert (await call(running, "GET", f"/v1/responses/{made['id']}")).json()["status"] == "cancelled"
    finally:
        for store in stores:
            store.close()


async def test_query_numbers_and_ids_are_bounded(api: API) -> None:
    long = {**GREEDY, "input": "Hi", "background": True, "ignore_eos": True, "max_output_tokens": 1000}
    made = (await call(api, "POST", "/v1/responses", long)).json()
    try:
        for query in (b"stream=true&starting_after=-1000000000000", b"stream=true&starting_after=--1",
                      b"stream=true&starting_after=%C2%B2"):
            refused = await call(api, "GET", f"/v1/responses/{made['id']}", query=query)
            assert (refused.status, refused.json()["error"]["param"]) == (400, "starting_after")
        for query in (b"limit=%C2%B2", b"limit=0", b"limit=101"):
            refused = await call(api, "GET", f"/v1/responses/{made['id']}/input_items", query=query)
            assert (refused.status, refused.json()["error"]["param"]) == (400, "limit")
    finally:
        await call(api, "POST", f"/v1/responses/{made['id']}/cancel")
    item = {"type": "message", "role": "user", "content": "Hi", "id": "x" * 257}
    refused = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": [item]})
    assert refused.status == 400 and "input[0].id" in refused.json()["error"]["param"]


async def test_a_cancelled_background_response_can_be_continued(api: API) -> None:
    long = {**GREEDY, "input": "Hi", "background": True, "ignore_eos": True, "max_output_tokens": 1000}
    made = (await call(api, "POST", "/v1/responses", long)).json()
    assert (await call(api, "POST", f"/v1/responses/{made['id']}/cancel")).json()["status"] == "cancelled"
    chained = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "More",
                                                        "previous_response_id": made["id"]})
    assert chained.status == 200, chained.body
    alone = (await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "More"})).json()
    assert chained.json()["usage"]["input_tokens"] > alone["usage"]["input_tokens"]  # "Hi" came first


async def test_a_locked_store_is_a_503_to_retry(api_engine, tmp_path) -> None:
    import sqlite3

    from llm_middleware.store import SQLiteResponseStore

    path = tmp_path / "responses.db"
    store = SQLiteResponseStore(path, busy_timeout=0.1)
    api = API(api_engine, response_store=store)
    await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi"})  # creates the file
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        refused = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi"})
        assert refused.status == 503 and refused.json()["error"]["code"] == "store_unavailable"
        assert str(tmp_path) not in refused.body.decode()
        # A streamed client has its whole answer by then: the stream ends as the turn did.
        streamed = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "Hi", "stream": True})
        assert [e["sequence_number"] for e in streamed.events] == list(range(len(streamed.events)))
        assert streamed.events[-1]["type"] == "response.incomplete"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        store.close()


async def test_tool_choice_must_name_an_offered_tool(api: API) -> None:
    named = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "x", "tools": [WEATHER],
                                                      "tool_choice": {"type": "function", "name": "f"}})
    assert (named.status, named.json()["error"]["param"]) == (400, "tool_choice.name")
    nothing = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "x",
                                                        "tool_choice": {"type": "function", "name": "f"}})
    assert (nothing.status, nothing.json()["error"]["param"]) == (400, "tool_choice")
    required = await call(api, "POST", "/v1/responses", {**GREEDY, **FIXED, "input": "x", "tool_choice": "required"})
    assert (required.status, required.json()["error"]["param"]) == (400, "tool_choice")
