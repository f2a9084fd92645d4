"""The read-only view of an API request that host code is given: ``authorize`` and tools see the caller through it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What host code sees of a request: ``path`` is relative to the base path
    (``/v1/chat/completions``), header names are lower-case, ``client`` is ``(host, port)``."""

    method: str
    path: str
    headers: Mapping[str, str]
    client: tuple[str, int] | None

    @property
    def cookies(self) -> dict[str, str]:
        """The request's cookies by name (empty when the Cookie header is missing or malformed)."""
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}


def request_info(method: str, path: str, headers: Mapping[str, str], client: tuple[str, int] | None) -> RequestInfo:
    """A read-only :class:`RequestInfo` (``headers`` cannot be changed through it)."""
    return RequestInfo(method=method, path=path, headers=MappingProxyType(dict(headers)), client=client)
