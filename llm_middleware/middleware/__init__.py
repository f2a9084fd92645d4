"""Mounting the LLM API under a path prefix of any WSGI or ASGI app.

``dispatch`` is the front door (a request under the base path goes to the API, every other one
to the wrapped app), ``endpoint`` serves the API over the two protocol bridges (``asgi``,
``wsgi``), ``lifespan`` ties the engine to the server's start and stop; ``policy/`` holds what a
request must pass, ``observe/`` what is reported about it.  Nothing here knows a protocol's
bodies or error shape: the API renders errors and says how its streams end.
"""

from .dispatch import LLMMiddleware
from ..request_info import RequestInfo

__all__ = ["LLMMiddleware", "RequestInfo"]
