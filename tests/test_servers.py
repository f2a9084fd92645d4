"""Real servers on loopback: hypercorn (ASGI), werkzeug (WSGI) and the frameworks' own ``run`` commands
(``flask run``, ``quart run``, ``litestar run``) serving the middleware and the examples.

Every server runs in its own subprocess on a free port, all started together once for the module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from disconnects import leave_a_long_stream
from servers import Server, server_env, serving

# name -> (command after `python`, home page text, whether the app exposes /stats)
SERVERS: dict[str, tuple[list[str], str, bool]] = {
    "hypercorn-flask": (["-m", "hypercorn", "server_apps:flask_wrapped"], "flask home", True),
    "hypercorn-raw-asgi": (["-m", "hypercorn", "server_apps:raw_asgi"], "raw home", True),
    "werkzeug-flask": (
        ["-c", "import sys; from werkzeug.serving import run_simple; from server_apps import flask_wrapped; "
               "run_simple('127.0.0.1', int(sys.argv[1]), flask_wrapped, threaded=True)"],
        "flask home", True,
    ),
    "hypercorn-flask-example": (["-m", "hypercorn", "examples.flask.app:app"], "Flask shop", False),
    "flask-run-example": (["-m", "flask", "--app", "examples.flask.app", "run"], "Flask shop", False),
    "hypercorn-litestar-example": (["-m", "hypercorn", "examples.litestar.app:app"], "Litestar shop", False),
    "hypercorn-quart-example": (["-m", "hypercorn", "examples.quart.app:app"], "Quart shop", False),
    "quart-run-example": (["-m", "quart", "--app", "examples.quart.app:app", "run"], "Quart shop", False),
    "litestar-run-example": (["-m", "litestar", "--app", "examples.litestar.app:app", "run"], "Litestar shop", False),
}
WITH_STATS = [name for name, (_, _, stats) in SERVERS.items() if stats]
CHAT = {"messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    """Base URLs of every server, each started once and stopped at the end of the module."""
    with serving({name: Server(args) for name, (args, _, _) in SERVERS.items()}, server_env(tiny_model_dir)) as urls:
        yield urls


@pytest.mark.parametrize("name", list(SERVERS))
def test_pass_through_and_api(servers: dict[str, str], name: str) -> None:
    url = servers[name]
    home = httpx.get(url + "/")
    assert home.status_code == 200 and SERVERS[name][1] in home.text
    outside = httpx.get(url + "/aix")  # not under the prefix: the app answers, not the API
    assert "x-request-id" not in outside.headers and "error" not in outside.text
    models = httpx.get(url + "/ai/v1/models")
    assert models.status_code == 200 and models.json()["object"] == "list"
    answer = httpx.post(url + "/ai/v1/chat/completions", json={**CHAT, "max_tokens": 4}, timeout=30)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("name", [n for n in SERVERS if "example" in n])
def test_example_view_uses_the_shared_engine(servers: dict[str, str], name: str) -> None:
    response = httpx.post(servers[name] + "/summarize", json={"text": "A long text."}, timeout=30)
    assert response.status_code in (200, 201) and isinstance(response.json()["summary"], str)


@pytest.mark.parametrize("name", list(SERVERS))
def test_sse_comes_as_separate_events(servers: dict[str, str], name: str) -> None:
    request = {**CHAT, "stream": True, "max_tokens": 200, "min_tokens": 200}
    with httpx.stream("POST", servers[name] + "/ai/v1/chat/completions", json=request, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        reads = list(response.iter_raw())
    events = [event for event in b"".join(reads).split(b"\n\n") if event]
    assert json.loads(events[0].removeprefix(b"data: "))["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1] == b"data: [DONE]"
    # One write per event, not one body: the stream arrives in several reads, each of whole events
    # (how many depends on how far the client lags the tiny model's steps, a fraction of a millisecond each).
    assert len(reads) >= 2 and all(read.endswith(b"\n\n") for read in reads)


def test_flask_stream_passes_through_incrementally(servers: dict[str, str]) -> None:
    for name in ("hypercorn-flask", "werkzeug-flask"):
        with httpx.stream("GET", servers[name] + "/countdown") as response:
            arrivals = [(time.monotonic(), chunk) for chunk in response.iter_raw()]
        assert b"".join(chunk for _, chunk in arrivals) == b"3\n2\n1\n"
        assert len(arrivals) == 3 and arrivals[-1][0] - arrivals[0][0] > 0.4


@pytest.mark.parametrize("name", WITH_STATS)
def test_stream_arrives_while_generating_and_disconnect_cancels(servers: dict[str, str], name: str) -> None:
    url = servers[name]
    leave_a_long_stream(url, CHAT["messages"])
    later = httpx.post(url + "/ai/v1/chat/completions", json={**CHAT, "max_tokens": 3}, timeout=30)
    assert later.status_code == 200
