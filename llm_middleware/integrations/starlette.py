"""Finding the ``LLMMiddleware`` that ``app.add_middleware(LLMMiddleware, ...)`` put in a Starlette app.

Starlette builds its middleware itself, the first time the app is called, so the app holds no
reference to the middleware object; it is found by following each middleware's ``app``
attribute down the app's middleware stack.
"""

from __future__ import annotations

from typing import Any

from ..middleware.dispatch import LLMMiddleware


def llm_middleware_of(app: Any) -> LLMMiddleware:
    """The ``LLMMiddleware`` in the middleware stack of the Starlette (or FastAPI) ``app``.

    The stack is built now if the app has not been called yet, as its first call would build it.
    """
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    node, seen = app.middleware_stack, set()
    while node is not None and id(node) not in seen:
        if isinstance(node, LLMMiddleware):
            return node
        seen.add(id(node))
        node = getattr(node, "app", None)
    raise LookupError(
        "this app has no LLMMiddleware in its middleware stack: add it with "
        "app.add_middleware(LLMMiddleware, base_path=..., model=...); an app wrapped from outside "
        "(app = LLMMiddleware(app, ...)) has that object's .engine instead"
    )
