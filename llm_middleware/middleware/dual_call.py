"""A ``__call__`` that servers inspecting it take for ASGI, while it still answers WSGI calls.

ASGI servers (hypercorn, uvicorn) pick the protocol with ``inspect.iscoroutinefunction(app.__call__)``.
Our ``__call__`` is a plain function that returns a coroutine for ``(scope, receive, send)``
and a WSGI iterable for ``(environ, start_response)``, so it has to be marked as a coroutine
function.  Python 3.12 has ``inspect.markcoroutinefunction`` for that.  Python 3.11 reads the
``CO_COROUTINE`` flag from ``__code__`` of any "function-like" object (one with ``__code__``,
``__name__``, ``__defaults__``, ``__kwdefaults__`` and ``__annotations__``), so there the method
is wrapped in such an object whose ``__code__`` is that of an ``async def``.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


async def _coroutine_template() -> None:
    """Only its code object is used: the one a coroutine function has."""


class _CoroutineMarkedMethod:
    """Calls ``func``; looks like an ``async def`` method to ``inspect`` on Python 3.11."""

    def __init__(self, func: Callable[..., Any]) -> None:
        functools.update_wrapper(self, func)
        self._func = func
        self.__code__ = _coroutine_template.__code__
        self.__defaults__ = None
        self.__kwdefaults__ = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(*args, **kwargs)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # Bind like a function does, so `obj.__call__` is a method whose __func__ is us.
        return self if instance is None else types.MethodType(self, instance)


def mark_coroutine_function(func: F) -> F:
    """Make ``inspect.iscoroutinefunction`` true for ``func`` (and methods bound from it)."""
    if sys.version_info >= (3, 12):
        return inspect.markcoroutinefunction(func)
    return _CoroutineMarkedMethod(func)  # type: ignore[return-value]
