"""The default response store: bounded, in this process, gone when it exits."""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

from .protocol import (
    DEFAULT_LIMIT,
    ItemPage,
    Order,
    StoredItem,
    StoredResponse,
    check_item_ids,
    check_page_request,
    page_of,
)

#: Defaults: the most records kept, the most bytes of encoded data they hold, and their lifetime.
MAX_ENTRIES = 1000
MAX_BYTES = 256 * 2**20
MAX_AGE = 24 * 3600.0


@dataclass(slots=True)
class _Entry:
    record: StoredResponse
    items: tuple[StoredItem, ...]
    size: int


def _size(record: StoredResponse, items: Sequence[StoredItem]) -> int:
    return record.size + sum(len(item.id) + len(item.data) for item in items)


class MemoryResponseStore:
    """A :class:`~llm_middleware.store.ResponseStore` in a dict, bounded three ways.

    At most ``max_entries`` records holding at most ``max_bytes`` of encoded data (responses,
    conversations and input items): past either bound the least recently used records are
    evicted, though never the one just stored (so one record larger than ``max_bytes`` is kept
    alone).  Records expire ``max_age`` seconds after their ``created_at``.  One lock guards
    every call, held for dictionary work only, so WSGI threads and event loops share the store.
    ``clock`` gives the current unix time (``time.time``).
    """

    def __init__(
        self,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or not max_age > 0:
            raise ValueError(
                f"max_entries, max_bytes and max_age must be > 0, got {max_entries}, {max_bytes} and {max_age}"
            )
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._bytes = 0
        # (created_at, id) of every record, oldest first, so expiry never scans the records; an id
        # evicted or deleted stays here until its time comes or the heap is rebuilt.
        self._ages: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """The number of records held (expired ones included until they are removed)."""
        return len(self._entries)

    # ---- under the lock ---------------------------------------------------------------------------

    def _remove(self, response_id: str) -> None:
        self._bytes -= self._entries.pop(response_id).size

    def _expire(self) -> int:
        cutoff = self._clock() - self.max_age
        removed = 0
        while self._ages and self._ages[0][0] <= cutoff:
            created_at, key = heapq.heappop(self._ages)
            entry = self._entries.get(key)
            if entry is not None and entry.record.created_at == created_at:
                self._remove(key)
                removed += 1
        if len(self._ages) > 2 * len(self._entries) + 64:  # mostly ids that are gone: start afresh
            self._ages = [(entry.record.created_at, key) for key, entry in self._entries.items()]
            heapq.heapify(self._ages)
        return removed

    def _evict(self, keep: str) -> None:
        while len(self._entries) > self.max_entries or (self._bytes > self.max_bytes and len(self._entries) > 1):
            oldest = next(iter(self._entries))
            if oldest == keep:  # the newest use is last: only when it is the sole record
                break
            self._remove(oldest)

    def _find(self, owner: str, response_id: str) -> _Entry | None:
        entry = self._entries.get(response_id)
        if entry is None or entry.record.owner != owner:
            return None
        if entry.record.created_at <= self._clock() - self.max_age:
            self._remove(response_id)
            return None
        self._entries.move_to_end(response_id)
        return entry

    # ---- the protocol -----------------------------------------------------------------------------

    async def put(self, record: StoredResponse, input_items: Sequence[StoredItem] = ()) -> None:
        """Store a new record (see :meth:`ResponseStore.put`)."""
        check_item_ids(input_items)
        items = tuple(input_items)
        with self._lock:
            self._expire()
            if record.id in self._entries:
                raise ValueError(f"a response with id {record.id!r} is already stored")
            entry = _Entry(record, items, _size(record, items))
            self._entries[record.id] = entry
            self._bytes += entry.size
            heapq.heappush(self._ages, (record.created_at, record.id))
            self._evict(keep=record.id)

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """``owner``'s record ``response_id``, or None (see :meth:`ResponseStore.get`)."""
        with self._lock:
            entry = self._find(owner, response_id)
            return entry.record if entry is not None else None

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
        """Change a record's status and encoded data (see :meth:`ResponseStore.update`)."""
        with self._lock:
            entry = self._find(owner, response_id)
            if entry is None or (if_status is not None and entry.record.status not in if_status):
                return False
            changes = {"status": status, "response": response}
            if conversation is not None:
                changes["conversation"] = conversation
            entry.record = replace(entry.record, **changes)  # type: ignore[arg-type]
            size = _size(entry.record, entry.items)
            self._bytes += size - entry.size
            entry.size = size
            self._evict(keep=response_id)
            return True

    async def delete(self, owner: str, response_id: str) -> bool:
        """Remove a record (see :meth:`ResponseStore.delete`)."""
        with self._lock:
            if self._find(owner, response_id) is None:
                return False
            self._remove(response_id)
            return True

    async def list_input_items(
        self,
        owner: str,
        response_id: str,
        *,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
        order: Order = "desc",
    ) -> ItemPage | None:
        """A page of a record's input items (see :meth:`ResponseStore.list_input_items`)."""
        check_page_request(limit, order)
        with self._lock:
            entry = self._find(owner, response_id)
            items = entry.items if entry is not None else None
        return page_of(items, after=after, limit=limit, order=order) if items is not None else None

    async def expire(self) -> int:
        """Remove every expired record now; returns how many went."""
        with self._lock:
            return self._expire()

    def close(self) -> None:
        """Drop every record."""
        with self._lock:
            self._entries.clear()
            self._ages.clear()
            self._bytes = 0
