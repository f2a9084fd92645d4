"""Mounting the LLM API under a path prefix of any WSGI or ASGI app."""

from .policy.auth import RequestInfo
from .dispatch import LLMMiddleware

__all__ = ["LLMMiddleware", "RequestInfo"]
