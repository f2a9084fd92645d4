"""Driving a streamed API response over ASGI in process: read it event by event, or walk away mid-stream."""

from __future__ import annotations

import json
from typing import Any

from asgiref.testing import ApplicationCommunicator
from test_dispatch import http_scope


class ASGIStream:
    """One request to an ASGI app whose response is read message by message."""

    def __init__(self, app: Any, path: str, body: dict[str, Any], headers: list[tuple[str, str]] | None = None) -> None:
        scope = http_scope(path, method="POST", headers=[("content-type", "application/json"), *(headers or [])])
        self._comm = ApplicationCommunicator(app, scope)
        self._body = json.dumps(body).encode()
        self._buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.finished = False

    async def start(self, timeout: float = 30) -> int:
        """Send the request and wait for the response status."""
        await self._comm.send_input({"type": "http.request", "body": self._body})
        start = await self._comm.receive_output(timeout)
        self.status = start["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        return self.status

    async def next_event(self, timeout: float = 30) -> Any:
        """The next ``data:`` payload (parsed JSON, or the string ``"[DONE]"``); None at the end."""
        while b"\n\n" not in self._buffer:
            if self.finished:
                return None
            message = await self._comm.receive_output(timeout)
            self._buffer += message.get("body", b"")
            self.finished = not message.get("more_body", False)
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        payload = block.removeprefix(b"data: ")
        return payload.decode() if payload == b"[DONE]" else json.loads(payload)

    async def rest(self, timeout: float = 30) -> list[Any]:
        """Every remaining event."""
        events = []
        while (item := await self.next_event(timeout)) is not None:
            events.append(item)
        return events

    async def body(self, timeout: float = 30) -> bytes:
        """The whole body of a response that is not streamed."""
        chunks = [self._buffer]
        while not self.finished:
            message = await self._comm.receive_output(timeout)
            chunks.append(message.get("body", b""))
            self.finished = not message.get("more_body", False)
        return b"".join(chunks)

    async def disconnect(self, timeout: float = 10) -> None:
        """Walk away mid-stream; return once the app has finished with the request."""
        await self._comm.send_input({"type": "http.disconnect"})
        await self._comm.wait(timeout)

    async def app_returned(self, timeout: float = 10) -> None:
        """Wait for the app to return, after it sent the whole response."""
        await self._comm.wait(timeout)
