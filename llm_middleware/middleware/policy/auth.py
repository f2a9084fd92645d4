"""Who may call the API: API keys, a check of the host app's own, and paths left public.

A request passes when its path is public, when it carries one of ``api_keys``, or when
``authorize`` lets it in: either credential is enough, so browser users of the host app (a
session cookie, checked by ``authorize``) and scripts (a key) share one API.  With neither
``api_keys`` nor ``authorize`` the API is open.

A request that passes has an identity, which owns what it stores (stored responses): a digest
of its API key, or what ``authorize`` returned, or anonymous (see :func:`key_identity`,
:func:`authorized_identity`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping

from ...api.core.errors import HTTPError
from ...api.core.http import ANONYMOUS
from ...request_info import RequestInfo
from ...runtime.hooks import call_hook, is_async


#: ``authorize(info)`` returns (or, when async, resolves to) the caller's identity: a non-empty string
#: (or another object with a ``str`` of its own) lets the request in as that identity, True lets it
#: in anonymously, anything false refuses it.
Authorize = Callable[[RequestInfo], object | Awaitable[object]]

# Keeps the digests of API keys apart from digests of the same bytes made for any other purpose.
_KEY_DIGEST_PREFIX = b"llm_middleware api key\x00"


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


def key_identity(key: str) -> str:
    """The identity of requests made with the API key ``key``: ``"key:"`` and a SHA-256 digest, so
    that what is stored under it never reveals the key."""
    return "key:" + hashlib.sha256(_KEY_DIGEST_PREFIX + key.encode()).hexdigest()


def authorized_identity(verdict: object) -> str | None:
    """The identity an ``authorize`` verdict gives its request; None when it refuses the request.

    True is :data:`ANONYMOUS`; a false value (False, None, ``""``) refuses; a string is the
    identity ``"user:" + verdict``, and any other object is taken by its ``str``, which must be
    its own (the default ``<object at 0x...>`` differs from one request to the next).
    """
    if verdict is True:
        return ANONYMOUS
    if isinstance(verdict, bool) or not verdict:
        return None
    if isinstance(verdict, str):
        return "user:" + verdict
    if type(verdict).__str__ is object.__str__ and type(verdict).__repr__ is object.__repr__:
        raise TypeError(
            f"authorize returned a {type(verdict).__name__} without a str of its own: return True, "
            "False, or a string naming the caller"
        )
    return "user:" + str(verdict)


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
        self._keys = [(key.encode(), key_identity(key)) for key in keys]
        self._authorize = authorize
        # A synchronous authorize (a database lookup, say) runs on the CPU pool, off the event loop.
        self._authorize_is_async = is_async(authorize)
        self.public_paths = frozenset("/" + path.strip("/") for path in public_paths)

    @property
    def enabled(self) -> bool:
        """True when some requests may be refused."""
        return bool(self._keys) or self._authorize is not None

    def is_public(self, path: str) -> bool:
        """True for a path (relative to the base path) that needs no credentials."""
        return path in self.public_paths

    def key_identity(self, headers: Mapping[str, str]) -> str | None:
        """The identity of the first valid API key the request carries; None when it carries none.

        Every presented key is compared with every configured key in constant time, so the
        time taken says nothing about how much of a key was right.
        """
        found = None
        for presented in _presented_keys(headers):
            # Header values are bytes carried as latin-1: compare the bytes the client sent.
            raw = presented.encode("latin-1", "replace")
            for key, identity in self._keys:
                if hmac.compare_digest(raw, key) and found is None:
                    found = identity
        return found

    def has_valid_key(self, headers: Mapping[str, str]) -> bool:
        """True when the request carries one of the API keys."""
        return self.key_identity(headers) is not None

    async def identify(self, info: RequestInfo) -> str | None:
        """The identity ``info`` reaches the API with; None when it may not.

        A valid key decides without asking ``authorize`` (and names the caller on a public path
        too); a public path without one, and every request of an open API, are anonymous.
        """
        if not self.enabled:
            return ANONYMOUS
        if self._keys and (identity := self.key_identity(info.headers)) is not None:
            return identity
        if self.is_public(info.path):
            return ANONYMOUS
        if self._authorize is None:
            return None
        return authorized_identity(await call_hook(self._authorize, self._authorize_is_async, info))

    async def allows(self, info: RequestInfo) -> bool:
        """True when ``info`` may reach the API (an API key or ``authorize``, either one)."""
        return await self.identify(info) is not None

    async def check(self, info: RequestInfo) -> str:
        """The identity ``info`` reaches the API with; raise :class:`AuthenticationError` if it may not."""
        identity = await self.identify(info)
        if identity is None:
            raise AuthenticationError
        return identity
