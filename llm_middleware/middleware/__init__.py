"""Mounting the LLM API under a path prefix of any WSGI or ASGI app."""

from .dispatch import LLMMiddleware
from .policy.auth import RequestInfo

__all__ = ["LLMMiddleware", "RequestInfo"]
