"""Ending requests that run too long: a per-request timeout, or the server no longer waiting for them.

A :class:`Deadline` expires when its timeout passes or when :meth:`Deadline.expire` is called
(the middleware does that to the requests still running at the end of a shutdown drain).
:func:`respond_within` then ends the request the way its client can understand: before the
response started, an error response (504 for a timeout, 503 for a shutdown) rendered by the API;
mid-stream, the stream's own ending for an error (its protocol's error event).  Either way the
handler is cancelled, which cancels its engine requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from ...api.core.errors import ErrorRenderer
from ...api.core.http import BodyStream, Response, WrappedStream
from ...errors import LLMError


class RequestTimeoutError(LLMError):
    """The request ran past the server's ``request_timeout`` (HTTP 504)."""

    status = 504
    type = "server_error"
    code = "timeout"


class Deadline:
    """When one request must end; create it on the event loop that serves the request.

    ``timeout`` is in seconds (None: only :meth:`expire` ends the request).
    """

    def __init__(self, timeout: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._expired: asyncio.Future[LLMError] = self._loop.create_future()
        self._readers: set[asyncio.Task[object]] = set()  # tasks awaiting the stream: cancelled on expiry
        self._timer = (
            self._loop.call_later(timeout, self._set, RequestTimeoutError(
                f"The request took longer than the server's limit of {timeout:g} seconds. "
                "Ask for fewer tokens, or retry when the server is less busy."
            ))
            if timeout is not None
            else None
        )

    @property
    def error(self) -> LLMError | None:
        """Why the request was ended, once it expired."""
        return self._expired.result() if self._expired.done() else None

    def expire(self, error: LLMError) -> None:
        """End the request with ``error``; safe to call from any thread, and more than once."""
        with contextlib.suppress(RuntimeError):  # the request's loop is already closed: nothing left to end
            self._loop.call_soon_threadsafe(self._set, error)

    def cancel(self) -> None:
        """The request is over: stop the timer (from any thread)."""
        if self._timer is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: so is the timer
                self._loop.call_soon_threadsafe(self._timer.cancel)

    def _set(self, error: LLMError) -> None:
        if not self._expired.done():
            self._expired.set_result(error)
            for task in self._readers:
                task.cancel()

    async def race(self, work: Awaitable[object]) -> asyncio.Future[object] | None:
        """Run ``work`` until it finishes (return its future) or the deadline expires (cancel it, return None)."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({task, self._expired}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also reached when we are cancelled (client gone): the work must not outlive us.
            if not task.done():
                task.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
        return task if not task.cancelled() else None


async def respond_within(deadline: Deadline, answer: Awaitable[Response], render_error: ErrorRenderer) -> Response:
    """The response of ``answer``, or the error response ``render_error`` gives if ``deadline`` expires first.

    A streamed response is wrapped so that it ends with its error ending when the deadline
    expires mid-stream.
    """
    done = await deadline.race(answer)
    if done is None:
        return render_error(deadline.error)  # type: ignore[arg-type]
    response: Response = done.result()  # type: ignore[assignment]
    if response.stream is not None:
        response.stream = _StreamWithin(deadline, response.stream)
    return response


class _StreamWithin(WrappedStream):
    """A response stream that ends with its error ending when the deadline expires.

    A class rather than an async generator: closing it must close the wrapped stream (and so
    cancel its engine requests) even when it was never iterated.
    """

    def __init__(self, deadline: Deadline, stream: BodyStream) -> None:
        super().__init__(stream)
        self._deadline = deadline
        self._expired = False

    async def __anext__(self) -> bytes:
        if self._expired:
            raise StopAsyncIteration
        if self._deadline.error is not None:  # expired between two chunks
            return await self._end()
        # The read runs in the caller's task (no task per chunk); the deadline cancels that task
        # while it waits here, and the cancellation becomes the error ending.
        task = asyncio.current_task()
        assert task is not None
        readers = self._deadline._readers
        readers.add(task)
        try:
            return await anext(self._stream)
        except asyncio.CancelledError:
            # Another cancellation besides the deadline's (the client went away) still ends the task.
            if self._deadline.error is None or task.uncancel() > 0:
                raise
            return await self._end()
        finally:
            readers.discard(task)

    async def _end(self) -> bytes:
        self._expired = True
        await self.aclose()
        return self.fail(self._deadline.error)  # type: ignore[arg-type]
