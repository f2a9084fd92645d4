"""RemoteEngine's parts without servers: balancing, model names, bodies, results, SSE, failover."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import pytest

from llm_middleware.conversation.tool_calls import parse_tool_calls
from llm_middleware.errors import (
    EngineNotReadyError,
    EngineOverloadedError,
    InvalidRequestError,
    ModelNotFoundError,
)
from llm_middleware.remote import RemoteEngine
from llm_middleware.remote.bodies import chat_body, sampling_fields
from llm_middleware.remote.client import _event_data, _status_error, _transport_error
from llm_middleware.remote.dispatch import Dispatcher
from llm_middleware.remote.errors import (
    UpstreamError,
    UpstreamFailedError,
    UpstreamFailure,
    UpstreamTimeoutError,
    UpstreamUnavailable,
)
from llm_middleware.remote.health import _HideHealthChecks
from llm_middleware.remote.models import ModelNames, catalog, resolve
from llm_middleware.remote.results import ChatDeltas, chat_completion
from llm_middleware.remote.upstream import Upstream, UpstreamPool, normalize_url


def _pool(*models: list[str], healthy: bool = True) -> UpstreamPool:
    pool = UpstreamPool([f"http://u{k}:8000/v1" for k in range(len(models))])
    for upstream, served in zip(pool.upstreams, models, strict=True):
        upstream.models = {m: {"id": m} for m in served}
        upstream.healthy = healthy
    return pool


# ---- balancing --------------------------------------------------------------------------------------


def test_pick_takes_the_least_outstanding_and_alternates_between_ties() -> None:
    pool = _pool(["m"], ["m"], ["other"])
    a, b, c = pool.upstreams
    assert [pool.pick("m", []) for _ in range(4)] in ([a, b, a, b], [b, a, b, a])
    a.outstanding = 3
    assert pool.pick("m", []) is b
    assert pool.pick("m", [b]) is a  # b already failed for this request: the busy one is next
    assert pool.pick("m", [a, b]) is None
    assert pool.pick("other", []) is c


def test_out_of_rotation_upstreams_are_a_last_resort() -> None:
    pool = _pool(["m"], ["m"])
    a, b = pool.upstreams
    pool.mark_down(a, "ConnectError")
    assert [pool.pick("m", []) for _ in range(3)] == [b, b, b]
    pool.mark_down(b, "HTTP 503")
    assert pool.pick("m", []) in (a, b)  # every one is down: try them anyway
    pool.mark_up(a, {"m": {"id": "m"}})
    assert pool.pick("m", []) is a and a.error is None and b.error == "HTTP 503"


def test_urls_and_endpoints() -> None:
    upstream = Upstream(normalize_url("http://gpu-1:8000/v1/"))
    assert upstream.endpoint("chat/completions") == "http://gpu-1:8000/v1/chat/completions"
    assert upstream.endpoint("tokenize") == "http://gpu-1:8000/tokenize"
    assert Upstream("http://h/ai/v1").endpoint("detokenize") == "http://h/ai/detokenize"
    for bad in ("gpu-1:8000/v1", "ftp://h/v1", "/v1"):
        with pytest.raises(ValueError, match="absolute http"):
            normalize_url(bad)


def test_engine_options_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one upstream"):
        RemoteEngine([])
    with pytest.raises(ValueError, match="health_interval"):
        RemoteEngine(["http://h/v1"], health_interval=0)
    with pytest.raises(ValueError, match="listed twice"):
        RemoteEngine(["http://h/v1", "http://h/v1/"])
    with pytest.raises(ValueError, match="model_map"):
        RemoteEngine(["http://h/v1"], model_map={"chat": ""})
    engine = RemoteEngine("http://h/v1")
    assert engine.state == "stopped" and engine.models() == []
    assert [(s.url, s.healthy, s.error) for s in engine.upstreams()] == [("http://h/v1", False, "not started")]


# ---- model names ------------------------------------------------------------------------------------


def test_models_are_the_union_under_public_names() -> None:
    pool = _pool(["qwen", "minilm"], ["qwen"], ["llama"])
    pool.upstreams[0].models["minilm"] = {"id": "minilm", "task": "embed", "max_model_len": 512}
    names = ModelNames({"chat": "qwen", "assistant": "qwen"})
    models = catalog(pool, names)
    assert [(m.name, m.upstream_id, m.task, len(m.upstreams)) for m in models] == [
        ("chat", "qwen", "generate", 2), ("assistant", "qwen", "generate", 2),
        ("minilm", "minilm", "embed", 1), ("llama", "llama", "generate", 1),
    ]
    assert resolve(models, None, "embed").name == "minilm"
    assert resolve(models, "default", "generate").name == "chat"
    assert resolve(models, "qwen", None).name == "chat"  # the upstream id works too
    with pytest.raises(ModelNotFoundError, match="available models: chat, assistant, minilm, llama"):
        resolve(models, "gpt-9", None)


def test_a_model_whose_upstreams_are_all_down_is_listed_as_failed() -> None:
    pool = _pool(["qwen"], ["qwen"])
    for upstream in pool.upstreams:
        pool.mark_down(upstream, "ConnectError")
    [model] = catalog(pool, ModelNames(None))
    info = model.info()
    assert info.state == "failed" and "http://u0:8000/v1: ConnectError" in (info.error or "")


# ---- request bodies ---------------------------------------------------------------------------------


def test_sampling_options_become_request_fields() -> None:
    options = {"max_tokens": 5, "temperature": 0, "top_k": 3, "stop": "x", "logit_bias": {7: -100.0},
               "logprobs": True, "top_logprobs": 2, "seed": 1, "guided": {"json_schema": {"type": "object"}}}
    fields = sampling_fields(options, chat=True)
    assert fields == {
        "max_tokens": 5, "temperature": 0, "top_k": 3, "stop": "x", "seed": 1, "logit_bias": {"7": -100.0},
        "logprobs": True, "top_logprobs": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}}},
    }
    assert sampling_fields({"logprobs": True, "top_logprobs": 2}, chat=False) == {"logprobs": 2}
    body = chat_body([{"role": "user", "content": "hi"}], "m", {}, tools=[{"type": "function"}],
                     chat_template_kwargs={"enable_thinking": False}, stream=True)
    assert body["stream_options"] == {"include_usage": True} and body["tools"] and body["chat_template_kwargs"]


def test_bad_sampling_options_fail_like_the_embedded_engine() -> None:
    with pytest.raises(InvalidRequestError, match="'top_p'") as bad:
        sampling_fields({"top_p": 2.0}, chat=True)
    assert bad.value.param == "top_p"
    with pytest.raises(InvalidRequestError, match="unknown sampling option"):
        sampling_fields({"tool_choice": "auto"}, chat=True)
    with pytest.raises(InvalidRequestError, match="not supported by a remote engine") as unsupported:
        sampling_fields({"guided": {"regex": "[0-9]+"}}, chat=True)
    assert unsupported.value.code == "unsupported_parameter"


# ---- results ----------------------------------------------------------------------------------------


def _chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, int] | None = None
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "x", "object": "chat.completion.chunk", "choices": choices, "usage": usage}


def test_streamed_tool_calls_become_the_text_the_embedded_engine_writes() -> None:
    converter = ChatDeltas()
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Let me check."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                "function": {"name": "weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                "function": {"name": "time", "arguments": ""}}]}),
        _chunk({}, finish="tool_calls"),
        _chunk(usage={"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29}),
    ]
    deltas = [d for c in chunks for d in converter.feed(c)]
    assert deltas[-2].finish_reason == "stop" and deltas[-1].usage is not None and deltas[-1].usage.prompt_tokens == 9
    text = "".join(d.text for d in deltas)
    content, calls = parse_tool_calls(text, {"weather", "time"})
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("weather", {"city": "Paris"}), ("time", {})]


def test_whole_answers_keep_tool_calls_and_usage() -> None:
    answer = {"id": "up-1", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    completion = chat_completion(answer, None, "chat")
    assert completion.id == "up-1" and completion.model == "chat" and completion.usage.completion_tokens == 4
    _, calls = parse_tool_calls(completion.text, {"f"})
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 1})]


# ---- HTTP details -----------------------------------------------------------------------------------


async def test_server_sent_events_are_split_as_the_spec_says() -> None:
    raw = b': comment\r\ndata: {"a": 1}\r\n\r\nevent: x\ndata: {"b":\ndata: 2}\n\ndata:[DONE]\n\ndata: {"late": 1}\n\n'
    response = httpx.Response(200, content=raw)
    assert [json.loads(d) async for d in _event_data(response)] == [{"a": 1}, {"b": 2}]


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers=headers)


def test_error_answers_are_sorted_by_whether_the_request_may_have_run() -> None:
    refused = _status_error(_answer(400, {"error": {"message": "bad temp", "type": "invalid_request_error",
                                                    "param": "temperature", "code": None}}))
    assert isinstance(refused, UpstreamError)
    assert (refused.status, refused.message, refused.param) == (400, "bad temp", "temperature")
    assert refused.code == "upstream_error"
    unprocessable = _status_error(_answer(422, {"detail": "Field required"}))
    assert isinstance(unprocessable, UpstreamError) and unprocessable.message == "Field required"
    # A body not meant for API clients (a proxy's page) is not relayed.
    page = _status_error(_answer(404, b"<html>nginx at 10.0.0.7</html>"))
    assert isinstance(page, UpstreamError) and page.message == "The upstream server refused the request (HTTP 404)."
    # Not taken: try elsewhere.  Unusable credentials also take the upstream out; busy ones stay.
    for status, down in ((401, True), (403, True), (503, False)):
        unavailable = _status_error(_answer(status, {"error": "nope"}))
        assert isinstance(unavailable, UpstreamUnavailable)
        assert (unavailable.down, unavailable.overloaded) == (down, False)
        assert str(unavailable) == f"HTTP {status}: {{\"error\": \"nope\"}}"  # the log's detail
    busy = _status_error(_answer(429, {"error": {"message": "full"}}, {"retry-after": "3"}))
    assert isinstance(busy, UpstreamUnavailable) and busy.overloaded and not busy.down and busy.retry_after == 3
    # Other 5xx may come after the work began: the request fails, nothing is retried.
    for status, timeout in ((500, False), (502, False), (504, True)):
        failure = _status_error(_answer(status, b"Traceback ..."))
        assert isinstance(failure, UpstreamFailure) and failure.timeout == timeout
        assert str(failure) == f"HTTP {status}: Traceback ..."


def test_transport_errors_are_retried_only_where_nothing_was_sent() -> None:
    request = httpx.Request("POST", "http://u0:8000/v1/chat/completions")
    refused = _transport_error(httpx.ConnectError("Connection refused", request=request))
    assert isinstance(refused, UpstreamUnavailable) and refused.down
    slow = _transport_error(httpx.ConnectTimeout("", request=request))
    assert isinstance(slow, UpstreamUnavailable) and not slow.down and str(slow) == "ConnectTimeout"
    for sent, timeout in ((httpx.ReadTimeout, True), (httpx.WriteTimeout, True),
                          (httpx.RemoteProtocolError, False), (httpx.ReadError, False)):
        failure = _transport_error(sent("", request=request))
        assert isinstance(failure, UpstreamFailure) and failure.timeout == timeout


def test_only_health_checks_are_kept_out_of_httpx_log() -> None:
    quiet = _HideHealthChecks({"http://u0:8000/v1/models"})

    def line(method: str, url: str) -> logging.LogRecord:
        args = (method, httpx.URL(url), "HTTP/1.1", 200, "OK")
        message = 'HTTP Request: %s %s "%s %d %s"'
        return logging.getLogger("httpx").makeRecord("httpx", logging.INFO, __file__, 1, message, args, None)

    assert not quiet.filter(line("GET", "http://u0:8000/v1/models"))
    assert quiet.filter(line("POST", "http://u0:8000/v1/chat/completions"))
    assert quiet.filter(line("GET", "http://elsewhere/v1/models"))


# ---- failover ---------------------------------------------------------------------------------------


class ScriptedClient:
    """Answers per upstream URL: to ``post``, an exception to raise or ``None`` (answer ``{"from": url}``);
    to ``stream``, ``(events, failure)``: the events, then the failure raised after them (or ``None``)."""

    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.calls: list[str] = []

    async def post(self, upstream: Upstream, route: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        self.calls.append(upstream.url)
        answer = self.script[upstream.url]
        if isinstance(answer, BaseException):
            raise answer
        return {"from": upstream.url}

    async def stream(
        self, upstream: Upstream, route: str, body: dict[str, Any], request_id: str
    ) -> AsyncGenerator[Any, None]:
        self.calls.append(upstream.url)
        events, failure = self.script[upstream.url]
        for event in events:
            yield event
        if failure is not None:
            raise failure


def _dispatcher(script: dict[str, Any]) -> tuple[Dispatcher, ScriptedClient, UpstreamPool]:
    pool = _pool(["m"], ["m"])
    client = ScriptedClient(script)
    return Dispatcher(pool, client, retry_after=2), client, pool  # type: ignore[arg-type]


async def test_a_request_that_cannot_have_run_moves_to_the_next_upstream() -> None:
    refused = UpstreamUnavailable("ConnectError", down=True)
    dispatcher, client, pool = _dispatcher({"http://u0:8000/v1": ([], refused), "http://u1:8000/v1": ([1, 2], None)})
    pool.upstreams[1].outstanding = 1  # u0 goes first
    assert [e async for e in dispatcher.stream("chat/completions", "m", {}, "r")] == [1, 2]
    assert client.calls == ["http://u0:8000/v1", "http://u1:8000/v1"]
    assert not pool.upstreams[0].healthy and pool.upstreams[0].error == "ConnectError"
    assert [u.outstanding for u in pool.upstreams] == [0, 1] and dispatcher.running["m"] == 0

    busy = UpstreamUnavailable("HTTP 503: busy")
    dispatcher, client, pool = _dispatcher({"http://u0:8000/v1": busy, "http://u1:8000/v1": None})
    pool.upstreams[1].outstanding = 1
    assert await dispatcher.request("chat/completions", "m", {}, "r") == {"from": "http://u1:8000/v1"}
    assert client.calls == ["http://u0:8000/v1", "http://u1:8000/v1"] and all(u.healthy for u in pool.upstreams)


@pytest.mark.parametrize("events", [[], [1]], ids=["before-the-first-event", "mid-stream"])
async def test_a_stream_that_may_have_run_fails_alone(events: list[int], caplog: pytest.LogCaptureFixture) -> None:
    broken = UpstreamFailure("RemoteProtocolError: peer closed connection")
    dispatcher, client, pool = _dispatcher({"http://u0:8000/v1": (events, broken), "http://u1:8000/v1": ([1, 2], None)})
    pool.upstreams[1].outstanding = 1
    received = []
    with pytest.raises(UpstreamFailedError) as failed:
        async for event in dispatcher.stream("chat/completions", "m", {}, "req-9"):
            received.append(event)
    assert received == events and client.calls == ["http://u0:8000/v1"]  # not replayed on u1
    assert all(u.healthy for u in pool.upstreams) and pool.upstreams[0].outstanding == 0
    assert (failed.value.status, failed.value.code) == (502, "upstream_failed")
    assert "req-9" in failed.value.message and "u0" not in failed.value.message and "peer" not in failed.value.message
    [logged] = [r.getMessage() for r in caplog.records if "req-9" in r.getMessage()]
    assert "http://u0:8000/v1" in logged and "peer closed connection" in logged


async def test_a_timeout_fails_that_request_alone_with_a_504() -> None:
    dispatcher, client, pool = _dispatcher({"http://u0:8000/v1": UpstreamFailure("ReadTimeout", timeout=True),
                                            "http://u1:8000/v1": None})
    pool.upstreams[1].outstanding = 1
    with pytest.raises(UpstreamTimeoutError) as timed_out:
        await dispatcher.request("chat/completions", "m", {}, "req-3")
    assert client.calls == ["http://u0:8000/v1"] and all(u.healthy for u in pool.upstreams)
    assert (timed_out.value.status, timed_out.value.code) == (504, "upstream_timeout")
    assert timed_out.value.message == "The upstream server did not answer in time (request req-3)."


async def test_when_no_upstream_takes_the_request_the_log_says_why(caplog: pytest.LogCaptureFixture) -> None:
    dispatcher, _, pool = _dispatcher({"http://u0:8000/v1": UpstreamUnavailable("HTTP 503: loading"),
                                       "http://u1:8000/v1": UpstreamUnavailable("ConnectError", down=True)})
    with pytest.raises(EngineNotReadyError) as unavailable:
        await dispatcher.request("chat/completions", "m", {}, "req-5")
    assert "req-5" in unavailable.value.message and "u0" not in unavailable.value.message
    assert "loading" not in unavailable.value.message and unavailable.value.retry_after == 2
    [logged] = [r.getMessage() for r in caplog.records if "no upstream could take it" in r.getMessage()]
    assert "http://u0:8000/v1: HTTP 503: loading" in logged and "http://u1:8000/v1: ConnectError" in logged
    assert [u.healthy for u in pool.upstreams] == [True, False]
    busy = UpstreamUnavailable("HTTP 429", overloaded=True, retry_after=7)
    dispatcher, _, pool = _dispatcher({"http://u0:8000/v1": busy, "http://u1:8000/v1": busy})
    with pytest.raises(EngineOverloadedError) as overloaded:
        await dispatcher.request("chat/completions", "m", {}, "r")
    assert overloaded.value.retry_after == 7 and all(u.healthy for u in pool.upstreams)  # busy is not down


async def test_a_refused_request_is_not_retried() -> None:
    dispatcher, client, pool = _dispatcher({"http://u0:8000/v1": UpstreamError(400, "bad"),
                                            "http://u1:8000/v1": UpstreamError(400, "bad")})
    with pytest.raises(UpstreamError):
        await dispatcher.request("chat/completions", "m", {}, "r")
    assert len(client.calls) == 1 and all(u.healthy for u in pool.upstreams)
