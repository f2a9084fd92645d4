"""A client leaving a long stream, checked through a test server's ``GET /stats``: the request must
leave the batch in far fewer steps than it asked for."""

from __future__ import annotations

import time
from typing import Any

import httpx

#: Tokens the stream asks for (one step each): far more than a cancelled request may run.
LONG = 2000


def stats(url: str) -> dict[str, int]:
    """The server's engine counts and its step count."""
    return httpx.get(url + "/stats", timeout=60).json()


def leave_a_long_stream(url: str, messages: list[dict[str, Any]], *, running_while_read: bool = True) -> None:
    """Stream a ``LONG``-token chat answer, leave after three chunks (which must arrive while the request
    still runs, unless the server serves one request at a time) and wait until the request is gone."""
    request = {"messages": messages, "stream": True, "max_tokens": LONG, "min_tokens": LONG}
    steps = stats(url)["steps"]
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", url + "/ai/v1/chat/completions", json=request) as response:
            chunks = response.iter_raw()
            for _ in range(3):
                next(chunks)
            if running_while_read:
                assert stats(url)["running"] == 1
    deadline = time.monotonic() + 60  # a hang guard: the step count tells whether it was cancelled
    while (after := stats(url))["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after["running"] == 0 and after["steps"] - steps < LONG
