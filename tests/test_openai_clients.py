"""Real OpenAI clients against real servers: the official SDK (sync and async), LangChain and LiteLLM.

Every server runs on loopback in its own subprocess, all started together once for the module:
a raw ASGI app serving a chat model and an embedding model, the Flask and Litestar examples under
hypercorn, a one-slot server for 429s, and the Flask example with a model that fails to load.
Each API server is driven with both ``openai.OpenAI`` and ``openai.AsyncOpenAI``; the LangChain and
LiteLLM tests are skipped when those packages are not installed.
"""

from __future__ import annotations

import asyncio
import json
import math
import operator
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field
from servers import Server, server_env, serving

API_SERVERS = ["raw-asgi", "flask-example", "litestar-example"]
KINDS = ["sync", "async"]
EMBEDDINGS = "sentence-transformers/all-MiniLM-L6-v2"  # the raw-asgi server's second model
HELLO = [{"role": "user", "content": "Hello there"}]
# Greedy and of fixed length: the tiny random-weight model may write its end token at any point.
GREEDY: dict[str, Any] = {"temperature": 0, "extra_body": {"ignore_eos": True}}

FORECAST_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME_SCHEMA = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
SCHEMAS = {"get_forecast": FORECAST_SCHEMA, "get_time": TIME_SCHEMA}
TOOLS = [{"type": "function", "function": {"name": name, "parameters": schema}} for name, schema in SCHEMAS.items()]


class Forecast(BaseModel):
    """Arguments of a tool declared the SDK's way (``openai.pydantic_function_tool``)."""

    city: Literal["Paris", "Rome"]
    days: int = Field(ge=1, le=7)


class Verdict(BaseModel):
    """A structured answer for ``chat.completions.parse``."""

    ok: bool
    mood: Literal["happy", "sad"]
    score: int = Field(ge=0, le=9)


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    """Base URLs of every server of the module."""
    hypercorn = ["-m", "hypercorn"]
    missing = {"LLM_MODEL": str(tiny_model_dir.parent / "no-such-model")}
    with serving(
        {
            "raw-asgi": Server([*hypercorn, "server_apps:two_models"]),
            "flask-example": Server([*hypercorn, "examples.flask.app:app"]),
            "litestar-example": Server([*hypercorn, "examples.litestar.app:app"]),
            "single-slot": Server([*hypercorn, "server_apps:single_slot"]),
            # The app's own page answers while the API reports the failed model.
            "broken-model": Server([*hypercorn, "examples.flask.app:app"], env=missing, ready_path="/"),
        },
        # Five servers share the machine: for a model this small, torch's intra-op threads only contend.
        {**server_env(tiny_model_dir), "OMP_NUM_THREADS": "1"},
    ) as urls:
        yield urls


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> str:
    """The chat model's id: the name of its directory."""
    return tiny_model_dir.name


class Client:
    """``openai.OpenAI`` or ``openai.AsyncOpenAI`` behind one blocking interface, so every test runs on both.

    The async client runs on its own event loop; a stream comes back as the list of its chunks.
    """

    def __init__(self, kind: str, api_url: str) -> None:
        self.api_url = api_url
        options: dict[str, Any] = {"base_url": api_url + "/v1", "api_key": "unused", "max_retries": 0, "timeout": 60}
        self.is_async = kind == "async"
        self.sdk: Any = openai.AsyncOpenAI(**options) if self.is_async else openai.OpenAI(**options)
        self._loop = asyncio.new_event_loop() if self.is_async else None

    def _run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(coroutine)  # type: ignore[union-attr]

    def call(self, method: str, **kwargs: Any) -> Any:
        """``sdk.<method>(**kwargs)``, e.g. ``call("chat.completions.create", ...)``."""
        function = operator.attrgetter(method)(self.sdk)
        if not self.is_async:
            result = function(**kwargs)
            return list(result) if isinstance(result, openai.Stream) else result

        async def run() -> Any:
            result = await function(**kwargs)
            return [chunk async for chunk in result] if isinstance(result, openai.AsyncStream) else result

        return self._run(run())

    def final_stream_completion(self, **kwargs: Any) -> Any:
        """The completion that the SDK's ``chat.completions.stream`` helper assembles from the chunks."""
        if not self.is_async:
            with self.sdk.chat.completions.stream(**kwargs) as stream:
                return stream.get_final_completion()

        async def run() -> Any:
            async with self.sdk.chat.completions.stream(**kwargs) as stream:
                return await stream.get_final_completion()

        return self._run(run())

    def close(self) -> None:
        """Close the SDK client (and the async client's event loop)."""
        if self._loop is None:
            self.sdk.close()
        else:
            self._run(self.sdk.close())
            self._loop.close()


@pytest.fixture
def connect(servers: dict[str, str]) -> Iterator[Callable[[str, str], Client]]:
    """``connect(server, kind)``: an SDK client of that kind for that server, closed after the test."""
    made: list[Client] = []

    def make(server: str, kind: str) -> Client:
        made.append(Client(kind, servers[server] + "/ai"))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture(params=[(s, k) for s in API_SERVERS for k in KINDS], ids="-".join)
def client(request: pytest.FixtureRequest, connect: Callable[[str, str], Client]) -> Client:
    """Each API server with each SDK client."""
    return connect(*request.param)


def chat_text(chunks: list[Any], index: int = 0) -> str:
    """The content of choice ``index`` rebuilt from streamed chat chunks."""
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == index)


def check_chunk_order(chunks: list[Any], n: int) -> None:
    """OpenAI's order per choice: role chunk, content, finish chunk; then one usage chunk, the only one with usage."""
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None and len(c.choices) == 1 for c in body)
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    for index in range(n):
        mine = [c.choices[0] for c in body if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant" and mine[0].delta.content == ""
        assert all(choice.delta.role is None for choice in mine[1:])
        assert [choice.finish_reason is not None for choice in mine] == [False] * (len(mine) - 1) + [True]


def assemble_tool_calls(chunks: list[Any]) -> list[dict[str, str]]:
    """Tool calls rebuilt from streamed deltas, as clients do: id and name first, then argument pieces."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.index not in calls:
                assert delta.id and delta.type == "function" and delta.function.name
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            calls[delta.index]["arguments"] += delta.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


def check_tool_call(name: str, arguments: str) -> None:
    """The arguments (a JSON string) follow the schema of the tool called."""
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


# --------------------------------------------------------------------------- models


def test_models_list_and_retrieve(client: Client, model: str) -> None:
    listed = client.call("models.list")
    assert model in [m.id for m in listed.data] and all(m.object == "model" for m in listed.data)
    card = client.call("models.retrieve", model=model)
    assert card.id == model and card.owned_by == "llm_middleware-demo"
    with pytest.raises(openai.NotFoundError) as missing:
        client.call("models.retrieve", model="gpt-9")
    assert missing.value.code == "model_not_found"


# --------------------------------------------------------------------------- chat


def test_chat_whole_and_streamed(client: Client, model: str) -> None:
    request = {"model": model, "messages": HELLO, "max_completion_tokens": 6, **GREEDY}
    whole = client.call("chat.completions.create", **request)
    [choice] = whole.choices
    assert whole.object == "chat.completion" and whole.model == model and whole.id.startswith("chatcmpl-")
    assert whole._request_id == whole.id  # the SDK reads x-request-id
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.message.tool_calls is None and choice.finish_reason == "length"
    assert (whole.usage.completion_tokens, whole.usage.total_tokens) == (6, whole.usage.prompt_tokens + 6)

    chunks = client.call("chat.completions.create", **request, stream=True, stream_options={"include_usage": True})
    check_chunk_order(chunks, 1)
    assert chat_text(chunks) == choice.message.content and chunks[-2].choices[0].finish_reason == "length"
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")  # the repeat may find its prompt cached
    assert [getattr(chunks[-1].usage, n) for n in counts] == [getattr(whole.usage, n) for n in counts]
    # Without include_usage no chunk carries usage.
    plain = client.call("chat.completions.create", **request, stream=True)
    assert chat_text(plain) == choice.message.content and all(c.usage is None and c.choices for c in plain)


def test_chat_n_choices(client: Client, model: str) -> None:
    request = {"model": model, "messages": HELLO, "max_tokens": 5, "n": 3, "seed": 7, "temperature": 1,
               "extra_body": {"ignore_eos": True}}
    whole = client.call("chat.completions.create", **request)
    assert [c.index for c in whole.choices] == [0, 1, 2] and whole.usage.completion_tokens == 15
    chunks = client.call("chat.completions.create", **request, stream=True, stream_options={"include_usage": True})
    check_chunk_order(chunks, 3)
    assert [chat_text(chunks, i) for i in range(3)] == [c.message.content for c in whole.choices]
    assert chunks[-1].usage.completion_tokens == 15


def test_chat_logprobs_and_logit_bias(client: Client, model: str) -> None:
    whole = client.call("chat.completions.create", model=model, messages=HELLO, max_tokens=4, logprobs=True,
                        top_logprobs=3, **GREEDY)
    content = whole.choices[0].logprobs.content
    assert len(content) == 4
    for position in content:
        assert len(position.top_logprobs) == 3 and position.logprob <= 0
        assert position.token == position.top_logprobs[0].token  # greedy takes the likeliest token
        assert position.logprob == pytest.approx(position.top_logprobs[0].logprob, abs=1e-4)
        assert [t.logprob for t in position.top_logprobs] == sorted((t.logprob for t in position.top_logprobs), reverse=True)
    streamed = client.call("chat.completions.create", model=model, messages=HELLO, max_tokens=4, logprobs=True,
                           top_logprobs=3, stream=True, **GREEDY)
    tokens = [t.token for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert tokens == [p.token for p in content]
    # A +100 bias makes one token the only choice.
    token = httpx.post(client.api_url + "/detokenize", json={"tokens": [42]}).json()["prompt"]
    biased = client.call("chat.completions.create", model=model, messages=HELLO, max_tokens=3, logprobs=True,
                         logit_bias={"42": 100}, **GREEDY)
    assert [p.token for p in biased.choices[0].logprobs.content] == [token] * 3


def test_seed_reproducibility(client: Client, model: str) -> None:
    request = {"model": model, "messages": HELLO, "max_tokens": 8, "temperature": 1, "extra_body": {"ignore_eos": True}}
    first = client.call("chat.completions.create", **request, seed=1234).choices[0].message.content
    assert client.call("chat.completions.create", **request, seed=1234).choices[0].message.content == first
    assert client.call("chat.completions.create", **request, seed=4321).choices[0].message.content != first
    text = {"model": model, "prompt": "Once", "max_tokens": 8, "temperature": 1, "extra_body": {"ignore_eos": True}}
    again = [client.call("completions.create", **text, seed=99).choices[0].text for _ in range(2)]
    assert again[0] == again[1]


def test_stop_sequences(client: Client, model: str) -> None:
    request = {"model": model, "messages": HELLO, "max_tokens": 16, **GREEDY}
    text = client.call("chat.completions.create", **request).choices[0].message.content
    stop = text[3:5]
    assert stop  # the tiny model writes at least 5 characters in 16 tokens
    stopped = client.call("chat.completions.create", **request, stop=[stop]).choices[0]
    assert stopped.finish_reason == "stop" and stopped.message.content == text[: text.index(stop)]
    chunks = client.call("chat.completions.create", **request, stop=stop, stream=True)
    assert chat_text(chunks) == stopped.message.content and chunks[-1].choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------- tool calls and structured output


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}], ids=["required", "named"]
)
def test_forced_tool_calls(client: Client, model: str, tool_choice: Any) -> None:
    request = {"model": model, "messages": HELLO, "max_tokens": 60, "temperature": 0, "tools": TOOLS,
               "tool_choice": tool_choice, "parallel_tool_calls": False}
    [choice] = client.call("chat.completions.create", **request).choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(tool_choice, dict):
        assert call.function.name == "get_time"
    check_tool_call(call.function.name, call.function.arguments)

    chunks = client.call("chat.completions.create", **request, stream=True)
    [streamed] = assemble_tool_calls(chunks)
    assert streamed["name"] == call.function.name and streamed["arguments"] == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(c.choices[0].delta.content in (None, "") for c in chunks)


def test_pydantic_tool_parsed_by_the_sdk(client: Client, model: str) -> None:
    request = {"model": model, "messages": HELLO, "max_tokens": 60, "temperature": 0,
               "tools": [openai.pydantic_function_tool(Forecast)], "tool_choice": "required"}
    parsed = client.call("chat.completions.parse", **request)
    arguments = parsed.choices[0].message.tool_calls[0].function.parsed_arguments
    assert isinstance(arguments, Forecast)
    final = client.final_stream_completion(**request)
    assert final.choices[0].message.tool_calls[0].function.parsed_arguments == arguments


def test_response_format(client: Client, model: str) -> None:
    base = {"model": model, "messages": HELLO, "max_tokens": 80, "temperature": 0}
    schema = {"type": "json_schema", "json_schema": {"name": "forecast", "strict": True, "schema": FORECAST_SCHEMA}}
    whole = client.call("chat.completions.create", **base, response_format=schema).choices[0]
    assert whole.finish_reason == "stop"
    jsonschema.validate(json.loads(whole.message.content), FORECAST_SCHEMA)
    chunks = client.call("chat.completions.create", **base, response_format=schema, stream=True)
    assert chat_text(chunks) == whole.message.content

    parsed = client.call("chat.completions.parse", **base, response_format=Verdict).choices[0].message
    assert isinstance(parsed.parsed, Verdict)
    assert client.final_stream_completion(**base, response_format=Verdict).choices[0].message.parsed == parsed.parsed


# --------------------------------------------------------------------------- text completions


def test_completions(client: Client, model: str) -> None:
    request = {"model": model, "prompt": "Once upon", "max_tokens": 5, **GREEDY}
    whole = client.call("completions.create", **request, logprobs=2)
    [choice] = whole.choices
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-") and choice.finish_reason == "length"
    assert len(choice.logprobs.tokens) == 5 and choice.logprobs.text_offset[0] == 0
    assert all(1 <= len(top) <= 2 for top in choice.logprobs.top_logprobs)
    chunks = client.call("completions.create", **request, stream=True, stream_options={"include_usage": True})
    *body, last = chunks
    assert last.choices == [] and last.usage == whole.usage and all(c.usage is None for c in body)
    assert "".join(c.choices[0].text for c in body) == choice.text
    assert [c.choices[0].finish_reason for c in body] == [None] * (len(body) - 1) + ["length"]

    several = client.call("completions.create", model=model, prompt=["a", "b"], n=2, max_tokens=2, **GREEDY)
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    echoed = client.call("completions.create", **request, echo=True)
    assert echoed.choices[0].text == "Once upon" + choice.text
    stopped = client.call("completions.create", **request, stop=choice.text[1:3]).choices[0]
    assert stopped.finish_reason == "stop" and stopped.text == choice.text[: choice.text.index(choice.text[1:3])]


# --------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("kind", KINDS)
def test_embeddings(connect: Callable[[str, str], Client], model: str, kind: str) -> None:
    client = connect("raw-asgi", kind)
    # The SDK percent-encodes the slash of the id; the server must still find the model.
    card = client.call("models.retrieve", model=EMBEDDINGS)
    assert card.id == EMBEDDINGS and card.owned_by == "llm_middleware"
    words = ["a cat", "a kitten", "a truck"]
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    b64 = client.call("embeddings.create", model=EMBEDDINGS, input=words)
    floats = client.call("embeddings.create", model=EMBEDDINGS, input=words, encoding_format="float")
    assert b64.object == "list" and b64.model == EMBEDDINGS and [d.index for d in b64.data] == [0, 1, 2]
    assert b64.usage.prompt_tokens == b64.usage.total_tokens > 0
    for packed, plain in zip(b64.data, floats.data):
        assert len(packed.embedding) == 384 and packed.embedding == pytest.approx(plain.embedding, abs=1e-6)
    cat, kitten, truck = (d.embedding for d in floats.data)
    assert sum(x * y for x, y in zip(cat, kitten)) > sum(x * y for x, y in zip(cat, truck))
    short = client.call("embeddings.create", model=EMBEDDINGS, input="a cat", dimensions=64, encoding_format="float")
    assert len(short.data[0].embedding) == 64
    assert math.fsum(x * x for x in short.data[0].embedding) == pytest.approx(1, abs=1e-4)
    with pytest.raises(openai.BadRequestError) as not_an_embedder:
        client.call("embeddings.create", model=model, input="a cat")
    assert not_an_embedder.value.param == "model"


# --------------------------------------------------------------------------- errors


def test_errors_raise_the_sdk_exceptions(client: Client, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad_field:
        client.call("chat.completions.create", model=model, messages=[{"role": "wizard", "content": "x"}])
    assert bad_field.value.status_code == 400 and bad_field.value.param == "messages[0].role"
    assert bad_field.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as no_logprobs:
        client.call("chat.completions.create", model=model, messages=HELLO, top_logprobs=2)
    assert no_logprobs.value.param == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as no_tools:
        client.call("chat.completions.create", model=model, messages=HELLO, tool_choice="required")
    assert no_tools.value.param == "tool_choice"
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as too_long:
            client.call("chat.completions.create", model=model, messages=[{"role": "user", "content": "word " * 3000}],
                        stream=stream)
        assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.call("chat.completions.create", model="gpt-9", messages=HELLO)
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model" and model in unknown.value.message
    with pytest.raises(openai.APIStatusError) as too_big:  # 10 MiB is the default body limit
        client.call("chat.completions.create", model=model, messages=[{"role": "user", "content": "x" * (11 * 2**20)}])
    assert type(too_big.value) is openai.APIStatusError and too_big.value.status_code == 413


def stats(url: str) -> dict[str, int]:
    """The live counts of a server_apps engine (``running``, ``waiting``, ...)."""
    return httpx.get(url + "/stats").json()


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("kind", KINDS)
def test_full_queue_raises_rate_limit_error(
    servers: dict[str, str], connect: Callable[[str, str], Client], model: str, kind: str
) -> None:
    url = servers["single-slot"]
    client = connect("single-slot", kind)
    endpoint = url + "/ai/v1/chat/completions"
    long = {"model": model, "messages": HELLO, "stream": True, "max_tokens": 2000, "min_tokens": 2000}
    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(1) as pool:
        with http.stream("POST", endpoint, json=long) as running:
            chunks = running.iter_raw()  # kept: a dropped iterator closes the response, and so the request
            next(chunks)  # the long request holds the only slot
            queued = pool.submit(httpx.post, endpoint, json={"model": model, "messages": HELLO, "max_tokens": 2}, timeout=30)
            wait_for(lambda: stats(url)["waiting"] == 1)
            with pytest.raises(openai.RateLimitError) as refused:
                client.call("chat.completions.create", model=model, messages=HELLO, max_tokens=2)
        # Leaving the stream disconnects it, which frees the slot for the queued request.
        assert queued.result().status_code == 200
    error = refused.value
    assert error.status_code == 429 and error.code == "overloaded" and error.type == "rate_limit_error"
    assert int(error.response.headers["retry-after"]) >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_model_that_failed_to_load_raises_internal_server_error(
    servers: dict[str, str], connect: Callable[[str, str], Client], kind: str
) -> None:
    url = servers["broken-model"]
    assert "Flask shop" in httpx.get(url + "/").text  # the wrapped app still serves its own routes
    client = connect("broken-model", kind)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as failed:
            client.call("chat.completions.create", model="default", messages=HELLO, max_tokens=2, stream=stream)
        assert failed.value.status_code == 503 and "failed to load" in failed.value.message
    assert client.call("models.list").data[0].state == "failed"
    health = httpx.get(url + "/ai/health")
    assert health.status_code == 503 and health.json()["error"]["code"] == "engine_failed"


# --------------------------------------------------------------------------- other OpenAI clients


def test_langchain_chat_stream_and_tools(servers: dict[str, str], model: str) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    options = {"model": model, "base_url": servers["raw-asgi"] + "/ai/v1", "api_key": "unused", "temperature": 0,
               "max_retries": 0}
    llm = langchain_openai.ChatOpenAI(**options, max_tokens=4, stream_usage=True, extra_body={"ignore_eos": True})
    answer = llm.invoke("Hello there")
    assert isinstance(answer.content, str) and answer.usage_metadata["output_tokens"] == 4
    chunks = list(llm.stream("Hello there"))
    assert "".join(c.content for c in chunks) == answer.content
    assert sum(c.usage_metadata["output_tokens"] for c in chunks if c.usage_metadata) == 4
    tools = langchain_openai.ChatOpenAI(**options, max_tokens=60).bind_tools([TOOLS[0]], tool_choice="get_forecast")
    [call] = tools.invoke("Weather?").tool_calls
    assert call["name"] == "get_forecast"
    jsonschema.validate(call["args"], FORECAST_SCHEMA)


def test_litellm_chat_and_stream(servers: dict[str, str], model: str) -> None:
    litellm = pytest.importorskip("litellm")  # conftest sets LITELLM_LOCAL_MODEL_COST_MAP: no network at import
    request = {"model": f"openai/{model}", "api_base": servers["raw-asgi"] + "/ai/v1", "api_key": "unused",
               "messages": HELLO, "max_tokens": 4, "temperature": 0, "extra_body": {"ignore_eos": True}}
    answer = litellm.completion(**request)
    text = answer.choices[0].message.content
    assert isinstance(text, str) and answer.usage.completion_tokens == 4
    chunks = list(litellm.completion(**request, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
