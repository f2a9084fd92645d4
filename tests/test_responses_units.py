"""The Responses API's pieces without a server: input items, the event builder, background runs, path templates."""

from __future__ import annotations

import asyncio
import threading

import msgspec
import pytest
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent
from openai import omit
from openai._models import construct_type_unchecked

from llm_middleware.api.core.routing import MethodNotAllowedError, Route, Router, path_params
from llm_middleware.api.responses.items import as_input, conversation, items_decoder
from llm_middleware.api.responses.render import ResponseBuilder, usage_of
from llm_middleware.api.responses.request import check_request, thinking
from llm_middleware.api.responses.runs import BackgroundRuns, Run
from llm_middleware.api.responses.types import InputItem, ResponseObject, responses_request_decoder
from llm_middleware.errors import EngineNotReadyError, InvalidRequestError


def items(*dicts: dict) -> list[InputItem]:
    return msgspec.convert(list(dicts), list[InputItem])


# ---- input items --------------------------------------------------------------------------------------


def test_a_string_input_is_one_user_message() -> None:
    convo, start = conversation([], "Hello")
    assert convo.messages == [{"role": "user", "content": "Hello"}] and start == 0
    assert convo.items[0].id.startswith("msg_") and convo.items[0].content[0].text == "Hello"


def test_items_become_chat_messages() -> None:
    convo, _ = conversation([], items(
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                        {"type": "input_text", "text": "b"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
    ))
    assert convo.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "Let me look.", "reasoning_content": "hmm", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": {"city": "Rome"}}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "name": "weather", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "name": "weather", "content": "rain"},
    ]
    ids = [item.id for item in convo.items]
    assert ids[2:5] == ["rs_1", "msg_1", "fc_1"] and len(set(ids)) == len(ids)
    # Stored and read back, the items make the same messages, and a new input continues them.
    again, start = conversation(items_decoder.decode(as_input(convo.items)), "and now?")
    assert again.messages == [*convo.messages, {"role": "user", "content": "and now?"}]
    assert start == len(convo.items) and [item.id for item in again.items[:start]] == ids


def test_calls_after_a_result_are_a_new_assistant_turn() -> None:
    convo, _ = conversation([], items(
        {"role": "user", "content": "Plan a trip."},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call", "call_id": "c2", "name": "hotel", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "booked"},
    ))
    assert [(m["role"], [c["id"] for c in m.get("tool_calls", ())]) for m in convo.messages] == [
        ("user", []), ("assistant", ["c1"]), ("tool", []), ("assistant", ["c2"]), ("tool", [])]


@pytest.mark.parametrize(("item", "param"), [
    ({"type": "function_call_output", "call_id": "call_9", "output": "x"}, "input[1].call_id"),
    ({"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}, "input[1].content[0].type"),
    ({"role": "wizard", "content": "x"}, "input[1].role"),
    ({"type": "item_reference", "id": "msg_1"}, "input[1].type"),
    ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{nope"}, "input[1].arguments"),
    ({"type": "function_call", "call_id": "c", "name": "f"}, "input[1].arguments"),
    ({"role": "user"}, "input[1].content"),
])
def test_bad_items_are_refused_by_name(item: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        conversation([], items({"role": "user", "content": "hi"}, item))
    assert refused.value.param == param


def test_request_checks() -> None:
    def check(body: dict) -> str | None:
        try:
            check_request(responses_request_decoder.decode(msgspec.json.encode(body)))
        except InvalidRequestError as exc:
            return exc.param
        return None

    assert check({"input": "x", "tools": [{"type": "web_search"}]}) == "tools[0].type"
    assert check({"input": "x", "conversation": "conv_1"}) == "conversation"
    assert check({"input": "x", "background": True, "store": False}) == "store"
    assert check({"input": "x", "text": {"format": {"type": "json_schema", "name": "P"}}}) == "text.format.schema"
    assert check({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {}}],
                  "tool_choice": {"type": "function", "name": "f"}}) is None
    for effort, expected in ((None, None), ("none", False), ("minimal", False), ("high", True)):
        body = responses_request_decoder.decode(msgspec.json.encode({"reasoning": {"effort": effort}}))
        assert thinking(body) is expected


# ---- the builder, checked by the SDK's own stream accumulator -------------------------------------------


def skeleton(**changes) -> ResponseObject:
    fields = dict(id="resp_1", created_at=1, status="in_progress", background=False, instructions=None,
                  max_output_tokens=None, model="tiny", parallel_tool_calls=True, previous_response_id=None,
                  reasoning={"effort": None, "summary": None}, store=True, temperature=None,
                  text={"format": {"type": "text"}}, tool_choice="auto", tools=[], top_logprobs=0, top_p=None,
                  truncation="disabled", user=None, metadata={})
    return msgspec.convert({**fields, **changes}, ResponseObject)


def sdk_accumulates(events: list) -> object:
    """Feed encoded events to the SDK's ``responses.stream`` accumulator; its final response."""
    state = ResponseStreamState(input_tools=[], text_format=omit)
    numbers = []
    for event in events:
        raw = msgspec.json.decode(msgspec.json.encode(event))
        numbers.append(raw["sequence_number"])
        state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=raw))
    assert numbers == list(range(len(numbers)))
    return state._completed_response  # noqa: SLF001


def test_builder_events_accumulate_in_the_sdk() -> None:
    builder = ResponseBuilder(skeleton())
    events = builder.created()
    events += builder.reasoning("Think") + builder.reasoning("ing.")
    events += builder.text("Hel") + builder.text("lo")
    events += builder.tool_call("call_1", "weather", '{"city": "Paris"}')
    events += builder.finish("tool_calls", usage_of(10, 5))
    kinds = [type(e).__struct_config__.tag for e in events]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    added = events[16].item
    assert (added.arguments, added.status) == ("", "in_progress")  # as it was when it began
    final = sdk_accumulates(events)
    assert final.status == "completed" and final.output_text == "Hello"
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output[0].content[0].text == "Thinking."
    assert final.output[2].arguments == '{"city": "Paris"}' and final.usage.total_tokens == 15


def test_a_cut_response_is_incomplete_and_a_failed_one_says_why() -> None:
    builder = ResponseBuilder(skeleton())
    events = builder.created() + builder.text("abc") + builder.finish("length", usage_of(3, 1))
    assert events[-1].response.status == "incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-2].item.status == "incomplete"
    builder = ResponseBuilder(skeleton())
    events = builder.created() + builder.text("abc") + builder.fail(EngineNotReadyError("stopping"))
    assert [type(e).__struct_config__.tag for e in events[-5:]] == [
        "error", "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.failed"]
    assert events[-1].response.error.code == "server_error" and [e.sequence_number for e in events] == list(range(len(events)))


# ---- background runs ----------------------------------------------------------------------------------


async def wait_for(condition, what: str) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} did not happen")


async def test_runs_are_found_by_owner_followed_and_cancelled_from_another_thread() -> None:
    runs = BackgroundRuns()
    gate = threading.Event()  # the runs live on the registry's own loop: only thread-safe signals reach them
    seen: list[str | None] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def work(run: Run) -> None:
        loops.append(asyncio.get_running_loop())
        run.publish(b"one")
        try:
            while not gate.is_set():
                await asyncio.sleep(0.01)
            run.publish(b"two")
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append(run.stop_reason)
            run.publish(b"stopped")

    run = Run("resp_a", "key:alice")
    await runs.start(run, work)
    assert runs.find("key:alice", "resp_a") is run and runs.find("key:bob", "resp_a") is None

    followed: list[bytes] = []

    def follow() -> None:  # a reader on a loop of its own
        async def read() -> None:
            async for data in run.frames():
                followed.append(data)
        asyncio.run(read())

    reader = threading.Thread(target=follow)
    reader.start()
    await wait_for(lambda: followed == [b"one"], "the first frame")
    gate.set()
    await wait_for(lambda: followed == [b"one", b"two"], "the second frame")
    threading.Thread(target=run.stop, args=("cancel",)).start()
    await wait_for(lambda: run.ended, "the run's end")
    await asyncio.to_thread(reader.join)
    assert seen == ["cancel"] and followed == [b"one", b"two", b"stopped"]
    assert loops[0] is not asyncio.get_running_loop()  # not the loop of the request that started it
    assert runs.find("key:alice", "resp_a") is None and len(runs) == 0
    assert [data async for data in run.frames(after=0)] == [b"two", b"stopped"]
    await runs.shutdown()


async def test_shutdown_stops_every_run_and_refuses_new_ones() -> None:
    runs = BackgroundRuns()
    reasons: list[str | None] = []

    async def work(run: Run) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # a run may still write its ending
            reasons.append(run.stop_reason)

    for n in range(3):
        await runs.start(Run(f"resp_{n}", "anonymous"), work)
    await runs.shutdown()
    assert reasons == ["shutdown"] * 3 and len(runs) == 0 and runs.closed
    late = Run("resp_late", "anonymous")  # one that slipped in as the server stopped
    await runs.start(late, work)
    await wait_for(lambda: late.ended, "the late run's end")
    assert reasons[-1] == "shutdown"
    runs.shutdown_sync()


# ---- routes with {name} segments ----------------------------------------------------------------------


async def test_path_templates() -> None:
    async def handler(request, request_id):  # pragma: no cover - never called
        raise AssertionError

    router = Router([Route("GET", "/v1/responses/{response_id}", handler, "r"),
                     Route("DELETE", "/v1/responses/{response_id}", handler, "d"),
                     Route("GET", "/v1/responses/{response_id}/input_items", handler, "i")])
    assert router.find("GET", "/v1/responses/resp_1").summary == "r"
    assert router.find("GET", "/v1/responses/resp_1/input_items").summary == "i"
    assert router.template("/v1/responses/resp_1/input_items") == "/v1/responses/{response_id}/input_items"
    with pytest.raises(MethodNotAllowedError):
        router.find("POST", "/v1/responses/resp_1")
    assert path_params("/v1/responses/{response_id}/input_items", "/v1/responses/r_2/input_items") == {
        "response_id": "r_2"}
    assert path_params("/v1/responses/{response_id}", "/v1/responses/a/b") == {}
