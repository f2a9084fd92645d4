"""Serving API requests over ASGI: reading the body, sending a Response, noticing disconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope

from ..api.core.http import Request, Response
from .policy.body_limit import BodyTooLargeError, check_declared_length


def scope_headers(scope: HTTPScope) -> dict[str, str]:
    """The request headers with lower-case names; repeated headers joined with ``", "``."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class ClientDisconnectedError(Exception):
    """The client went away before it finished sending the request."""


async def read_body(receive: ASGIReceiveCallable, headers: dict[str, str], limit: int) -> bytes:
    """Read the whole request body, raising :class:`BodyTooLargeError` as soon as it passes ``limit``
    (after dropping the rest of the body, see :func:`discard_body`)."""
    try:
        check_declared_length(headers.get("content-length"), limit)
    except BodyTooLargeError:
        await discard_body(receive)
        raise
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            # Only a body with more to come has anything left to drop: asking for more after the
            # last chunk would wait for the client to hang up.
            if message.get("more_body", False):
                await discard_body(receive)
            raise BodyTooLargeError(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


# How much of a refused body is still read (and dropped) before answering; beyond it the connection is cut.
DISCARD_LIMIT = 64 * 2**20


async def discard_body(receive: ASGIReceiveCallable, limit: int = DISCARD_LIMIT) -> None:
    """Read and drop the rest of the request body, up to ``limit`` bytes.

    A server that closes a connection with request bytes still unread makes the kernel reset it,
    which can destroy a response the client has not read yet: an early 413 would then reach
    clients that finish uploading before they read (httpx's async transport) as a connection error.
    """
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        size += len(message.get("body", b""))


def build_request(
    scope: HTTPScope, path: str, root_path: str, headers: dict[str, str], body: bytes, identity: str
) -> Request:
    """The API's view of an ASGI request whose path relative to the base path is ``path``, let in as ``identity``."""
    client = scope.get("client")
    return Request(
        method=scope["method"],
        path=path,
        root_path=root_path,
        headers=headers,
        query_string=scope.get("query_string", b""),
        body=body,
        client=(client[0], client[1]) if client else None,
        identity=identity,
    )


async def send_response(send: ASGISendCallable, response: Response) -> None:
    """Send ``response``, each stream chunk as soon as it is produced; always close the stream."""
    try:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in response.headers
                ],
                "trailers": False,
            }
        )
        if response.stream is None:
            await send({"type": "http.response.body", "body": response.body, "more_body": False})
            return
        async for chunk in response.stream:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await close_stream(response)


async def close_stream(response: Response) -> None:
    """Release what a streamed response holds (the engine request behind it)."""
    if response.stream is not None:
        await response.stream.aclose()


async def run_until_disconnect(receive: ASGIReceiveCallable, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` (answering the request), cancelling it if the client disconnects first.

    Cancelling the task unwinds the handler and the response stream it awaits, which cancels
    the engine request.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Reached on normal completion, on disconnect, and when the server cancels us.
        watcher.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await task


async def _wait_for_disconnect(receive: ASGIReceiveCallable) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
