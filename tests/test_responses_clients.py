"""Real clients of the Responses API against real servers on loopback: the official ``openai`` SDK and the
OpenAI Agents SDK, against a raw ASGI app and Flask, both under hypercorn."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field
from servers import Server, server_env, serving

SERVERS = ["asgi", "flask"]
MODEL = "default"  # the served model, whatever its name
# Greedy and of fixed length: the tiny random-weight model may write its end token at any point.
FIXED: dict[str, Any] = {"temperature": 0, "max_output_tokens": 6, "extra_body": {"ignore_eos": True}}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city.", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                          "required": ["city"], "additionalProperties": False}}


class Verdict(BaseModel):
    """A structured answer."""

    ok: bool
    mood: Literal["happy", "sad"]
    score: int = Field(ge=0, le=9)


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    hypercorn = ["-m", "hypercorn"]
    with serving({"asgi": Server([*hypercorn, "responses_apps:asgi"]),
                  "flask": Server([*hypercorn, "responses_apps:flask"])}, server_env(tiny_model_dir)) as urls:
        yield urls


def client(url: str, key: str = "sk-alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/ai/v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.parametrize("server", SERVERS)
def test_create_retrieve_list_delete(servers: dict[str, str], server: str) -> None:
    alice, bob = client(servers[server]), client(servers[server], "sk-bob")
    response = alice.responses.create(model=MODEL, instructions="Be brief.", input="Hello there",
                                      metadata={"topic": "greeting"}, **FIXED)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 6 and isinstance(response.output_text, str)
    assert response.metadata == {"topic": "greeting"} and response.id.startswith("resp_")
    again = alice.responses.retrieve(response.id)
    assert again.model_dump() == response.model_dump()
    [item] = list(alice.responses.input_items.list(response.id))
    assert item.type == "message" and item.role == "user" and item.content[0].text == "Hello there"
    with pytest.raises(openai.NotFoundError):  # another key's response does not exist for bob
        bob.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model=MODEL, input="More", previous_response_id=response.id, **FIXED)
    alice.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(response.id)


@pytest.mark.parametrize("server", SERVERS)
def test_stream_and_parse(servers: dict[str, str], server: str) -> None:
    sdk = client(servers[server])
    with sdk.responses.stream(model=MODEL, input="Judge this.", text_format=Verdict, temperature=0,
                              max_output_tokens=80) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and "".join(deltas) == final.output_text
    assert isinstance(final.output_parsed, Verdict)
    parsed = sdk.responses.parse(model=MODEL, input="Judge this.", text_format=Verdict, temperature=0,
                                 max_output_tokens=80)
    assert parsed.output_parsed == final.output_parsed  # greedy: the same answer whole and streamed


@pytest.mark.parametrize("server", SERVERS)
def test_function_call_round_trip(servers: dict[str, str], server: str) -> None:
    sdk = client(servers[server])
    called = sdk.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice="required",
                                  temperature=0)
    [call] = [item for item in called.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"] in ("Paris", "Rome")
    answered = sdk.responses.create(
        model=MODEL, previous_response_id=called.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}], **FIXED)
    assert answered.previous_response_id == called.id and answered.output[0].type == "message"
    listed = list(sdk.responses.input_items.list(answered.id))
    assert [(item.type, item.call_id) for item in listed] == [("function_call_output", call.call_id)]


def test_background_and_cancel(servers: dict[str, str]) -> None:
    sdk = client(servers["asgi"])
    queued = sdk.responses.create(model=MODEL, input="Hello", background=True, **FIXED)
    assert queued.status == "queued" and queued.background
    deadline = time.monotonic() + 60
    while (done := sdk.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert done.status == "incomplete" and done.usage.output_tokens == 6
    assert sdk.responses.cancel(queued.id).status == "incomplete"  # a finished response stays as it was
    with pytest.raises(openai.NotFoundError):
        client(servers["asgi"], "sk-bob").responses.cancel(queued.id)
    long = sdk.responses.create(model=MODEL, input="Hello", background=True, temperature=0,
                                max_output_tokens=1500, extra_body={"ignore_eos": True})
    cancelled = sdk.responses.cancel(long.id)
    assert cancelled.status == "cancelled"
    assert sdk.responses.retrieve(long.id).status == "cancelled"


def test_agents_sdk_runs_an_agent_with_a_function_tool(servers: dict[str, str]) -> None:
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:  # a closed set: random weights write no long string
        """Get the weather of a city."""
        calls.append(city)
        return f"sunny in {city}"

    def agent() -> Agent:  # a client per event loop: Runner.run_sync runs one of its own
        model = OpenAIResponsesModel(model=MODEL, openai_client=openai.AsyncOpenAI(
            base_url=servers["flask"] + "/ai/v1", api_key="sk-alice", max_retries=0))
        # The first turn must call the tool; the SDK then lets the model choose, and the answer is structured.
        return Agent(name="Forecaster", instructions="Be brief.", tools=[get_weather], model=model,
                     model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False, temperature=0,
                                                  max_tokens=80),
                     output_type=Verdict)

    result = Runner.run_sync(agent(), "What is the weather in Paris?")
    assert len(calls) == 1 and isinstance(result.final_output, Verdict)
    assert result.last_response_id is not None and result.last_response_id.startswith("resp_")
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item"

    async def streamed() -> tuple[Any, list[str]]:
        run = Runner.run_streamed(agent(), "What is the weather in Rome?")
        events = [event.type async for event in run.stream_events()]
        return run, events

    run, events = asyncio.run(streamed())
    assert len(calls) == 2 and isinstance(run.final_output, Verdict) and "raw_response_event" in events
