"""Loading, stopping and failing, through real servers (``lifecycle_app`` under hypercorn, on loopback).

Each server's model load waits at a gate the test opens, so what happens during a load is
decided by the test, never by the machine's speed.  The host routes of ``lifecycle_app`` show
the server's default thread pool, the requests waiting for the load, and the middleware's log.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import Server, free_port, launch, server_env, serving, wait_until_up

HYPERCORN = ["-m", "hypercorn", "--workers", "0", "lifecycle_app:app"]
CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2, "ignore_eos": True}
#: Requests waiting for the load at once: more than the default thread pool of a small machine holds.
WAITING = 12


@pytest.fixture(scope="module")
def broken_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory whose config cannot be read."""
    path = tmp_path_factory.mktemp("models") / "broken-model"
    path.mkdir()
    (path / "config.json").write_text("{not json")
    return path


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, broken_model_dir: Path) -> Iterator[dict[str, str]]:
    with serving(
        {
            "held": Server(HYPERCORN, ready_path="/state"),
            "impatient": Server(HYPERCORN, env={"REQUEST_TIMEOUT": "1"}, ready_path="/state"),
            "broken": Server(HYPERCORN, env={"LLM_MODEL": str(broken_model_dir)}, ready_path="/state"),
        },
        {**server_env(tiny_model_dir), "OMP_NUM_THREADS": "1"},
    ) as urls:
        yield urls


def state(url: str) -> dict[str, Any]:
    return httpx.get(url + "/state", timeout=30).json()


def until(url: str, condition: Callable[[dict[str, Any]], bool], what: str, timeout: float = 120) -> dict[str, Any]:
    """The server's ``/state`` once ``condition`` holds for it (polled; ``timeout`` only guards against a hang)."""
    deadline = time.monotonic() + timeout
    while not condition(seen := state(url)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen: {seen}")
        time.sleep(0.05)
    return seen


def held_load(url: str) -> None:
    """Stop the engine and start it anew with its load held at the gate, whatever state it was in."""
    for step in ("/stop", "/release", "/hold", "/start"):
        httpx.post(url + step, timeout=60).raise_for_status()
    until(url, lambda s: s["held_loads"] == 1 and s["engine"] == "loading", "a held load")


def loaded(url: str) -> None:
    httpx.post(url + "/release", timeout=30).raise_for_status()
    until(url, lambda s: s["engine"] == "ready", "loading")


def chat(url: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(url + "/ai/v1/chat/completions", json=body or CHAT, timeout=120)


# ---- waiting for a load -------------------------------------------------------------------------


def test_requests_wait_for_a_loading_model_without_holding_threads(servers: dict[str, str]) -> None:
    url = servers["held"]
    held_load(url)
    assert httpx.get(url + "/work", timeout=30).json() == "worked"
    pool = state(url)["pool_threads"]
    answers: list[httpx.Response] = []
    askers = [threading.Thread(target=lambda: answers.append(chat(url))) for _ in range(WAITING)]
    for asker in askers:
        asker.start()
    until(url, lambda s: s["waiting"] == WAITING, "every request waiting for the load")
    # The host's own page still finds a thread in the default pool, which grew by none.
    assert httpx.get(url + "/work", timeout=30).json() == "worked"
    seen = state(url)
    assert seen["pool_threads"] == pool and seen["held_loads"] == 1, seen
    health = httpx.get(url + "/ai/health", timeout=30)
    assert health.status_code == 503 and health.json()["error"]["code"] == "engine_loading"
    httpx.post(url + "/release", timeout=30).raise_for_status()
    for asker in askers:
        asker.join(120)
    assert [a.status_code for a in answers] == [200] * WAITING
    assert all(a.json()["usage"]["completion_tokens"] == 2 for a in answers)
    assert state(url)["waiting"] == 0


def test_a_request_timeout_shorter_than_the_load_is_a_504(servers: dict[str, str]) -> None:
    url = servers["impatient"]  # request_timeout=1; the load is never let through
    held_load(url)
    assert httpx.get(url + "/work", timeout=30).json() == "worked"
    pool = state(url)["pool_threads"]
    for path, body in [
        ("/ai/v1/chat/completions", CHAT),
        ("/ai/v1/chat/completions", {**CHAT, "stream": True}),
        ("/ai/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
        ("/ai/tokenize", {"prompt": "Hi"}),
    ]:
        answer = httpx.post(url + path, json=body, timeout=60)
        error = answer.json()["error"]
        assert answer.status_code == 504 and error["code"] == "timeout" and "1 seconds" in error["message"], path
    seen = state(url)
    # Each timed-out request withdrew its wait; none left a thread behind.
    assert seen["waiting"] == 0 and seen["held_loads"] == 1 and seen["pool_threads"] == pool, seen


# ---- stopping -----------------------------------------------------------------------------------


def test_a_stopped_engine_stays_stopped_until_started_on_purpose(servers: dict[str, str]) -> None:
    url = servers["held"]
    loaded(url)
    assert chat(url).status_code == 200
    httpx.post(url + "/stop", timeout=60).raise_for_status()
    for _ in range(3):  # requests after a shutdown are refused, and start nothing
        refused = chat(url)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_unavailable"
        assert "stopped" in refused.json()["error"]["message"] and int(refused.headers["retry-after"]) >= 1
        assert httpx.post(url + "/ai/tokenize", json={"prompt": "Hi"}, timeout=30).status_code == 503
        health = httpx.get(url + "/ai/health", timeout=30)
        assert health.status_code == 503 and health.json()["error"]["code"] == "engine_stopped"
    assert state(url)["engine"] == "stopped"
    httpx.post(url + "/start", timeout=30).raise_for_status()
    until(url, lambda s: s["engine"] == "ready", "loading after an explicit start")
    assert chat(url).status_code == 200


def test_sigterm_during_a_load_stops_without_waiting_for_it(tiny_model_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = launch(HYPERCORN, port, {**server_env(tiny_model_dir), "OMP_NUM_THREADS": "1"})
    try:
        wait_until_up(url, process, "/state")
        until(url, lambda s: s["held_loads"] == 1, "a held load")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0  # a hang guard: the load is held for good, so only abandoning it ends
        stderr = process.stderr.read().decode()  # type: ignore[union-attr]
        assert "at exit: engine stopped, loads held 1" in stderr, stderr[-3000:]
        assert "Traceback" not in stderr and "Timeout" not in stderr, stderr[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---- what clients are told ----------------------------------------------------------------------


def test_a_failing_step_tells_clients_only_the_request_id(servers: dict[str, str]) -> None:
    url = servers["held"]
    loaded(url)
    httpx.post(url + "/fail-step", timeout=30).raise_for_status()
    failed = chat(url)
    request_id = failed.headers["x-request-id"]
    error = failed.json()["error"]
    assert failed.status_code == 500 and error["code"] == "engine_error" and request_id in error["message"]
    assert "secret-shard" not in failed.text and "RuntimeError" not in failed.text
    # Mid-stream, the same: a generic error event naming the request, then [DONE].
    body = {**CHAT, "stream": True, "max_tokens": 300, "min_tokens": 300}
    with httpx.stream("POST", url + "/ai/v1/chat/completions", json=body, timeout=120) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data: "))
        first = json.loads(next(lines).removeprefix("data: "))
        httpx.post(url + "/fail-step", timeout=30).raise_for_status()
        rest = [line.removeprefix("data: ") for line in lines]
    assert rest[-1] == "[DONE]"
    event = json.loads(rest[-2])["error"]
    assert event["code"] == "engine_error" and first["id"] in event["message"]
    assert not any("secret-shard" in line or "RuntimeError" in line for line in rest)
    # The details are in the log, under the ids the clients were given.
    logged = state(url)["errors"]
    for rid in (request_id, first["id"]):
        assert any(rid in line and "secret-shard.bin" in line for line in logged), logged
    assert chat(url).status_code == 200


def test_a_model_that_fails_to_load_tells_clients_no_path(servers: dict[str, str], broken_model_dir: Path) -> None:
    url = servers["broken"]
    httpx.post(url + "/release", timeout=30).raise_for_status()
    until(url, lambda s: s["engine"] == "failed", "the load failing")
    health = httpx.get(url + "/ai/health", timeout=30)
    assert health.status_code == 503 and health.json()["error"]["code"] == "engine_failed"
    assert health.headers["x-request-id"] in health.json()["error"]["message"]
    answers = [health, chat(url), chat(url, {**CHAT, "stream": True}),
               httpx.post(url + "/ai/tokenize", json={"prompt": "Hi"}, timeout=30)]
    for answer in answers[1:]:
        assert answer.status_code == 503 and "failed to load" in answer.json()["error"]["message"]
    models = httpx.get(url + "/ai/v1/models", timeout=30)
    assert [(m["id"], m["state"]) for m in models.json()["data"]] == [("broken-model", "failed")]
    for answer in [*answers, models]:
        assert str(broken_model_dir.parent) not in answer.text and "valid JSON" not in answer.text
    logged = state(url)["errors"]
    assert any(str(broken_model_dir) in line and "valid JSON" in line for line in logged), logged
