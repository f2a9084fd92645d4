"""A durable response store in an SQLite file, shared by the worker processes of one host.

The standard library's ``sqlite3`` in WAL mode: one writer at a time holds the file (``BEGIN
IMMEDIATE``; the others wait up to ``busy_timeout`` for it).  Reads write too (they mark the record
used, for least-recently-used eviction), so every call takes that turn.  Every
call runs on a small thread pool of the store's own, never on the event loop and never on asyncio's
default executor, since a write may wait for another process's transaction.  Each pool thread has
its own connection; nothing opened in a parent process is used after a fork.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import StoreUnavailableError
from ..runtime.cpu_pool import CPUPool
from .protocol import (
    DEFAULT_LIMIT,
    ItemPage,
    Order,
    StoredItem,
    StoredResponse,
    check_item_ids,
    check_page_request,
)

#: Defaults: the most records kept, their lifetime (OpenAI keeps stored responses 30 days), and how
#: long a write waits for another writer before failing.
MAX_ENTRIES = 100_000
MAX_AGE = 30 * 24 * 3600.0
BUSY_TIMEOUT = 5.0
logger = logging.getLogger("llm_middleware.store")
#: Threads of the store's pool per process: a few calls may wait on the file while others read.
THREADS = 4

# Table names carry a prefix so the store can live in a database file the host app also uses.
_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS llm_responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    response BLOB NOT NULL,
    conversation BLOB NOT NULL,
    used INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS llm_responses_by_age ON llm_responses (created_at);
CREATE INDEX IF NOT EXISTS llm_responses_by_use ON llm_responses (used);
CREATE TABLE IF NOT EXISTS llm_response_items (
    response_id TEXT NOT NULL REFERENCES llm_responses (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    id TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (response_id, position),
    UNIQUE (response_id, id)
);
COMMIT;
"""
# The next value of the use counter: the least recently used record has the smallest.
_NEXT_USE = "(SELECT COALESCE(MAX(used), 0) + 1 FROM llm_responses)"
_RECORD = "SELECT id, owner, created_at, status, response, conversation FROM llm_responses"


class _ProcessState:
    """What the store holds in one process: its connections, the lock that makes this process's
    writers take turns, and whether the schema was checked."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.local = threading.local()
        self.connections: list[sqlite3.Connection] = []
        self.schema_ready = False


class SQLiteResponseStore:
    """A :class:`~llm_middleware.store.ResponseStore` in the SQLite file at ``path``.

    The file and its tables are created on first use.  At most ``max_entries`` records are kept
    (past it the least recently used go); records expire ``max_age`` seconds after their
    ``created_at``.  A write waits up to ``busy_timeout`` seconds for another writer, then fails
    with :class:`~llm_middleware.errors.StoreUnavailableError` (a 503 to the client).  ``clock`` gives the current unix time (``time.time``).
    :meth:`close` closes this process's connections (a later call opens them again).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_entries: int = MAX_ENTRIES,
        max_age: float = MAX_AGE,
        busy_timeout: float = BUSY_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1 or not max_age > 0 or busy_timeout < 0:
            raise ValueError(
                f"max_entries and max_age must be > 0 and busy_timeout >= 0, "
                f"got {max_entries}, {max_age} and {busy_timeout}"
            )
        # Absolute now: a later chdir of the host must not move the database.
        self.path = Path(path).absolute()
        if not self.path.parent.is_dir():
            raise ValueError(f"the directory of the response store {str(self.path)!r} does not exist")
        if self.path.is_dir():
            raise ValueError(f"the response store {str(self.path)!r} is a directory, not a database file")
        self.max_entries = max_entries
        self.max_age = max_age
        self.busy_timeout = busy_timeout
        self._clock = clock
        self._pool = CPUPool(THREADS, name="llm-store")
        self._state_lock = threading.Lock()
        self._state: _ProcessState | None = None
        # States inherited through fork: kept referenced so a child never closes its parent's connections.
        self._inherited: list[_ProcessState] = []

    def __repr__(self) -> str:
        return f"SQLiteResponseStore({str(self.path)!r})"

    # ---- connections and transactions (on the store's threads) ------------------------------------

    def _process_state(self) -> _ProcessState:
        state = self._state
        if state is not None and state.pid == os.getpid():
            return state
        with self._state_lock:
            if self._state is None or self._state.pid != os.getpid():
                if self._state is not None:
                    self._inherited.append(self._state)
                self._state = _ProcessState()
            return self._state

    def _connection(self, state: _ProcessState) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(state.local, "connection", None)
        if connection is not None:
            return connection
        # Autocommit mode: the transactions below are begun and ended explicitly.
        connection = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL").fetchone()
            connection.execute("PRAGMA synchronous=NORMAL")  # durable across crashes; WAL syncs at checkpoints
            connection.execute("PRAGMA foreign_keys=ON")
            with state.write_lock:
                if not state.schema_ready:
                    connection.executescript(_SCHEMA)
                    state.schema_ready = True
        except BaseException:
            connection.close()
            raise
        with state.lock:
            state.connections.append(connection)
        state.local.connection = connection
        return connection

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: this process's writers take turns, then wait for other processes'."""
        state = self._process_state()
        connection = self._connection(state)
        with state.write_lock:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _cutoff(self) -> float:
        return self._clock() - self.max_age

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self._pool.run(fn, *args)
        except sqlite3.OperationalError:
            # Locked past busy_timeout, or the file went away: the client may retry; the details are logged.
            logger.exception("the response store at %s failed", self.path)
            raise StoreUnavailableError("The response store is busy; try again.", retry_after=1) from None

    # ---- the operations, each one transaction ------------------------------------------------------

    def _put(self, record: StoredResponse, items: Sequence[StoredItem]) -> None:
        with self._writing() as db:
            db.execute("DELETE FROM llm_responses WHERE created_at <= ?", (self._cutoff(),))
            if db.execute("SELECT 1 FROM llm_responses WHERE id = ?", (record.id,)).fetchone():
                raise ValueError(f"a response with id {record.id!r} is already stored")
            db.execute(
                f"INSERT INTO llm_responses (id, owner, created_at, status, response, conversation, used) "
                f"VALUES (?, ?, ?, ?, ?, ?, {_NEXT_USE})",
                (record.id, record.owner, record.created_at, record.status, record.response, record.conversation),
            )
            db.executemany(
                "INSERT INTO llm_response_items (response_id, position, id, data) VALUES (?, ?, ?, ?)",
                [(record.id, position, item.id, item.data) for position, item in enumerate(items)],
            )
            (count,) = db.execute("SELECT COUNT(*) FROM llm_responses").fetchone()
            if count > self.max_entries:
                db.execute(
                    "DELETE FROM llm_responses WHERE id IN "
                    "(SELECT id FROM llm_responses WHERE id != ? ORDER BY used LIMIT ?)",
                    (record.id, count - self.max_entries),
                )

    def _touch(self, db: sqlite3.Connection, owner: str, response_id: str) -> tuple[Any, ...] | None:
        """``owner``'s live record ``response_id`` as a row, marked as just used; None when not found."""
        row = db.execute(
            f"{_RECORD} WHERE id = ? AND owner = ? AND created_at > ?", (response_id, owner, self._cutoff())
        ).fetchone()
        if row is not None:
            db.execute(f"UPDATE llm_responses SET used = {_NEXT_USE} WHERE id = ?", (response_id,))
        return row

    def _get(self, owner: str, response_id: str) -> StoredResponse | None:
        with self._writing() as db:
            row = self._touch(db, owner, response_id)
        if row is None:
            return None
        id_, owner_, created_at, status, response, conversation = row
        return StoredResponse(
            id=id_, owner=owner_, created_at=created_at, status=status,
            response=bytes(response), conversation=bytes(conversation),
        )

    def _update(
        self,
        owner: str,
        response_id: str,
        status: str,
        response: bytes,
        conversation: bytes | None,
        if_status: Collection[str] | None,
    ) -> bool:
        sql = (
            f"UPDATE llm_responses SET status = ?, response = ?, conversation = COALESCE(?, conversation), "
            f"used = {_NEXT_USE} WHERE id = ? AND owner = ? AND created_at > ?"
        )
        params: list[Any] = [status, response, conversation, response_id, owner, self._cutoff()]
        if if_status is not None:
            statuses = list(if_status)
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            params += statuses
        with self._writing() as db:
            return db.execute(sql, params).rowcount == 1

    def _delete(self, owner: str, response_id: str) -> bool:
        with self._writing() as db:
            cursor = db.execute(
                "DELETE FROM llm_responses WHERE id = ? AND owner = ? AND created_at > ?",
                (response_id, owner, self._cutoff()),
            )
            return cursor.rowcount == 1

    def _list(self, owner: str, response_id: str, after: str | None, limit: int, order: Order) -> ItemPage | None:
        with self._writing() as db:
            if self._touch(db, owner, response_id) is None:
                return None
            start = -1 if order == "asc" else 2**62
            if after is not None:
                found = db.execute(
                    "SELECT position FROM llm_response_items WHERE response_id = ? AND id = ?", (response_id, after)
                ).fetchone()
                if found is None:
                    return ItemPage()
                (start,) = found
            comparison, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
            rows = db.execute(
                f"SELECT id, data FROM llm_response_items WHERE response_id = ? AND position {comparison} ? "
                f"ORDER BY position {direction} LIMIT ?",
                (response_id, start, limit + 1),
            ).fetchall()
        items = [StoredItem(id=id_, data=bytes(data)) for id_, data in rows[:limit]]
        return ItemPage(items, has_more=len(rows) > limit)

    def _expire(self) -> int:
        with self._writing() as db:
            return db.execute("DELETE FROM llm_responses WHERE created_at <= ?", (self._cutoff(),)).rowcount

    # ---- the protocol -----------------------------------------------------------------------------

    async def put(self, record: StoredResponse, input_items: Sequence[StoredItem] = ()) -> None:
        """Store a new record (see :meth:`ResponseStore.put`)."""
        check_item_ids(input_items)
        await self._run(self._put, record, tuple(input_items))

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """``owner``'s record ``response_id``, or None (see :meth:`ResponseStore.get`)."""
        return await self._run(self._get, owner, response_id)

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
        if if_status is not None and not if_status:
            return False
        return await self._run(self._update, owner, response_id, status, response, conversation, if_status)

    async def delete(self, owner: str, response_id: str) -> bool:
        """Remove a record (see :meth:`ResponseStore.delete`)."""
        return await self._run(self._delete, owner, response_id)

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
        return await self._run(self._list, owner, response_id, after, limit, order)

    async def expire(self) -> int:
        """Remove every expired record now; returns how many went."""
        return await self._run(self._expire)

    def close(self) -> None:
        """Wait for the calls in progress, then close this process's connections."""
        self._pool.shutdown()
        with self._state_lock:
            state, self._state = self._state, None
            if state is not None and state.pid != os.getpid():
                self._inherited.append(state)
                state = None
        if state is not None:
            for connection in state.connections:
                connection.close()
