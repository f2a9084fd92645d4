"""The ASGI lifespan protocol with the engine's start and shutdown around the wrapped app's own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.typing import ASGIApplication, ASGIReceiveCallable, ASGISendCallable, LifespanScope

logger = logging.getLogger("llm_middleware")


class _AppLifespan:
    """The wrapped app's lifespan, run as a task we talk to through two queues."""

    def __init__(self, app: ASGIApplication, scope: LifespanScope) -> None:
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task = asyncio.ensure_future(app(scope, self._to_app.get, self._from_app.put))  # type: ignore[arg-type]

    async def ask(self, event: str) -> dict[str, Any] | None:
        """Send ``event`` to the app and return its answer, or None if it returned (or raised) instead.

        An app that raises before answering does not support lifespan (as the ASGI spec reads).
        """
        await self._to_app.put({"type": event})
        getter = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        if not self._from_app.empty():  # answered just before returning
            return self._from_app.get_nowait()
        if not self._task.cancelled() and (error := self._task.exception()) is not None:
            logger.debug("the wrapped app does not support lifespan (%r): continuing without it", error)
        return None

    async def finish(self) -> None:
        """Wait for the app's lifespan coroutine to return, whatever it raises."""
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._task


async def run_lifespan(
    scope: LifespanScope,
    receive: ASGIReceiveCallable,
    send: ASGISendCallable,
    *,
    app: ASGIApplication | None,
    start: Callable[[], None],
    shutdown: Callable[[], None],
    drain: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve a lifespan scope: ``start`` before ``app``'s startup, ``shutdown`` after its shutdown.

    ``app`` is None when the wrapped app has no lifespan to forward to (a WSGI app).
    ``drain`` (letting requests in flight finish) runs first on shutdown, while the app still works.
    ``shutdown`` may block (joining the engine's threads): it runs in a worker thread.
    """
    message = await receive()
    if message["type"] != "lifespan.startup":
        return
    start()
    forwarded = _AppLifespan(app, scope) if app is not None else None
    answer = await forwarded.ask("lifespan.startup") if forwarded is not None else None
    if answer is not None and answer["type"] == "lifespan.startup.failed":
        await asyncio.to_thread(shutdown)
        await send({"type": "lifespan.startup.failed", "message": answer.get("message", "")})
        await forwarded.finish()  # type: ignore[union-attr]
        return
    if answer is None:
        forwarded = None  # the app returned: nothing to forward shutdown to
    await send({"type": "lifespan.startup.complete"})

    await receive()  # lifespan.shutdown: the server sends nothing else in between
    if drain is not None:
        await drain()
    answer = await forwarded.ask("lifespan.shutdown") if forwarded is not None else None
    await asyncio.to_thread(shutdown)
    if answer is not None and answer["type"] == "lifespan.shutdown.failed":
        await send({"type": "lifespan.shutdown.failed", "message": answer.get("message", "")})
    else:
        await send({"type": "lifespan.shutdown.complete"})
    if forwarded is not None:
        await forwarded.finish()
