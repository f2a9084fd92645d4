"""A thread pool of our own for request-sized CPU work, so that no request holds up an event loop.

The API shares the host app's event loop (and under WSGI every API request shares one bridge
loop), and asyncio's default executor belongs to the host's code as much as to ours
(``asyncio.to_thread``).  Decoding a large body, rendering a chat template, tokenizing a long
prompt, compiling a grammar or a JSON Schema and a synchronous ``authorize`` run here instead,
so a request that needs seconds of such work delays only itself.

Eight threads: most of this work holds the GIL, so more threads would not finish it sooner,
while eight keep a few long jobs (a huge prompt, a slow ``authorize``) from holding up the short
ones behind them.  The pool is made on first use, and again in a forked child process.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

#: Threads of the pool (per process).
THREADS = 8


class CPUPool:
    """A bounded thread pool, made lazily in each process that uses it."""

    def __init__(self, threads: int = THREADS, name: str = "llm-cpu") -> None:
        self.threads = threads
        self.name = name
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pid: int | None = None

    def _running_executor(self) -> ThreadPoolExecutor:
        # An executor inherited through fork has no threads behind it in the child: make a new one.
        if self._executor is not None and self._pid == os.getpid():
            return self._executor
        with self._lock:
            if self._executor is None or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=self.name)
                self._pid = os.getpid()
            return self._executor

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a pool thread, in a copy of the caller's context variables.

        Cancelling the caller abandons the result; the call itself runs to its end, so ``fn``
        must not leave anything behind that only the caller would clean up.
        """
        call = partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._running_executor(), call)


#: The process's pool for request-sized CPU work.
cpu_pool = CPUPool()


async def run_cpu(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` on :data:`cpu_pool` and await its result."""
    return await cpu_pool.run(fn, *args, **kwargs)
