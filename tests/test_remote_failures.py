"""How a front over a RemoteEngine meets failing upstreams, through real servers on loopback.

The upstreams are fakes that fail on purpose (:class:`remote_servers.FakeUpstream`); the front is
``LLMMiddleware(app, engine=RemoteEngine([...]))`` served by hypercorn.  Each test counts the POSTs
every upstream got, and looks at rotation (``engine.upstreams()``) and at the front's ``/health``.
Health checks run once at start (``health_interval=60``) unless a test says otherwise, so what
changes rotation during a test is the requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from remote_servers import FAKE_MODEL, SECRET, FakeUpstream, FrontServer, front_home, wait_until
from servers import free_port

from llm_middleware import EngineNotReadyError, LLMMiddleware, RemoteEngine
from llm_middleware.remote import UpstreamFailedError

HELLO = [{"role": "user", "content": "Hello"}]
#: What no answer to a client may hold: upstream addresses, their own words, our exception names.
INTERNALS = ("127.0.0.1", SECRET, "/srv/", "Traceback", "ReadTimeout", "ConnectTimeout", "RemoteProtocolError",
             "ReadError", "ConnectError", "HTTP 5")


@contextmanager
def fronting(upstreams: list[str], **options: Any) -> Iterator[tuple[str, RemoteEngine]]:
    """A front over ``upstreams``, once every upstream was checked: its URL and its engine."""
    engine = RemoteEngine(upstreams, **{"health_interval": 60, **options})
    try:
        with FrontServer(LLMMiddleware(front_home, base_path="/ai", engine=engine)) as front:
            wait_until(lambda: engine.state in ("ready", "failed"), 60, "the first health checks")
            wait_until(lambda: _answers(front.url), 60, "the front listening")
            yield front.url, engine
    finally:
        engine.shutdown()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _health(front: str) -> httpx.Response:
    return httpx.get(front + "/ai/health", timeout=30)


@dataclass
class Answer:
    """A chat request's answer: its status, request id and body, and the error the client got (from the
    body, or from a stream's error event), if any."""

    status: int
    request_id: str
    body: str
    error: dict[str, Any] | None


def _ask(front: str, stream: bool) -> Answer:
    body = {"model": FAKE_MODEL, "messages": HELLO, "stream": stream}
    response = httpx.post(front + "/ai/v1/chat/completions", json=body, timeout=60)
    error = None
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        error = next((event["error"] for event in events if "error" in event), None)
        assert response.text.endswith("data: [DONE]\n\n")
    elif response.status_code != 200:
        error = response.json()["error"]
    return Answer(response.status_code, response.headers["x-request-id"], response.text, error)


def _says_nothing_internal(answer: Answer) -> None:
    assert answer.error is not None
    assert answer.request_id in answer.error["message"]
    leaked = [text for text in INTERNALS if text in answer.body]
    assert not leaked, answer.body


def _logged(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if request_id in r.getMessage())


# ---- a failure after the request reached its upstream -------------------------------------------------

#: What the upstream does, and the status and code its client gets (a stream that had started gets
#: a 200 and an error event with that code).
MAY_HAVE_RUN = {
    "status:504": (504, "upstream_timeout"),
    "stall": (504, "upstream_timeout"),
    "status:500": (502, "upstream_failed"),
    "close": (502, "upstream_failed"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("behaviour", list(MAY_HAVE_RUN))
def test_a_failure_after_the_request_reached_its_upstream_fails_that_request_alone(
    behaviour: str, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    status, code = MAY_HAVE_RUN[behaviour]
    # A timeout long enough for the healthy upstream's answers on a loaded machine, short enough to wait out.
    timeout = 3 if behaviour == "stall" else 60
    with (FakeUpstream(behaviour) as failing, FakeUpstream() as healthy,
          fronting([failing.url, healthy.url], timeout=timeout) as (front, engine)):
        answers = [_ask(front, stream) for _ in range(4)]
        failed = [answer for answer in answers if answer.error is not None]
        # Every request ran once, where it was sent: none was replayed on the healthy upstream.
        assert failing.posts + healthy.posts == 4 and len(failed) == failing.posts >= 1
        assert all(answer.status == 200 for answer in answers if answer.error is None)
        started = stream and behaviour in ("stall", "close")  # the first chunk had reached the client
        for answer in failed:
            assert answer.status == (200 if started else status) and answer.error["code"] == code  # type: ignore[index]
            _says_nothing_internal(answer)
            assert failing.url in _logged(caplog, answer.request_id)  # the details are in the log
        # A failed request is not the upstream's failure: it stays in rotation, and the front stays up.
        assert [status.healthy for status in engine.upstreams()] == [True, True]
        assert _health(front).status_code == 200
        if behaviour == "stall":  # a timed-out request's connection was closed, which cancels it upstream
            wait_until(lambda: failing.hangups == failing.posts, 60, "the upstream connections closing")


def test_when_every_upstream_times_out_only_the_requests_fail() -> None:
    with (FakeUpstream("stall") as a, FakeUpstream("stall") as b,
          fronting([a.url, b.url], timeout=3) as (front, engine)):
        answers = [_ask(front, False) for _ in range(2)]
        assert [answer.status for answer in answers] == [504, 504] and (a.posts, b.posts) == (1, 1)
        assert all(status.healthy for status in engine.upstreams()) and engine.state == "ready"
        assert _health(front).status_code == 200


# ---- a request that cannot have run ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("behaviour", ["status:429", "status:503", "refused"])
def test_a_request_that_cannot_have_run_moves_to_another_upstream(behaviour: str, stream: bool) -> None:
    first = "ok" if behaviour == "refused" else behaviour
    with (FakeUpstream(first) as failing, FakeUpstream() as healthy,
          fronting([failing.url, healthy.url]) as (front, engine)):
        if behaviour == "refused":
            failing.stop()  # in rotation since its health check, and now nothing listens there
        answers = [_ask(front, stream) for _ in range(4)]
        assert [answer.status for answer in answers] == [200] * 4 and all(a.error is None for a in answers)
        assert healthy.posts == 4  # every request ran once, on the upstream that took it
        assert engine.upstreams()[0].requests >= 1  # and some were sent to the other one first
        assert failing.posts == (0 if behaviour == "refused" else engine.upstreams()[0].requests)
        # Busy upstreams stay in rotation; one where nothing listens leaves it until a health check passes.
        assert [status.healthy for status in engine.upstreams()] == [behaviour != "refused", True]
        assert _health(front).status_code == 200


@pytest.mark.parametrize(("behaviour", "status", "code"), [
    ("status:429", 429, "overloaded"), ("status:503", 503, "engine_unavailable"),
])
def test_when_every_upstream_is_busy_the_client_is_told_to_retry(behaviour: str, status: int, code: str) -> None:
    with FakeUpstream(behaviour) as a, FakeUpstream(behaviour) as b, fronting([a.url, b.url]) as (front, engine):
        body = {"model": FAKE_MODEL, "messages": HELLO}
        response = httpx.post(front + "/ai/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == status and response.json()["error"]["code"] == code
        assert int(response.headers["retry-after"]) >= 1 and (a.posts, b.posts) == (1, 1)
        error = response.json()["error"]
        _says_nothing_internal(Answer(status, response.headers["x-request-id"], response.text, error))
        assert all(status.healthy for status in engine.upstreams()) and _health(front).status_code == 200


# ---- rotation and what /health shows --------------------------------------------------------------------


def test_health_checks_take_a_stalled_upstream_out_of_rotation_and_back() -> None:
    with (FakeUpstream() as upstream,
          fronting([upstream.url], health_interval=0.2, connect_timeout=1) as (front, engine)):
        wait_until(lambda: _health(front).status_code == 200, 60, "the upstream in rotation")
        upstream.stall_checks = True
        wait_until(lambda: _health(front).status_code == 503, 60, "the front reporting no upstream in rotation")
        health = _health(front)
        assert health.json()["error"]["code"] == "engine_failed"
        assert not [text for text in INTERNALS if text in health.text], health.text
        assert upstream.url in (engine.error or "") and "health check failed" in (engine.error or "")  # for the host
        upstream.stall_checks = False
        wait_until(lambda: _health(front).status_code == 200, 60, "the upstream back in rotation")


def test_a_front_whose_upstreams_are_all_gone_says_nothing_internal() -> None:
    urls = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    with fronting(urls) as (front, engine):
        health = _health(front)
        assert health.status_code == 503 and health.json()["error"]["code"] == "engine_failed"
        assert not [text for text in INTERNALS if text in health.text], health.text
        assert all(url in (engine.error or "") for url in urls)  # the host's own code still sees why
        for wait in (engine.wait_ready_sync, lambda timeout: asyncio.run(engine.wait_ready(timeout))):
            with pytest.raises(EngineNotReadyError, match="no upstream is in rotation"):
                wait(60)
        refused = _ask(front, False)
        assert refused.status == 503 and not [text for text in INTERNALS if text in refused.body], refused.body


def test_an_upstream_error_event_reaches_the_client_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    with FakeUpstream("error-event") as upstream, fronting([upstream.url]) as (front, engine):
        answer = _ask(front, True)
        assert answer.status == 200 and answer.error is not None and answer.error["code"] == "upstream_failed"
        _says_nothing_internal(answer)
        logged = _logged(caplog, answer.request_id)
        assert upstream.url in logged and SECRET in logged
        # The host's own calls get the same error.
        with pytest.raises(UpstreamFailedError) as failed:
            list(engine.stream_chat_sync(HELLO, request_id="host-1"))
        assert failed.value.status == 502 and "host-1" in failed.value.message and SECRET not in failed.value.message
        assert engine.upstreams()[0].healthy and _health(front).status_code == 200
