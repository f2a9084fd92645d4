"""Mounting the LLM API under a path prefix of any WSGI or ASGI app."""

from .auth import RequestInfo
from .core import LLMMiddleware

__all__ = ["LLMMiddleware", "RequestInfo"]
