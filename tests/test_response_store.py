"""The response store: one suite over both implementations, what only SQLite does, and the option that picks one."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import ROOT

from llm_middleware.errors import StoreUnavailableError
from llm_middleware.cli import build_parser
from llm_middleware.middleware import LLMMiddleware
from llm_middleware.store import (
    ItemPage,
    MemoryResponseStore,
    ResponseStore,
    SQLiteResponseStore,
    StoredItem,
    StoredResponse,
    open_response_store,
    store_from_url,
)

Store = MemoryResponseStore | SQLiteResponseStore


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Callable[..., Store]]:
    """``make_store(**bounds)``: a store of the parametrized kind on the test's clock (SQLite: a new file)."""
    made: list[Store] = []

    def make(**options: Any) -> Store:
        if request.param == "memory":
            store: Store = MemoryResponseStore(clock=clock, **options)
        else:
            store = SQLiteResponseStore(tmp_path / f"responses-{len(made)}.db", clock=clock, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def record(response_id: str, owner: str = "key:alice", *, created_at: float, status: str = "completed",
           conversation: bytes = b"") -> StoredResponse:
    return StoredResponse(id=response_id, owner=owner, created_at=created_at, status=status,
                          response=f'{{"id":"{response_id}"}}'.encode(), conversation=conversation)


def items(count: int, prefix: str = "msg") -> list[StoredItem]:
    return [StoredItem(id=f"{prefix}_{i}", data=f'{{"n":{i}}}'.encode()) for i in range(count)]


def ids(page: ItemPage | None) -> list[str]:
    assert page is not None
    return [item.id for item in page.items]


# ---- the protocol, on both stores ---------------------------------------------------------------


async def test_a_record_comes_back_as_it_was_put(make_store: Callable[..., Store], clock: Clock) -> None:
    store = make_store()
    assert isinstance(store, ResponseStore)
    stored = record("resp_1", created_at=clock.now, status="in_progress", conversation=b'[{"role":"user"}]')
    await store.put(stored, items(3))
    assert await store.get("key:alice", "resp_1") == stored
    assert await store.get("key:alice", "resp_2") is None
    with pytest.raises(ValueError, match="already stored"):  # whoever owns it
        await store.put(record("resp_1", "key:bob", created_at=clock.now))
    with pytest.raises(ValueError, match="unique"):
        await store.put(record("resp_2", created_at=clock.now), [*items(2), *items(1)])
    assert await store.get("key:alice", "resp_2") is None
    assert await store.get("key:alice", "resp_1") == stored


async def test_a_record_is_visible_to_its_owner_only(make_store: Callable[..., Store], clock: Clock) -> None:
    store = make_store()
    mine = record("resp_a", created_at=clock.now, status="queued")
    await store.put(mine, items(2))
    for stranger in ("key:bob", "user:alice", "anonymous", ""):
        assert await store.get(stranger, "resp_a") is None
        assert await store.list_input_items(stranger, "resp_a") is None
        assert not await store.update(stranger, "resp_a", status="cancelled", response=b"{}")
        assert not await store.delete(stranger, "resp_a")
    assert await store.get("key:alice", "resp_a") == mine
    assert ids(await store.list_input_items("key:alice", "resp_a")) == ["msg_1", "msg_0"]
    # The same id under another owner is still the same id: nobody can shadow a stored response.
    with pytest.raises(ValueError):
        await store.put(record("resp_a", "key:bob", created_at=clock.now))


async def test_update_changes_status_and_data_and_can_be_conditional(
    make_store: Callable[..., Store], clock: Clock
) -> None:
    store = make_store()
    await store.put(record("resp_bg", created_at=clock.now, status="queued", conversation=b"[1]"), items(1))
    assert await store.update("key:alice", "resp_bg", status="in_progress", response=b'{"s":"in_progress"}')
    got = await store.get("key:alice", "resp_bg")
    assert got is not None and got.status == "in_progress" and got.response == b'{"s":"in_progress"}'
    assert got.conversation == b"[1]" and got.created_at == clock.now  # kept when not given
    # A cancel and the run's own end race: whichever comes first wins, the other changes nothing.
    running = ("queued", "in_progress")
    assert await store.update("key:alice", "resp_bg", status="cancelled", response=b"c", if_status=running)
    assert not await store.update("key:alice", "resp_bg", status="completed", response=b"d", conversation=b"[2]",
                                  if_status=running)
    got = await store.get("key:alice", "resp_bg")
    assert got is not None and (got.status, got.response, got.conversation) == ("cancelled", b"c", b"[1]")
    assert not await store.update("key:alice", "resp_bg", status="x", response=b"x", if_status=())
    assert await store.update("key:alice", "resp_bg", status="completed", response=b"e", conversation=b"[3]")
    got = await store.get("key:alice", "resp_bg")
    assert got is not None and (got.status, got.response, got.conversation) == ("completed", b"e", b"[3]")
    assert not await store.update("key:alice", "resp_missing", status="completed", response=b"")
    assert ids(await store.list_input_items("key:alice", "resp_bg")) == ["msg_0"]  # items never change


async def test_delete_removes_the_record_and_its_items(make_store: Callable[..., Store], clock: Clock) -> None:
    store = make_store()
    await store.put(record("resp_d", created_at=clock.now), items(3))
    assert await store.delete("key:alice", "resp_d")
    assert await store.get("key:alice", "resp_d") is None
    assert await store.list_input_items("key:alice", "resp_d") is None
    assert not await store.delete("key:alice", "resp_d")
    await store.put(record("resp_d", created_at=clock.now), items(1, "new"))  # the id is free again
    assert ids(await store.list_input_items("key:alice", "resp_d", order="asc")) == ["new_0"]


async def test_input_items_page_in_either_order(make_store: Callable[..., Store], clock: Clock) -> None:
    store = make_store()
    given = items(7)
    await store.put(record("resp_p", created_at=clock.now), given)
    newest_first = [item.id for item in reversed(given)]
    page = await store.list_input_items("key:alice", "resp_p")
    assert page is not None and ids(page) == newest_first and not page.has_more  # desc, up to 20
    assert page.items[0].data == b'{"n":6}'
    assert (page.first_id, page.last_id) == ("msg_6", "msg_0")
    for order, expected in (("asc", [item.id for item in given]), ("desc", newest_first)):
        seen: list[str] = []
        after = None
        while True:
            page = await store.list_input_items("key:alice", "resp_p", after=after, limit=3, order=order)
            assert page is not None and 1 <= len(page.items) <= 3
            seen += ids(page)
            if not page.has_more:
                break
            after = page.last_id
        assert seen == expected
    page = await store.list_input_items("key:alice", "resp_p", after="msg_2", limit=2, order="asc")
    assert page is not None and ids(page) == ["msg_3", "msg_4"] and page.has_more
    page = await store.list_input_items("key:alice", "resp_p", after="msg_1", limit=1)
    assert page is not None and ids(page) == ["msg_0"] and not page.has_more
    page = await store.list_input_items("key:alice", "resp_p", after="msg_0")
    assert page == ItemPage() and page.first_id is None and page.last_id is None  # nothing after the last
    assert await store.list_input_items("key:alice", "resp_p", after="msg_unknown") == ItemPage()
    assert ids(await store.list_input_items("key:alice", "resp_p", limit=100)) == newest_first
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": True}, {"limit": "3"}, {"order": "up"}):
        with pytest.raises(ValueError):
            await store.list_input_items("key:alice", "resp_p", **bad)
        with pytest.raises(ValueError):  # checked before the record is looked for
            await store.list_input_items("key:alice", "resp_missing", **bad)
    await store.put(record("resp_empty", created_at=clock.now))
    assert await store.list_input_items("key:alice", "resp_empty") == ItemPage()


async def test_past_max_entries_the_least_recently_used_go(make_store: Callable[..., Store], clock: Clock) -> None:
    store = make_store(max_entries=3)
    for name in ("a", "b", "c"):
        await store.put(record(name, created_at=clock.now), items(2, name))
    assert await store.get("key:alice", "a") is not None  # a is now the latest used: b is the oldest
    await store.put(record("d", created_at=clock.now))
    assert await store.get("key:alice", "b") is None
    assert await store.list_input_items("key:alice", "c") is not None  # listing counts as a use: now a is oldest
    await store.put(record("e", created_at=clock.now))
    assert await store.get("key:alice", "a") is None
    assert await store.update("key:alice", "d", status="completed", response=b"{}")  # so does an update
    await store.put(record("f", created_at=clock.now))
    assert [name for name in "abcdef" if await store.get("key:alice", name)] == ["d", "e", "f"]
    # Those look-ups used d first; a stranger's failed look-up is no use, so d still goes first.
    assert await store.get("key:mallory", "d") is None
    await store.put(record("g", created_at=clock.now))
    assert [name for name in "defg" if await store.get("key:alice", name)] == ["e", "f", "g"]


async def test_records_expire_max_age_after_creation(make_store: Callable[..., Store], clock: Clock) -> None:
    store = make_store(max_age=100)
    await store.put(record("old", created_at=clock.now), items(1))
    clock.now += 60
    await store.put(record("young", created_at=clock.now), items(1))
    assert await store.get("key:alice", "old") is not None  # use does not extend a record's life
    clock.now += 40
    assert await store.get("key:alice", "old") is None
    assert await store.list_input_items("key:alice", "old") is None
    assert not await store.update("key:alice", "old", status="completed", response=b"")
    assert not await store.delete("key:alice", "old")
    assert await store.get("key:alice", "young") is not None
    await store.put(record("old", created_at=clock.now))  # an expired id can be stored again
    clock.now += 60
    assert await store.expire() == 1  # young
    assert await store.expire() == 0
    assert await store.get("key:alice", "old") is not None


async def test_concurrent_writers_from_threads(make_store: Callable[..., Store], clock: Clock) -> None:
    store = make_store()
    threads, per_thread = 6, 15
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        async def work() -> None:
            for i in range(per_thread):
                name = f"t{n}-{i}"
                await store.put(record(name, f"user:{n}", created_at=clock.now, status="queued"), items(2, name))
                assert await store.update(f"user:{n}", name, status="completed", response=b"done",
                                          if_status=["queued"])
                assert await store.get(f"user:{(n + 1) % threads}", name) is None

        try:
            asyncio.run(work())  # an event loop of its own, as a WSGI thread's bridge has
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    for n in range(threads):
        for i in range(per_thread):
            got = await store.get(f"user:{n}", f"t{n}-{i}")
            assert got is not None and got.status == "completed" and got.response == b"done"
            assert ids(await store.list_input_items(f"user:{n}", f"t{n}-{i}", order="asc")) == [
                f"t{n}-{i}_0", f"t{n}-{i}_1"]


# ---- what only one store does --------------------------------------------------------------------


async def test_memory_store_bounds_the_bytes_it_holds(clock: Clock) -> None:
    store = MemoryResponseStore(max_bytes=1000, clock=clock)
    for name in ("a", "b", "c"):
        await store.put(StoredResponse(id=name, owner="o", created_at=clock.now, status="completed",
                                       response=b"x" * 300))
    await store.put(StoredResponse(id="d", owner="o", created_at=clock.now, status="completed", response=b"x" * 300))
    assert [name for name in "abcd" if await store.get("o", name)] == ["b", "c", "d"]
    # Items and the conversation count too; a grown record pushes out the oldest.
    assert await store.update("o", "b", status="completed", response=b"x", conversation=b"y" * 500)
    assert [name for name in "bcd" if await store.get("o", name)] == ["b", "d"]
    # A record larger than the bound is kept, alone.
    await store.put(StoredResponse(id="big", owner="o", created_at=clock.now, status="completed", response=b"z" * 500),
                    [StoredItem(id="i", data=b"z" * 1000)])
    assert len(store) == 1 and await store.get("o", "big") is not None
    store.close()
    assert len(store) == 0


def test_bad_bounds_are_refused(tmp_path: Path) -> None:
    for options in ({"max_entries": 0}, {"max_age": 0}, {"max_bytes": 0}, {"max_age": float("nan")}):
        with pytest.raises(ValueError, match="must be > 0"):
            MemoryResponseStore(**options)
    for options in ({"max_entries": 0}, {"max_age": -1}, {"busy_timeout": -1}):
        with pytest.raises(ValueError):
            SQLiteResponseStore(tmp_path / "x.db", **options)
    with pytest.raises(ValueError, match="does not exist"):
        SQLiteResponseStore(tmp_path / "missing" / "x.db")
    with pytest.raises(ValueError, match="directory"):
        SQLiteResponseStore(tmp_path)


async def test_sqlite_store_outlives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "responses.db"
    first = SQLiteResponseStore(path)
    stored = StoredResponse(id="resp_kept", owner="key:k", created_at=1e10, status="completed", response=b"{}",
                            conversation=b"[]")
    await first.put(stored, items(4))
    first.close()
    second = SQLiteResponseStore(path)
    try:
        assert await second.get("key:k", "resp_kept") == stored
        assert ids(await second.list_input_items("key:k", "resp_kept", limit=2)) == ["msg_3", "msg_2"]
    finally:
        second.close()
    # The file is an ordinary SQLite database in WAL mode, its tables named so they keep out of the host's way.
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"llm_responses", "llm_response_items"}


async def test_closed_sqlite_store_opens_again_on_use(tmp_path: Path) -> None:
    store = SQLiteResponseStore(tmp_path / "responses.db")
    await store.put(record("r", created_at=1e10))
    store.close()
    try:
        assert await store.get("key:alice", "r") is not None
    finally:
        store.close()


def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    count = 30
    args = [sys.executable, str(ROOT / "tests" / "store_writer.py"), str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([*args, a, b, str(count)], cwd=ROOT, env=env, stderr=subprocess.PIPE)
               for a, b in (("one", "two"), ("two", "one"))]
    for writer in writers:
        _, stderr = writer.communicate(timeout=240)
        assert writer.returncode == 0, stderr.decode()[-2000:]

    async def read_back() -> None:
        store = SQLiteResponseStore(path)
        try:
            for name in ("one", "two"):
                for i in range(count):
                    got = await store.get(name, f"{name}-{i}")
                    assert got is not None and got.response == f"{i}".encode()
                    assert ids(await store.list_input_items(name, f"{name}-{i}")) == [f"{name}-{i}-item"]
        finally:
            store.close()

    asyncio.run(read_back())


async def test_sqlite_work_never_runs_on_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    statements: list[tuple[str, bool]] = []  # (thread name, whether that thread runs an event loop)
    connect = sqlite3.connect

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)

        def trace(sql: str) -> None:
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            statements.append((threading.current_thread().name, on_loop))

        connection.set_trace_callback(trace)
        return connection

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    path = tmp_path / "responses.db"
    store = SQLiteResponseStore(path, busy_timeout=60)
    try:
        await store.put(record("r", created_at=1e10), items(3))
        await store.get("key:alice", "r")
        await store.update("key:alice", "r", status="completed", response=b"{}")
        await store.list_input_items("key:alice", "r", after="msg_1")
        await store.expire()
        await store.delete("key:alice", "r")
        assert len(statements) > 10
        assert all(name.startswith("llm-store") and not on_loop for name, on_loop in statements), statements

        # A write waiting for another process's transaction leaves the loop free meanwhile.
        blocker = connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        put = asyncio.ensure_future(store.put(record("late", created_at=1e10)))
        ticks = 0
        while ticks < 20:
            await asyncio.sleep(0.01)
            ticks += 1
        assert not put.done()
        blocker.execute("COMMIT")
        await put
        blocker.close()
        assert await store.get("key:alice", "late") is not None
    finally:
        store.close()


async def test_a_write_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "responses.db"
    store = SQLiteResponseStore(path, busy_timeout=0.2)
    try:
        await store.put(record("first", created_at=1e10))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailableError) as refused:
                await store.put(record("second", created_at=1e10))
            assert refused.value.status == 503 and str(path) not in refused.value.message
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await store.get("key:alice", "first") is not None
        await store.put(record("second", created_at=1e10))
    finally:
        store.close()


# ---- the response_store option -------------------------------------------------------------------


def test_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("memory://", "memory:", "MEMORY://"):
        assert isinstance(store_from_url(url), MemoryResponseStore)
    memory = store_from_url("memory://?max_entries=5&max_bytes=4096&max_age=60")
    assert isinstance(memory, MemoryResponseStore)
    assert (memory.max_entries, memory.max_bytes, memory.max_age) == (5, 4096, 60.0)
    relative = store_from_url("sqlite:///responses.db")
    assert isinstance(relative, SQLiteResponseStore) and relative.path == tmp_path / "responses.db"
    (tmp_path / "sub dir").mkdir()
    absolute = store_from_url(f"sqlite:///{tmp_path}/sub%20dir/r.db?max_entries=10&max_age=3600&busy_timeout=1.5")
    assert isinstance(absolute, SQLiteResponseStore) and absolute.path == tmp_path / "sub dir" / "r.db"
    assert (absolute.max_entries, absolute.max_age, absolute.busy_timeout) == (10, 3600.0, 1.5)
    for url, message in [
        ("redis://localhost:6379/0", "not a store URL"),
        ("/var/lib/responses.db", "not a store URL"),
        ("sqlite://host/responses.db", "names a host"),
        ("sqlite://", "no file path"),
        ("sqlite:///", "no file path"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:////no/such/dir/r.db", "does not exist"),
        ("sqlite:///responses.db?max_entries=ten", "integer"),
        ("sqlite:///responses.db?max_age=", "seconds"),
        ("sqlite:///responses.db?max_bytes=5", "unknown option 'max_bytes'"),
        ("sqlite:///responses.db?max_age=1&max_age=2", "twice"),
        ("sqlite:///responses.db?max_entries=0", "> 0"),
        ("sqlite:///responses.db?oops", "malformed"),
        ("memory:///somewhere", "no path"),
        ("memory://?busy_timeout=1", "unknown option"),
        ("sqlite:///responses.db#x", "not a store URL"),
    ]:
        with pytest.raises(ValueError, match=message):
            store_from_url(url)


class AsyncStore:
    """A store of the host's own (all six methods async)."""

    def __init__(self) -> None:
        self.inner = MemoryResponseStore()
        self.closed = False

    async def put(self, record: StoredResponse, input_items: Any = ()) -> None:
        await self.inner.put(record, input_items)

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        return await self.inner.get(owner, response_id)

    async def update(self, owner: str, response_id: str, **changes: Any) -> bool:
        return await self.inner.update(owner, response_id, **changes)

    async def delete(self, owner: str, response_id: str) -> bool:
        return await self.inner.delete(owner, response_id)

    async def list_input_items(self, owner: str, response_id: str, **page: Any) -> ItemPage | None:
        return await self.inner.list_input_items(owner, response_id, **page)

    async def expire(self) -> int:
        return await self.inner.expire()

    def close(self) -> None:
        self.closed = True


class SyncStore(AsyncStore):
    def get(self, owner: str, response_id: str) -> StoredResponse | None:  # type: ignore[override]
        return None


def test_store_objects_are_checked() -> None:
    mine = AsyncStore()
    assert open_response_store(mine) == (mine, False)
    store, owned = open_response_store(None)
    assert isinstance(store, MemoryResponseStore) and owned
    with pytest.raises(TypeError, match="get must be async"):
        open_response_store(SyncStore())
    with pytest.raises(TypeError, match="lacks put, get, update, delete, list_input_items, expire"):
        open_response_store(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="instantiate"):
        open_response_store(MemoryResponseStore)  # type: ignore[arg-type]


async def shop(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that is never reached here."""


def test_middleware_opens_the_store_at_construction(tmp_path: Path) -> None:
    # A bad URL fails before anything else is built (the model is never looked at).
    with pytest.raises(ValueError, match="not a store URL"):
        LLMMiddleware(shop, model="no/such-model", response_store="redis://localhost")
    mw = LLMMiddleware(shop, model="no/such-model", response_store=f"sqlite:///{tmp_path}/r.db")
    assert isinstance(mw.endpoint.response_store, SQLiteResponseStore)
    assert mw.endpoint.response_store.path == tmp_path / "r.db"
    mw.close()
    mw = LLMMiddleware(shop, model="no/such-model")
    assert isinstance(mw.endpoint.response_store, MemoryResponseStore)
    mw.close()
    mine = AsyncStore()
    mw = LLMMiddleware(shop, model="no/such-model", response_store=mine)
    assert mw.endpoint.response_store is mine
    mw.close()
    assert not mine.closed  # a store passed in is its owner's to close


def test_cli_takes_a_store_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    url = f"sqlite:///{tmp_path}/r.db"
    assert parser.parse_args(["serve", "--demo", "--response-store", url]).response_store == url
    assert parser.parse_args(["serve", "--demo"]).response_store is None
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--demo", "--response-store", "sqlite:////no/such/dir/r.db"])
    assert "argument --response-store" in capsys.readouterr().err
