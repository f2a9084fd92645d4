"""Bad input never reaches a 500 or the engine: named cases, then fuzzing (hypothesis on the request
Structs, schemathesis against our own ``/openapi.json``), all with fixed seeds and bounded examples."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from engine_state import default_worker
from schemathesis.checks import not_a_server_error
from test_dispatch import ShopASGI, asgi_request, shop_wsgi

from llm_middleware.api.app import API
from llm_middleware.api.core.decoding import decode_body
from llm_middleware.api.core.http import Request
from llm_middleware.api.openai.types.chat import ChatCompletionRequest
from llm_middleware.api.openai.types.completions import CompletionRequest
from llm_middleware.api.openai.types.embeddings import EmbeddingRequest
from llm_middleware.api.openai.types.tokenize import DetokenizeRequest, TokenizeRequest
from llm_middleware.engine.engine import Engine
from llm_middleware.errors import InvalidRequestError, LLMError
from llm_middleware.middleware import LLMMiddleware

HELLO = [{"role": "user", "content": "Hello"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def nested(depth: int) -> Any:
    """A JSON value whose arrays nest ``depth`` levels deep."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def call_of(arguments: Any) -> dict[str, Any]:
    return {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    """A short context keeps every generation the fuzzers trigger short."""
    engine = Engine(tiny_model_dir, name="tiny", max_model_len=48, max_batch_size=16, seed=0)
    engine.wait_ready_sync(120)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def mw(engine: Engine) -> LLMMiddleware:
    return LLMMiddleware(ShopASGI(), engine=engine, max_body_size=64 * 1024)


# ---- named cases --------------------------------------------------------------------------------

CHAT_CASES: list[tuple[str, Any, int, str | None]] = [
    # (what, body, status, param)
    ("missing messages", {"model": "tiny"}, 400, "messages"),
    ("empty messages", {"messages": []}, 400, "messages"),
    ("messages not a list", {"messages": "Hello"}, 400, "messages"),
    ("unknown role", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ("content of the wrong type", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("image part", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content[0].type"),
    ("negative max_tokens", {"messages": HELLO, "max_tokens": -1}, 400, "max_tokens"),
    ("zero max_tokens", {"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens as text", {"messages": HELLO, "max_tokens": "ten"}, 400, "max_tokens"),
    ("absurd n", {"messages": HELLO, "n": 10_000}, 400, "n"),
    ("negative n", {"messages": HELLO, "n": -2}, 400, "n"),
    ("absurd top_logprobs", {"messages": HELLO, "logprobs": True, "top_logprobs": 500}, 400, "top_logprobs"),
    ("negative top_logprobs", {"messages": HELLO, "logprobs": True, "top_logprobs": -1}, 400, "top_logprobs"),
    ("temperature out of range", {"messages": HELLO, "temperature": 1e300}, 400, "temperature"),
    ("seed beyond 64 bits", {"messages": HELLO, "seed": 2**64 - 1, "max_tokens": 1}, 400, "seed"),
    ("too many stop strings", {"messages": HELLO, "stop": ["a"] * 17}, 400, "stop"),
    ("logit_bias key not a token id", {"messages": HELLO, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ("prompt beyond the context", {"messages": [{"role": "user", "content": "word " * 200}]}, 400, "messages"),
    ("unknown model", {"messages": HELLO, "model": "gpt-17"}, 404, "model"),
    ("invalid JSON schema", {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "banana"}}}}, 400, "response_format.json_schema.schema"),
    ("dangling $ref", {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"$ref": "#/$defs/missing"}}}}, 400, "response_format.json_schema.schema"),
    ("tool parameters not a schema", {"messages": HELLO, "tools": [
        TOOL, {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": "x"}}}]},
        400, "tools[1].function.parameters"),
    ("tool parameters with an unknown type", {"messages": HELLO, "tool_choice": "none", "tools": [
        {"type": "function", "function": {"name": "g", "parameters": {"type": "banana"}}}]}, 400, "tools[0].function.parameters"),
    ("invalid guided_regex", {"messages": HELLO, "guided_regex": "(("}, 400, "guided_regex"),
    ("guided_regex with a JSON format", {"messages": HELLO, "guided_regex": "a+",
                                         "response_format": {"type": "json_object"}}, 400, "guided_regex"),
    ("tool_choice naming no tool", {"messages": HELLO, "tools": [TOOL],
                                    "tool_choice": {"type": "function", "function": {"name": "nope"}}}, 400, "tool_choice.function.name"),
    # Caps on what a request carries (docs/api.md: *Limits on what a request can ask for*).
    ("a template of the client's own", {"messages": HELLO, "chat_template_kwargs": {"chat_template": "{{ 1 }}"}},
     400, "chat_template_kwargs.chat_template"),
    ("tokenize as a template variable", {"messages": HELLO, "chat_template_kwargs": {"tokenize": True}},
     400, "chat_template_kwargs.tokenize"),
    ("a special token replaced", {"messages": HELLO, "chat_template_kwargs": {"eos_token": "x"}},
     400, "chat_template_kwargs.eos_token"),
    ("the conversation replaced", {"messages": HELLO, "chat_template_kwargs": {"messages": []}},
     400, "chat_template_kwargs.messages"),
    ("a template variable too large", {"messages": HELLO, "chat_template_kwargs": {"note": "x" * 20_000}},
     400, "chat_template_kwargs.note"),
    ("a template variable nested too deep", {"messages": HELLO, "chat_template_kwargs": {"deep": nested(9)}},
     400, "chat_template_kwargs.deep"),
    ("301 logit_bias keys", {"messages": HELLO, "logit_bias": {str(i): 1 for i in range(301)}}, 400, "logit_bias"),
    ("257 stop_token_ids", {"messages": HELLO, "stop_token_ids": list(range(257))}, 400, "stop_token_ids"),
    ("a stop string of 257 characters", {"messages": HELLO, "stop": "x" * 257}, 400, "stop"),
    ("129 tools", {"messages": HELLO, "tools": [TOOL] * 129}, 400, "tools"),
    ("2049 messages", {"messages": [{"role": "user"}] * 2049}, 400, "messages"),
    ("257 content parts", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 257}]},
     400, "messages[0].content"),
    ("129 tool calls in one message", {"messages": [
        {**call_of("{}"), "tool_calls": call_of("{}")["tool_calls"] * 129}, *HELLO]}, 400, "messages[0].tool_calls"),
    ("tool parameters nested 65 deep", {"messages": HELLO, "tools": [
        {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "x": nested(64)}}}]},
     400, "tools[0].function.parameters"),
    ("a response_format schema nested 65 deep", {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "x": nested(64)}}}}, 400, "response_format.json_schema.schema"),
    ("tool-call arguments nested 65 deep", {"messages": [call_of({"x": nested(64)}), *HELLO]},
     400, "messages[0].tool_calls[0].function.arguments"),
    ("max_tokens beyond the context", {"messages": HELLO, "max_tokens": 48}, 400, "max_tokens"),
    ("max_completion_tokens beyond the context", {"messages": HELLO, "max_completion_tokens": 48},
     400, "max_completion_tokens"),
]


@pytest.mark.parametrize(("what", "body", "status", "param"), CHAT_CASES, ids=[c[0] for c in CHAT_CASES])
async def test_bad_chat_requests_are_client_errors(mw: LLMMiddleware, engine: Engine, what: str, body: Any,
                                                    status: int, param: str | None) -> None:
    for stream in (False, True):
        got, headers, raw = await asgi_request(mw, "/ai/v1/chat/completions", json={**body, "stream": stream})
        error = json.loads(raw)["error"]
        assert (got, error["param"]) == (status, param), (what, raw)
        assert headers["content-type"] == "application/json" and len(error["message"]) > 10
    assert engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": "Hi", "logprobs": 99}, "logprobs"),
    ("/v1/completions", {"prompt": [[]]}, "prompt"),
    ("/v1/completions", {"prompt": [10**9]}, "prompt"),
    ("/v1/completions", {"prompt": "Hi", "guided_regex": "[z-a]"}, "guided_regex"),
    ("/v1/completions", {"prompt": ["a"] * 129}, "prompt"),
    ("/v1/completions", {"prompt": ["a"] * 20, "n": 16}, "prompt"),  # 320 sequences: more than the queue takes
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 48}, "max_tokens"),
    ("/v1/embeddings", {"input": ["a"] * 2049}, "input"),
    ("/v1/embeddings", {"input": []}, "input"),
    ("/tokenize", {"prompt": "Hi", "messages": HELLO}, "prompt"),
    ("/tokenize", {"messages": HELLO, "chat_template_kwargs": {"chat_template": "{{ 1 }}"}},
     "chat_template_kwargs.chat_template"),
    ("/tokenize", {"messages": HELLO, "tools": [{"type": "function", "function": {"name": "g", "parameters": {"type": 3}}}]},
     "tools[0].function.parameters"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
])
async def test_bad_requests_on_other_routes(mw: LLMMiddleware, path: str, body: Any, param: str) -> None:
    status, _, raw = await asgi_request(mw, "/ai" + path, json=body)
    assert status == 400 and json.loads(raw)["error"]["param"] == param, raw


@pytest.mark.parametrize(("body", "content_type", "status", "code"), [
    (b'{"messages": [', "application/json", 400, "invalid_json"),
    (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "application/json", 400, "invalid_encoding"),
    (b"messages=hi", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (b'{"messages": []}', "application/json; charset=latin-1", 415, "unsupported_media_type"),
    (b"", "application/json", 400, "invalid_json"),
    (b'{"temperature": NaN, "messages": []}', "application/json", 400, "invalid_json"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 413, "request_too_large"),
    (b'{"messages": [], "chat_template_kwargs": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}", "application/json", 400,
     "invalid_json"),
])
async def test_malformed_bodies(mw: LLMMiddleware, body: bytes, content_type: str, status: int, code: str) -> None:
    got, _, raw = await asgi_request(mw, "/ai/v1/chat/completions", method="POST", body=body,
                                     headers=[("content-type", content_type)])
    assert (got, json.loads(raw)["error"]["code"]) == (status, code)


async def test_model_path_without_an_id_is_model_not_found(mw: LLMMiddleware) -> None:
    status, _, raw = await asgi_request(mw, "/ai/v1/models/")
    assert status == 404 and json.loads(raw)["error"]["code"] == "model_not_found"


def test_template_kwargs_are_template_variables_only(engine: Engine) -> None:
    # Every parameter of transformers' own apply_chat_template, read from the installed version.
    from transformers import PreTrainedTokenizerBase

    parameters = [name for name, p in inspect.signature(PreTrainedTokenizerBase.apply_chat_template).parameters.items()
                  if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert "chat_template" in parameters and "tokenize" in parameters
    for name in parameters:
        with pytest.raises(InvalidRequestError) as info:
            engine.chat_sync(HELLO, max_tokens=1, chat_template_kwargs={name: None})
        assert info.value.param == f"chat_template_kwargs.{name}"
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(engine.chat(HELLO, max_tokens=1, chat_template_kwargs={"chat_template": "{{ 1 }}"}))
    assert info.value.param == "chat_template_kwargs.chat_template"
    with pytest.raises(InvalidRequestError) as info:  # plain data only: nothing a template could call
        engine.apply_chat_template(HELLO, chat_template_kwargs={"helper": print})
    assert info.value.param == "chat_template_kwargs.helper"
    # A variable of the template itself is used.
    thinking = engine.apply_chat_template(HELLO, chat_template_kwargs={"enable_thinking": False})
    assert thinking.endswith("<think>\n\n</think>\n\n") and "<think>" not in engine.apply_chat_template(HELLO)


def test_a_request_of_several_prompts_counts_all_its_sequences(tiny_model_dir: Path) -> None:
    # One sequence decodes, two may wait: three prompts fit an idle engine, four never do, and while
    # one sequence holds the batch, three are too many for the queue (and none of them is submitted).
    eng = Engine(tiny_model_dir, max_model_len=64, max_batch_size=1, max_waiting=2, seed=0)
    eng.wait_ready_sync(120)
    api = API(eng)
    worker = default_worker(eng)
    try:
        def completions(prompts: int) -> tuple[int, Any]:
            status, raw = asyncio.run(answer(api, "/v1/completions", {"prompt": ["Hi"] * prompts, "max_tokens": 2}))
            return status, json.loads(raw)

        assert completions(3)[0] == 200
        status, body = completions(4)
        assert (status, body["error"]["param"]) == (400, "prompt")
        gate = threading.Event()
        worker.before_step = lambda batch: gate.wait(30)
        holder = threading.Thread(target=eng.complete_sync, args=("Hello",), kwargs={"max_tokens": 2})
        holder.start()
        for _ in range(1000):
            if eng.stats()["running"] == 1:
                break
            time.sleep(0.01)
        status, body = completions(3)
        assert (status, body["error"]["type"]) == (429, "rate_limit_error")
        assert eng.stats()["waiting"] == 0
        gate.set()
        holder.join(30)
    finally:
        worker.before_step = None
        eng.shutdown()


async def test_oversized_body_in_one_chunk_without_length_is_413_at_once(engine: Engine) -> None:
    # The last chunk already passes the limit: the answer must not wait for more body.
    mw = LLMMiddleware(ShopASGI(), engine=engine, max_body_size=100)
    status, _, raw = await asyncio.wait_for(
        asgi_request(mw, "/ai/v1/chat/completions", method="POST", body=b"x" * 101), timeout=10
    )
    assert status == 413 and json.loads(raw)["error"]["code"] == "request_too_large"


def test_chunked_wsgi_body_is_counted_as_it_arrives(engine: Engine) -> None:
    mw = LLMMiddleware(shop_wsgi, engine=engine, max_body_size=1000)
    reads: list[int] = []

    class Endless(io.RawIOBase):
        """A chunked upload that never ends: only counting while reading stops it."""

        def read(self, size: int = -1) -> bytes:
            reads.append(size)
            return b"x" * (size if 0 < size < 4096 else 4096)

    environ = {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/ai/v1/chat/completions", "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": Endless(), "wsgi.input_terminated": True,
        "wsgi.errors": io.StringIO(), "wsgi.url_scheme": "http",
    }
    started: list[str] = []
    try:
        body = b"".join(mw(environ, lambda status, headers, exc_info=None: started.append(status)))
        assert started[0].startswith("413") and json.loads(body)["error"]["code"] == "request_too_large"
        assert len(reads) < 10
    finally:
        mw.close()


async def test_guided_regex_constrains_the_output(mw: LLMMiddleware) -> None:
    status, _, raw = await asgi_request(mw, "/ai/v1/chat/completions", json={
        "messages": HELLO, "guided_regex": "(yes|no) [0-9]{2}", "max_tokens": 20, "temperature": 1, "seed": 3})
    assert status == 200
    assert re.fullmatch("(yes|no) [0-9]{2}", json.loads(raw)["choices"][0]["message"]["content"])


# ---- hypothesis on the request Structs ----------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


# Fields whose type says little about what gets past the first checks: also plausible values.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["tiny", "default"]),
    "messages": st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=20)}),
        min_size=1, max_size=3,
    ),
    "prompt": st.text(min_size=1, max_size=20) | st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=5),
    "tokens": st.lists(st.integers(min_value=0, max_value=100), max_size=5),
}


def values_of(t: msgspec.inspect.Type, garbage: bool, name: str = "") -> st.SearchStrategy[Any]:
    """Values of type ``t`` (per msgspec's type info): mostly ordinary, sometimes extreme; with
    ``garbage``, sometimes any JSON value instead.  ``name`` is the field's, for :data:`PLAUSIBLE`."""
    mi = msgspec.inspect
    if name in PLAUSIBLE:
        return st.one_of(PLAUSIBLE[name], PLAUSIBLE[name], values_of(t, garbage))
    if isinstance(t, mi.StructType):
        fields = {f.encode_name: values_of(f.type, garbage, f.encode_name) for f in t.fields}
        required = {f.encode_name for f in t.fields if f.required}
        typed = st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    elif isinstance(t, mi.UnionType):
        typed = st.one_of([values_of(member, garbage) for member in t.types])
    elif isinstance(t, mi.ListType):
        typed = st.lists(values_of(t.item_type, garbage), max_size=3)
    elif isinstance(t, mi.DictType):
        typed = st.dictionaries(st.text(max_size=6), values_of(t.value_type, garbage), max_size=3)
    elif isinstance(t, mi.LiteralType):
        typed = st.sampled_from(t.values)
    elif isinstance(t, mi.IntType):  # msgspec takes int64 and uint64
        typed = st.integers(min_value=0, max_value=8) | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    elif isinstance(t, mi.FloatType):
        typed = st.floats(min_value=0, max_value=1) | st.floats(allow_nan=False, allow_infinity=False)
    elif isinstance(t, mi.StrType):
        typed = st.text(max_size=16)
    elif isinstance(t, mi.BoolType):
        typed = st.booleans()
    elif isinstance(t, mi.NoneType):
        typed = st.none()
    else:  # Any
        return JSON_VALUES
    return st.one_of(typed, JSON_VALUES) if garbage else typed


REQUEST_TYPES = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/tokenize": TokenizeRequest,
    "/detokenize": DetokenizeRequest,
}
DECODERS = {path: msgspec.json.Decoder(struct) for path, struct in REQUEST_TYPES.items()}


def bodies(garbage: bool) -> st.SearchStrategy[tuple[str, Any]]:
    """``(path, body)`` for every route that takes a body."""
    return st.sampled_from(sorted(REQUEST_TYPES)).flatmap(
        lambda path: st.tuples(st.just(path), values_of(msgspec.inspect.type_info(REQUEST_TYPES[path]), garbage))
    )


@seed(20240611)
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies(garbage=True), raw=st.binary(max_size=64))
def test_decoding_raises_only_client_errors(body: tuple[str, Any], raw: bytes) -> None:
    path, value = body
    for payload in (json.dumps(value).encode(), raw, json.dumps(value).encode()[: len(raw)]):
        request = Request("POST", path, "/ai", {"content-type": "application/json"}, body=payload)
        try:
            decode_body(request, DECODERS[path])
        except LLMError as exc:
            assert 400 <= exc.status < 500 and exc.message


async def answer(api: API, path: str, value: Any) -> tuple[int, bytes]:
    response = await api.handle(Request("POST", path, "/ai", {"content-type": "application/json"},
                                        body=json.dumps(value).encode()))
    if response.stream is None:
        return response.status, response.body
    return response.status, b"".join([chunk async for chunk in response.stream])


@seed(20240611)
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies(garbage=False))
def test_the_api_never_answers_5xx_to_fuzzed_bodies(engine: Engine, body: tuple[str, Any]) -> None:
    path, value = body
    status, raw = asyncio.run(answer(API(engine), path, value))
    assert status < 500, raw
    assert b'"type":"server_error"' not in raw, raw


# ---- schemathesis against our own OpenAPI document ----------------------------------------------


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda mode: mode.value)
def test_openapi_operations_never_answer_5xx(mw: LLMMiddleware, mode: schemathesis.GenerationMode) -> None:
    # Positive cases follow the document (so they reach the engine), negative ones break it on purpose.
    schema = schemathesis.openapi.from_asgi("/ai/openapi.json", mw)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    if mode is schemathesis.GenerationMode.NEGATIVE:  # only bodies can be broken in many ways
        operations = [operation for operation in operations if operation.method.upper() == "POST" and operation.body]

    for operation in operations:

        @seed(20240611)
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        check()
