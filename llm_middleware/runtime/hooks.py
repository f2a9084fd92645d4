"""The host's own callables (an ASGI app, ``authorize``, ``tool_permission``), sync or async, called
without blocking the event loop."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .cpu_pool import run_cpu


def is_async(fn: Any) -> bool:
    """True for a coroutine function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


async def call_hook(fn: Callable[..., Any], fn_is_async: bool, *args: Any) -> Any:
    """``fn(*args)``: awaited where ``fn_is_async``, else run on the CPU pool (a database lookup, say);
    an awaitable it returns is awaited too."""
    result = fn(*args) if fn_is_async else await run_cpu(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result
