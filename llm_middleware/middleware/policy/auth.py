"""Who may call the API: API keys, a check of the host app's own, and paths left public.

A request passes when its path is public, when it carries one of ``api_keys``, or when
``authorize`` returns true for it: either credential is enough, so browser users of the host
app (a session cookie, checked by ``authorize``) and scripts (a key) share one API.
With neither ``api_keys`` nor ``authorize`` the API is open.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping

from ...api.core.errors import HTTPError
from ...request_info import RequestInfo
from ...runtime.cpu_pool import run_cpu


#: ``authorize(info)`` returns (or, when async, resolves to) True to let the request in.
Authorize = Callable[[RequestInfo], bool | Awaitable[bool]]


class AuthenticationError(HTTPError):
    """The request carries no valid credentials (HTTP 401, with ``WWW-Authenticate``)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self) -> None:
        super().__init__(
            "Missing or invalid API key. Send it as 'Authorization: Bearer <key>' or in an 'x-api-key' header.",
            headers=[("www-authenticate", "Bearer")],
        )


def _presented_keys(headers: Mapping[str, str]) -> list[str]:
    """The keys a request presents: ``Authorization: Bearer <key>`` and ``x-api-key: <key>``."""
    keys = []
    scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        keys.append(credentials.strip())
    if api_key := headers.get("x-api-key", "").strip():
        keys.append(api_key)
    return keys


class Authenticator:
    """Decides whether a request under the base path may reach the API."""

    def __init__(
        self, api_keys: Iterable[str] | None, authorize: Authorize | None, public_paths: Iterable[str]
    ) -> None:
        keys = list(api_keys or ())
        if any(not key.strip() for key in keys):
            # An empty key would let in every request that sends "Bearer " with nothing after it.
            raise ValueError("api_keys must not contain empty keys")
        self._keys = [key.encode() for key in keys]
        self._authorize = authorize
        # A synchronous authorize (a database lookup, say) runs on the CPU pool, off the event loop.
        self._authorize_is_async = inspect.iscoroutinefunction(authorize) or inspect.iscoroutinefunction(
            getattr(authorize, "__call__", None)
        )
        self.public_paths = frozenset("/" + path.strip("/") for path in public_paths)

    @property
    def enabled(self) -> bool:
        """True when some requests may be refused."""
        return bool(self._keys) or self._authorize is not None

    def is_public(self, path: str) -> bool:
        """True for a path (relative to the base path) that needs no credentials."""
        return path in self.public_paths

    def has_valid_key(self, headers: Mapping[str, str]) -> bool:
        """True when the request carries one of the API keys.

        Every presented key is compared with every configured key in constant time, so the
        time taken says nothing about how much of a key was right.
        """
        valid = False
        for presented in _presented_keys(headers):
            # Header values are bytes carried as latin-1: compare the bytes the client sent.
            raw = presented.encode("latin-1", "replace")
            for key in self._keys:
                valid |= hmac.compare_digest(raw, key)
        return valid

    async def allows(self, info: RequestInfo) -> bool:
        """True when ``info`` may reach the API (an API key or ``authorize``, either one)."""
        if not self.enabled or self.is_public(info.path):
            return True
        if self._keys and self.has_valid_key(info.headers):
            return True
        if self._authorize is None:
            return False
        verdict = self._authorize(info) if self._authorize_is_async else await run_cpu(self._authorize, info)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict is True

    async def check(self, info: RequestInfo) -> None:
        """Raise :class:`AuthenticationError` unless ``info`` may reach the API."""
        if not await self.allows(info):
            raise AuthenticationError
