"""Hostile requests through a real server: each is answered (refused with the right 4xx, or served) within
seconds, while the host app's own route, polled all the while, keeps answering within about a second.

The server is hypercorn serving a raw ASGI host app wrapped by the middleware (``server_apps``), whose
every API request passes a synchronous ``authorize``: the host route and the API share one event loop.
Under a WSGI server (werkzeug, around Flask) every API request runs on the middleware's one bridge loop:
there the API itself is polled, and must keep answering too.  Last, in process: the API's work needs
nothing of asyncio's default executor, which belongs to the host's code as much as to ours.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import Server, server_env, serving

from llm_middleware.api.app import API
from llm_middleware.api.core.http import Request
from llm_middleware.engine import Engine

# The host route must answer every poll within this many seconds ("about a second", on a loaded machine).
HOST_LATENCY = 1.5
# Every hostile request must be answered within this many seconds.
ANSWER_WITHIN = 60

HELLO = [{"role": "user", "content": "Hello"}]
# Ten billion iterations: a template that never ends in practice.
ENDLESS_TEMPLATE = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
TEN_MB_PROMPT_WORDS = 2_000_000  # "word " is five bytes


WSGI_SERVER = Server([
    "-c", "import sys; from werkzeug.serving import run_simple; from server_apps import slow_authorize_flask; "
          "run_simple('127.0.0.1', int(sys.argv[1]), slow_authorize_flask, threaded=True)",
])


@pytest.fixture(scope="module")
def urls(tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    servers = {"asgi": Server(["-m", "hypercorn", "server_apps:slow_authorize_app"]), "wsgi": WSGI_SERVER}
    with serving(servers, server_env(tiny_model_dir)) as started:
        yield started


@pytest.fixture
def url(urls: dict[str, str]) -> str:
    return urls["asgi"]


class HostPoller:
    """Polls a route from a thread (by default the host app's own) and keeps the slowest answer's time."""

    def __init__(self, url: str, path: str = "/", expect: str = "raw home") -> None:
        self.url = url + path
        self.expect = expect
        self.worst = 0.0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        # Until stopped, and once more after: the host must still answer once the hostile request is over.
        with httpx.Client(timeout=10) as client:
            while True:
                stopping = self._stop.is_set()
                began = time.monotonic()
                try:
                    response = client.get(self.url)
                    if self.expect not in response.text:
                        self.failures.append(f"{response.status_code}: {response.text[:100]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.worst = max(self.worst, time.monotonic() - began)
                if stopping:
                    return
                self._stop.wait(0.02)

    @contextmanager
    def running(self) -> Iterator[HostPoller]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


@dataclass(frozen=True)
class Hostile:
    """A hostile request and the answer it must get: ``status``, and the error's ``param`` or ``code``.

    ``body`` makes the JSON body (bytes: sent as they are).
    """

    method: str
    path: str
    body: Callable[[], Any] | None
    status: int
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None


def chat(**fields: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"messages": HELLO, "max_tokens": 4, **fields}


def tools(count: int, properties: int) -> list[dict[str, Any]]:
    schema = {"type": "object", "properties": {f"p{j}": {"type": "integer"} for j in range(properties)}}
    return [{"type": "function", "function": {"name": f"tool_{i}", "parameters": schema}} for i in range(count)]


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def deeply_nested_chat() -> bytes:
    """A chat body with a template variable nested 100k levels deep (too deep for ``json.dumps`` to write)."""
    return (b'{"messages": [{"role": "user", "content": "Hello"}], "chat_template_kwargs": {"deep": '
            + b"[" * 100_000 + b"]" * 100_000 + b"}}")


HOSTILE: dict[str, Hostile] = {
    "template code with an endless loop": Hostile(
        "POST", "/ai/v1/chat/completions", chat(chat_template_kwargs={"chat_template": ENDLESS_TEMPLATE}),
        400, param="chat_template_kwargs.chat_template"),
    "template code through /tokenize": Hostile(
        "POST", "/ai/tokenize", lambda: {"messages": HELLO, "chat_template_kwargs": {"chat_template": ENDLESS_TEMPLATE}},
        400, param="chat_template_kwargs.chat_template"),
    "a huge chat_template": Hostile(
        "POST", "/ai/v1/chat/completions", chat(chat_template_kwargs={"chat_template": "{{ messages }}" * 500_000}),
        400, param="chat_template_kwargs.chat_template"),
    "a template rendering gigabytes": Hostile(
        "POST", "/ai/v1/chat/completions", chat(chat_template_kwargs={"chat_template": "{{ 'ha' * 1000000000 }}"}),
        400, param="chat_template_kwargs.chat_template"),
    "10k logit_bias keys": Hostile(
        "POST", "/ai/v1/chat/completions", chat(logit_bias={str(i): 1 for i in range(10_000)}), 400, param="logit_bias"),
    "100k stop_token_ids": Hostile(
        "POST", "/ai/v1/chat/completions", chat(stop_token_ids=list(range(100_000))), 400, param="stop_token_ids"),
    "a 1,000-prompt completions list": Hostile(
        "POST", "/ai/v1/completions", lambda: {"prompt": ["Hello"] * 1000, "max_tokens": 4}, 400, param="prompt"),
    "3,000 tools": Hostile("POST", "/ai/v1/chat/completions", chat(tools=tools(3000, 4)), 400, param="tools"),
    "128 tools, each schema checked": Hostile(
        "POST", "/ai/v1/chat/completions", chat(tools=tools(128, 30), tool_choice="none"), 200),
    "a 5,000-property response_format, compiled into a grammar": Hostile(
        "POST", "/ai/v1/chat/completions", chat(response_format={"type": "json_schema", "json_schema": {
            "name": "big", "schema": {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5000)}}}}),
        200),
    "100k messages": Hostile(
        "POST", "/ai/v1/chat/completions", lambda: {"messages": HELLO * 100_000, "max_tokens": 4}, 400, param="messages"),
    "100k content parts": Hostile(
        "POST", "/ai/v1/chat/completions",
        lambda: {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 100_000}]},
        400, param="messages[0].content"),
    "100k embedding inputs": Hostile("POST", "/ai/v1/embeddings", lambda: {"input": ["a"] * 100_000}, 400, param="input"),
    "JSON nested 100k deep": Hostile("POST", "/ai/v1/chat/completions", deeply_nested_chat, 400, code="invalid_json"),
    "tool parameters nested 100 deep": Hostile(
        "POST", "/ai/v1/chat/completions",
        chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "x": nested(100)}}}]),
        400, param="tools[0].function.parameters"),
    "a 10 MB completions prompt": Hostile(
        "POST", "/ai/v1/completions", lambda: {"prompt": "word " * TEN_MB_PROMPT_WORDS, "max_tokens": 4},
        400, code="context_length_exceeded"),
    "a 10 MB chat message": Hostile(
        "POST", "/ai/v1/chat/completions",
        lambda: {"messages": [{"role": "user", "content": "word " * TEN_MB_PROMPT_WORDS}], "max_tokens": 4},
        400, code="context_length_exceeded"),
    "a slow synchronous authorize": Hostile("GET", "/ai/v1/models", None, 200, headers={"x-slow-authorize": "1"}),
}


def send_while_polling(url: str, hostile: Hostile, poller: HostPoller) -> httpx.Response:
    """Send ``hostile`` while ``poller`` polls; the route polled must have kept answering in time."""
    body = hostile.body() if hostile.body is not None else None
    headers = {"content-type": "application/json", **(hostile.headers or {})}
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    with poller.running():
        response = httpx.request(hostile.method, url + hostile.path, content=content, headers=headers,
                                 timeout=ANSWER_WITHIN)
    assert not poller.failures, poller.failures
    assert poller.worst < HOST_LATENCY, f"{poller.url} took {poller.worst:.2f} s to answer"
    return response


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_request_delays_only_itself(url: str, name: str) -> None:
    hostile = HOSTILE[name]
    response = send_while_polling(url, hostile, HostPoller(url))
    assert response.status_code == hostile.status, response.text[:500]
    if hostile.status >= 400:
        error = response.json()["error"]
        if hostile.param is not None:
            assert error["param"] == hostile.param, error
        if hostile.code is not None:
            assert error["code"] == hostile.code, error


@pytest.mark.parametrize("name", [
    "template code with an endless loop", "a 5,000-property response_format, compiled into a grammar",
    "100k messages", "a 10 MB chat message", "a slow synchronous authorize",
])
def test_under_wsgi_a_hostile_request_does_not_hold_up_the_api(urls: dict[str, str], name: str) -> None:
    hostile = HOSTILE[name]
    response = send_while_polling(urls["wsgi"], hostile, HostPoller(urls["wsgi"], "/ai/v1/models", '"object":"list"'))
    assert response.status_code == hostile.status, response.text[:500]


# ---- small answers that were wrong --------------------------------------------------------------


def test_max_tokens_beyond_the_context_is_context_length_exceeded(url: str) -> None:
    context = httpx.get(url + "/ai/v1/models").json()["data"][0]["max_model_len"]
    for path, body, param in [
        ("/ai/v1/chat/completions", {"messages": HELLO, "max_tokens": context}, "max_tokens"),
        ("/ai/v1/chat/completions", {"messages": HELLO, "max_completion_tokens": context}, "max_completion_tokens"),
        ("/ai/v1/completions", {"prompt": "Hello", "max_tokens": context}, "max_tokens"),
    ]:
        response = httpx.post(url + path, json=body, timeout=30)
        error = response.json()["error"]
        assert response.status_code == 400 and error["code"] == "context_length_exceeded", response.text
        assert error["param"] == param and str(context) in error["message"]
    # What fits is served: the prompt plus max_tokens within the context.
    fits = httpx.post(url + "/ai/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": context - 3}, timeout=60)
    assert fits.status_code == 200, fits.text


def test_model_path_without_an_id_is_model_not_found(url: str) -> None:
    response = httpx.get(url + "/ai/v1/models/")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


# ---- the host's default executor ----------------------------------------------------------------


def test_the_api_needs_nothing_of_the_default_executor(tiny_model_dir: Path) -> None:
    engine = Engine(tiny_model_dir, seed=0)
    engine.wait_ready_sync(120)
    api = API(engine)

    async def ask(path: str, body: dict[str, Any]) -> int:
        request = Request("POST", path, "/ai", {"content-type": "application/json"}, body=json.dumps(body).encode())
        return (await api.handle(request)).status

    async def main() -> list[int]:
        # The host's code holds every thread of the loop's default executor.
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))
        release = threading.Event()
        held = loop.run_in_executor(None, release.wait)
        try:
            return [await asyncio.wait_for(ask(path, body), ANSWER_WITHIN) for path, body in [
                ("/tokenize", {"messages": HELLO}),
                ("/detokenize", {"tokens": [1, 2, 3]}),
                ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 2}),
                ("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 2, "echo": True}),
            ]]
        finally:
            release.set()
            await held

    try:
        assert asyncio.run(main()) == [200, 200, 200, 200]
    finally:
        engine.shutdown()
