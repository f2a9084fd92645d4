"""What a response store is: its records and the async protocol every store implements.

The store keeps encoded JSON it never reads (``bytes``) beside the few fields it indexes (id,
owner, creation time, status, input item ids), so it knows no protocol's wire types, and a team
can back it with Redis or its own database by writing the six methods of :class:`ResponseStore`.

Every method takes the ``owner`` (the identity of the credential that made the request): a
record is found, changed, listed or deleted only by its own owner, and to anyone else it does
not exist.  Records expire ``max_age`` seconds after their ``created_at``; an expired record is
not found even before it is removed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

#: Listing order of input items: ``asc`` is the order they were given in, ``desc`` (the default) the reverse.
Order = Literal["asc", "desc"]

#: Bounds and default of ``limit`` when listing input items (OpenAI's).
MIN_LIMIT, MAX_LIMIT, DEFAULT_LIMIT = 1, 100, 20


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredItem:
    """One input item of a stored response: its ``id`` (unique within the response, the
    pagination cursor) and its encoded JSON."""

    id: str
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredResponse:
    """A stored response, as :meth:`ResponseStore.get` returns it.

    ``id``, ``owner`` and ``created_at`` (unix seconds, the start of its ``max_age``) are fixed
    when the record is put; ``status``, ``response`` and ``conversation`` change with
    :meth:`ResponseStore.update`.  ``response`` is the encoded response object as a client
    retrieves it; ``conversation`` is whatever the API needs to continue from this response
    (every item that led to it, then its output), encoded.
    """

    id: str
    owner: str
    created_at: float
    status: str
    response: bytes
    conversation: bytes = b""

    @property
    def size(self) -> int:
        """Bytes of encoded data the record holds."""
        return len(self.response) + len(self.conversation)


@dataclass(frozen=True, slots=True)
class ItemPage:
    """One page of a stored response's input items, in the order asked for; ``has_more`` is true
    when items follow the last one (ask again with ``after=page.last_id``)."""

    items: list[StoredItem] = field(default_factory=list)
    has_more: bool = False

    @property
    def first_id(self) -> str | None:
        """The id of the page's first item (None for an empty page)."""
        return self.items[0].id if self.items else None

    @property
    def last_id(self) -> str | None:
        """The id of the page's last item (None for an empty page)."""
        return self.items[-1].id if self.items else None


@runtime_checkable
class ResponseStore(Protocol):
    """Where stored responses live: in-process, in an SQLite file, or anything a team plugs in.

    Every method is async and must be safe to call from several event loops and threads at once
    (WSGI requests and ASGI requests share one store).  A store that does I/O must not block the
    event loop while it waits.
    """

    async def put(self, record: StoredResponse, input_items: Sequence[StoredItem] = ()) -> None:
        """Store a new record and its input items (in the order given).

        Raises ValueError when a record with ``record.id`` is already stored (whoever owns it) or
        when two input items share an id.  May evict the least recently used records to stay
        within the store's bounds, but never the one being put.
        """
        ...

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The record ``response_id`` of ``owner``; None when there is none, it belongs to someone
        else, or it expired.  Counts as a use of the record."""
        ...

    async def update(
        self,
        owner: str,
        response_id: str,
        *,
        status: str,
        response: bytes,
        conversation: bytes | None = None,
        if_status: Collection[str] | None = None,
    ) -> bool:
        """Replace the status and encoded response (and the conversation, unless None) of
        ``owner``'s record ``response_id``.

        With ``if_status`` the record changes only while its current status is one of those (a
        finished run and a cancel cannot overwrite each other).  Returns whether it changed.
        """
        ...

    async def delete(self, owner: str, response_id: str) -> bool:
        """Remove ``owner``'s record ``response_id`` and its input items; False when there was none."""
        ...

    async def list_input_items(
        self,
        owner: str,
        response_id: str,
        *,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
        order: Order = "desc",
    ) -> ItemPage | None:
        """Up to ``limit`` (1 to 100) input items of ``owner``'s record, in ``order``, starting
        after the item ``after`` (an unknown ``after`` gives an empty page); None when the
        record is not found as by :meth:`get`.  Raises ValueError for a ``limit`` or ``order``
        out of range.  Counts as a use of the record."""
        ...

    async def expire(self) -> int:
        """Remove every expired record now; returns how many went.  Stores also do it as they go."""
        ...


def check_page_request(limit: int, order: str) -> None:
    """Raise ValueError unless ``limit`` and ``order`` are a valid listing request."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not MIN_LIMIT <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from {MIN_LIMIT} to {MAX_LIMIT}, got {limit!r}")
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")


def check_item_ids(input_items: Sequence[StoredItem]) -> None:
    """Raise ValueError when two input items share an id (the id is the listing's cursor)."""
    if len({item.id for item in input_items}) != len(input_items):
        raise ValueError("input item ids must be unique within a response")


def page_of(items: Sequence[StoredItem], *, after: str | None, limit: int, order: Order) -> ItemPage:
    """The page of ``items`` (in the order they were given) that a listing asks for.

    For stores that hold a response's items in one piece (in memory, one Redis value).
    """
    check_page_request(limit, order)
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        start = next((index + 1 for index, item in enumerate(ordered) if item.id == after), len(ordered))
    return ItemPage(list(ordered[start : start + limit]), has_more=start + limit < len(ordered))
