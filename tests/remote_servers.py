"""Servers on loopback for the remote engine's tests, each on a thread of its own with its own event loop:
the front (hypercorn serving an app wrapped by the middleware) and fake upstreams that fail on purpose.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from servers import free_port

#: The model every fake upstream serves.
FAKE_MODEL = "fake-model"
#: Text that fake upstreams put in their errors, as a real server's internals would be (paths, exceptions).
SECRET = "Traceback: /srv/models/secret.py line 7: CUDA out of memory"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; ``timeout`` only bounds a test that would otherwise hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


async def front_home(scope: Any, receive: Any, send: Any) -> None:
    """The app the API is mounted in."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"front home"})


class FrontServer:
    """hypercorn serving an ASGI app on a thread of its own, with its own event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.url = f"http://127.0.0.1:{free_port()}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        config = Config()
        config.bind = [self.url.removeprefix("http://")]
        config.graceful_timeout = 1
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await serve(self.app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]

    def __enter__(self) -> FrontServer:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "up", "object": "chat.completion.chunk", "model": FAKE_MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


_ANSWER = {"id": "up", "object": "chat.completion", "model": FAKE_MODEL,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
_FIRST_CHUNK = _chunk({"role": "assistant", "content": ""})


class FakeUpstream:
    """An OpenAI-compatible server on loopback that serves :data:`FAKE_MODEL` and answers every POST
    as ``behaviour`` says; it counts the POSTs it got (``posts``) and the ones whose client hung up
    while it stalled (``hangups``).

    Behaviours: ``ok``; ``status:NNN`` (that status, with :data:`SECRET` in an OpenAI error body and
    ``Retry-After: 7``); ``stall`` (never answers; a stream gets its first chunk first); ``close``
    (the connection closes mid-body; a stream gets its first chunk first); ``error-event`` (a stream's
    second event is an error event holding :data:`SECRET`).  ``stall_checks`` makes health checks
    (``GET /models``) stall too.
    """

    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.stall_checks = False
        self.posts = 0
        self.hangups = 0
        self._handlers: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    @property
    def url(self) -> str:
        """The base URL, up to ``/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening and drop every connection: from now on, connecting is refused."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            for handler in list(self._handlers):
                handler.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = dict(line.lower().split(":", 1) for line in head[1:] if line)
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and path == "/v1/models":
                if self.stall_checks:
                    await reader.read()
                    return
                await _send(writer, 200, {"object": "list", "data": [{"id": FAKE_MODEL, "object": "model"}]})
            else:
                self.posts += 1
                await self._answer(reader, writer, bool(json.loads(body).get("stream")))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._handlers.discard(handler)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: bool) -> None:
        behaviour = self.behaviour
        if behaviour.startswith("status:"):
            error = {"error": {"message": SECRET, "type": "server_error", "code": None}}
            await _send(writer, int(behaviour.removeprefix("status:")), error, [("retry-after", "7")])
            return
        if not stream:
            if behaviour == "ok":
                await _send(writer, 200, _ANSWER)
            elif behaviour == "close":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n"
                             b"connection: close\r\n\r\n")
                writer.write(json.dumps(_ANSWER).encode()[:20])
                await writer.drain()
            elif behaviour == "stall":
                await self._stall(reader)
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                     b"connection: close\r\n\r\n")
        await _event(writer, _FIRST_CHUNK)
        if behaviour == "ok":
            await _event(writer, _chunk({"content": "hi"}, "stop"))
        elif behaviour == "error-event":
            await _event(writer, {"error": {"message": SECRET, "type": "server_error", "code": 500}})
        elif behaviour == "stall":
            await self._stall(reader)
            return
        elif behaviour == "close":
            return  # no last chunk: the body is incomplete
        await _event(writer, "[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _stall(self, reader: asyncio.StreamReader) -> None:
        await reader.read()  # until the client closes the connection
        self.hangups += 1


async def _send(
    writer: asyncio.StreamWriter, status: int, body: Any, headers: list[tuple[str, str]] | None = None
) -> None:
    content = json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} Whatever", "content-type: application/json", f"content-length: {len(content)}",
             "connection: close", *(f"{name}: {value}" for name, value in headers or [])]
    writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + content)
    await writer.drain()


async def _event(writer: asyncio.StreamWriter, message: Any) -> None:
    """One server-sent event, as one chunk of a chunked body."""
    data = b"data: " + (message.encode() if isinstance(message, str) else json.dumps(message).encode()) + b"\n\n"
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()
