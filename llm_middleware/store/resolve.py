"""The ``response_store`` option: a URL, a store object, or None, turned into a store at construction."""

from __future__ import annotations

import inspect
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .memory import MemoryResponseStore
from .protocol import ResponseStore
from .sqlite import SQLiteResponseStore

#: What ``response_store`` may be besides a store object.
ResponseStoreOption = str | ResponseStore | None

_FORMS = "'memory://', 'sqlite:///relative/file.db' or 'sqlite:////absolute/file.db'"
# The options each kind takes in its URL's query, and the type of each value.
_OPTIONS: dict[str, dict[str, type]] = {
    "memory": {"max_entries": int, "max_bytes": int, "max_age": float},
    "sqlite": {"max_entries": int, "max_age": float, "busy_timeout": float},
}
_METHODS = ("put", "get", "update", "delete", "list_input_items", "expire")


def _options(kind: str, url: str, query: str) -> dict[str, Any]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"response_store {url!r}: malformed query {query!r}") from None
    allowed = _OPTIONS[kind]
    options: dict[str, Any] = {}
    for name, text in pairs:
        if name not in allowed:
            raise ValueError(f"response_store {url!r}: unknown option {name!r} (a {kind} store takes {', '.join(allowed)})")
        if name in options:
            raise ValueError(f"response_store {url!r}: option {name!r} is given twice")
        try:
            options[name] = allowed[name](text)
        except ValueError:
            what = "an integer" if allowed[name] is int else "a number of seconds"
            raise ValueError(f"response_store {url!r}: {name} must be {what}, got {text!r}") from None
    return options


def store_from_url(url: str) -> MemoryResponseStore | SQLiteResponseStore:
    """The store a ``response_store`` URL names; ValueError, saying what would do, for any other string.

    ``memory://`` is the in-process store; ``sqlite:///relative/file.db`` (relative to the current
    directory) and ``sqlite:////absolute/file.db`` an SQLite file.  Either takes its bounds as a
    query: ``sqlite:////var/lib/app/responses.db?max_age=86400&max_entries=50000``.
    """
    parts = urlsplit(url)
    kind = parts.scheme.lower()
    if kind not in _OPTIONS or parts.fragment:
        raise ValueError(f"response_store {url!r} is not a store URL: use {_FORMS}")
    if parts.netloc:
        raise ValueError(f"response_store {url!r} names a host; use {_FORMS}")
    options = _options(kind, url, parts.query)
    if kind == "memory":
        if parts.path:
            raise ValueError(f"response_store {url!r}: a memory store has no path; use 'memory://'")
        return MemoryResponseStore(**options)
    path = unquote(parts.path)
    if not path.startswith("/") or not path[1:]:
        raise ValueError(f"response_store {url!r} has no file path: use {_FORMS}")
    if path[1:] == ":memory:":
        raise ValueError(
            f"response_store {url!r}: an in-memory SQLite database is private to one connection; use 'memory://'"
        )
    return SQLiteResponseStore(path[1:], **options)


def check_store(store: object) -> ResponseStore:
    """``store`` itself when it implements :class:`ResponseStore` with async methods; TypeError otherwise."""
    if isinstance(store, type):
        raise TypeError(f"response_store must be a store object, not the class {store.__name__}: instantiate it")
    missing = [name for name in _METHODS if not callable(getattr(store, name, None))]
    if missing:
        raise TypeError(f"response_store {store!r} lacks {', '.join(missing)}: see the ResponseStore protocol")
    not_async = [name for name in _METHODS if not inspect.iscoroutinefunction(getattr(store, name))]
    if not_async:
        raise TypeError(f"response_store {store!r}: {', '.join(not_async)} must be async methods (async def)")
    return store  # type: ignore[return-value]


def open_response_store(option: ResponseStoreOption) -> tuple[ResponseStore, bool]:
    """The store for the ``response_store`` option, and whether it was made here (and so is closed here).

    None is a new in-process store with the default bounds; a string is a URL (:func:`store_from_url`);
    anything else must be a store object, which stays its owner's to close.
    """
    if option is None:
        return MemoryResponseStore(), True
    if isinstance(option, str):
        return store_from_url(option), True
    return check_store(option), False
