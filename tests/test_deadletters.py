"""Dead-letter stores: the memory, SQLite and Redis stores behave the same (DESIGN §7)."""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from router._sqlite_store import SQLiteDeadLetterStore
from router.deadletters import (
    REASONS,
    DeadLetterFilter,
    DeadLetterRecord,
    DeadLetterStore,
    InvalidFilter,
    MemoryDeadLetterStore,
    open_dead_letter_store,
    sqlite_path,
)
from router.ids import dead_letter_id_floor, dead_letter_id_time, new_dead_letter_id

from .conftest import need
from .redis_support import SHARED_URL, cleanup, redis_reachable

ROOT = Path(__file__).resolve().parents[1]
# A fixed moment in the past, far from "now", for records with chosen timestamps.
BASE = 1_700_000_000.0

StoreFactory = Callable[..., Awaitable[DeadLetterStore]]


def make_record(record_id: str | None = None, **fields: Any) -> DeadLetterRecord:
    record_id = record_id or new_dead_letter_id()
    values: dict[str, Any] = {
        "id": record_id,
        "reason": "thread_not_found",
        "detail": "no thread with that id",
        "event": {"type": "text", "content": "hello"},
        "event_raw": False,
        "event_id": "evt-1",
        "event_type": "text",
        "run_id": None,
        "thread_id": None,
        "user_id": "alice",
        "created_at": dead_letter_id_time(record_id),
    }
    values.update(fields)
    return DeadLetterRecord(**values)


def at(seconds_after_base: float, **fields: Any) -> DeadLetterRecord:
    """A record created ``seconds_after_base`` after BASE (its id says so too)."""
    return make_record(dead_letter_id_floor(BASE + seconds_after_base), **fields)


async def add_all(store: DeadLetterStore, records: list[DeadLetterRecord]) -> None:
    for record in records:
        await store.add(record)


async def all_ids(store: DeadLetterStore, where: DeadLetterFilter | None = None) -> list[str]:
    page = await store.list(where or DeadLetterFilter(), limit=1000)
    assert page.next_cursor is None
    return [record.id for record in page.items]


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores of the parametrised kind (one file, or one Redis key prefix, per
    test) and closes them after."""
    opened: list[DeadLetterStore] = []
    redis_prefix = f"test:{new_dead_letter_id()[-12:]}:"
    if request.param == "redis":
        need(redis_reachable(), "no Redis server on 127.0.0.1:6379")

    async def make(**options: Any) -> DeadLetterStore:
        store: DeadLetterStore
        if request.param == "memory":
            store = MemoryDeadLetterStore(**options)
        elif request.param == "sqlite":
            store = SQLiteDeadLetterStore(f"sqlite:///{tmp_path / 'dead.db'}", **options)
        else:
            store = open_dead_letter_store(SHARED_URL, prefix=redis_prefix, **options)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()
    if request.param == "redis":
        cleanup(SHARED_URL, redis_prefix)


@pytest.fixture
async def store(make_store: StoreFactory) -> DeadLetterStore:
    return await make_store()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteDeadLetterStore]:
    store = SQLiteDeadLetterStore(f"sqlite:///{tmp_path / 'dead.db'}")
    await store.open()
    yield store
    await store.close()


# --------------------------------------------------------------------------- records


async def test_store_satisfies_protocol(store: DeadLetterStore) -> None:
    assert isinstance(store, DeadLetterStore)
    assert store.retention_removed == 0


async def test_add_then_get_returns_an_equal_record(store: DeadLetterStore) -> None:
    record = make_record(
        run_id="run_x",
        thread_id="thread_x",
        history=[{"reason": "not_owner", "detail": "d", "at": "2024-01-01T00:00:00.000Z"}],
        attempts=2,
        event={"nested": [1, 2.5, None, True, "ü", {"k": "v"}]},
    )
    await store.add(record)
    assert await store.get(record.id) == record
    assert await store.get(new_dead_letter_id()) is None


async def test_raw_event_round_trips_as_text(store: DeadLetterStore) -> None:
    raw = '{"type": "text", broken \x00 ünïcode \\u and "quotes"'
    record = make_record(
        reason="malformed_event",
        event=raw,
        event_raw=True,
        event_id=None,
        event_type=None,
        user_id=None,
    )
    await store.add(record)
    got = await store.get(record.id)
    assert got == record
    assert got is not None and got.event_raw is True and got.event == raw


async def test_text_that_is_not_utf8_is_stored_without_failing(store: DeadLetterStore) -> None:
    # JSON may decode to lone surrogates ("\ud800"), which UTF-8 cannot encode.
    record = make_record(event={"content": "\ud800"}, event_type="\udc80", detail="bad \ud800")
    await store.add(record)
    got = await store.get(record.id)
    assert got is not None
    assert got.event == {"content": "\ud800"}


async def test_store_keeps_a_copy_not_the_callers_record(store: DeadLetterStore) -> None:
    record = make_record()
    await store.add(record)
    record.rejected_again("not_owner", "changed after add")
    got = await store.get(record.id)
    assert got is not None and got.attempts == 1 and got.history == []


async def test_update_records_another_rejection(store: DeadLetterStore) -> None:
    record = make_record()
    await store.add(record)
    record.rejected_again("not_owner", "the thread belongs to bob")
    await store.update(record)
    got = await store.get(record.id)
    assert got is not None
    assert got.reason == "not_owner"
    assert got.detail == "the thread belongs to bob"
    assert got.attempts == 2
    assert [entry["reason"] for entry in got.history] == ["thread_not_found"]
    assert got == record


async def test_update_of_a_missing_record_adds_nothing(store: DeadLetterStore) -> None:
    await store.update(make_record())
    assert await all_ids(store) == []


async def test_delete_removes_one_record(store: DeadLetterStore) -> None:
    keep, drop = make_record(), make_record()
    await add_all(store, [keep, drop])
    assert await store.delete(drop.id) is True
    assert await store.delete(drop.id) is False
    assert await store.get(drop.id) is None
    assert await all_ids(store) == [keep.id]


# --------------------------------------------------------------------------- list


async def test_list_is_newest_first(store: DeadLetterStore) -> None:
    records = [make_record() for _ in range(20)]
    await add_all(store, records[::2] + records[1::2])  # insertion order does not matter
    assert await all_ids(store) == [record.id for record in reversed(records)]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (DeadLetterFilter(), [5, 4, 3, 2, 1, 0]),
        (DeadLetterFilter(reason="not_owner"), [4, 1]),
        (DeadLetterFilter(user_id="bob"), [5, 3]),
        (DeadLetterFilter(thread_id="thread_b"), [5, 2]),
        (DeadLetterFilter(run_id="run_a1"), [3, 0]),
        (DeadLetterFilter(since=BASE + 2), [5, 4, 3, 2]),
        (DeadLetterFilter(before=BASE + 2), [1, 0]),
        (DeadLetterFilter(since=BASE + 1, before=BASE + 4), [3, 2, 1]),
        (DeadLetterFilter(since=BASE + 1.5), [5, 4, 3, 2]),
        (DeadLetterFilter(reason="not_owner", user_id="carol"), [4]),
        (DeadLetterFilter(user_id="nobody"), []),
    ],
)
async def test_list_filters(
    store: DeadLetterStore, where: DeadLetterFilter, expected: list[int]
) -> None:
    records = [
        at(0, user_id="alice", thread_id="thread_a", run_id="run_a1"),
        at(1, user_id="alice", thread_id="thread_a", reason="not_owner"),
        at(2, user_id="carol", thread_id="thread_b", run_id="run_b1"),
        at(3, user_id="bob", thread_id="thread_a", run_id="run_a1"),
        at(4, user_id="carol", reason="not_owner"),
        at(5, user_id="bob", thread_id="thread_b"),
    ]
    await add_all(store, records)
    assert await all_ids(store, where) == [records[index].id for index in expected]


async def test_cursor_pages_stay_correct_while_records_are_added(store: DeadLetterStore) -> None:
    older = [make_record() for _ in range(25)]
    await add_all(store, older)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.list(limit=10, cursor=cursor)
        seen.extend(record.id for record in page.items)
        pages += 1
        # Newer records arriving between pages must not shift or repeat later pages.
        await add_all(store, [make_record() for _ in range(7)])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert seen == [record.id for record in reversed(older)]


async def test_page_of_exactly_limit_records_has_no_next_cursor(store: DeadLetterStore) -> None:
    records = [make_record() for _ in range(6)]
    await add_all(store, records)
    first = await store.list(limit=3)
    assert [record.id for record in first.items] == [record.id for record in records[:2:-1]]
    assert first.next_cursor is not None
    second = await store.list(limit=3, cursor=first.next_cursor)
    assert [record.id for record in second.items] == [record.id for record in records[2::-1]]
    assert second.next_cursor is None


async def test_paging_applies_the_filter(store: DeadLetterStore) -> None:
    records = [make_record(user_id="alice" if i % 3 else "bob") for i in range(30)]
    await add_all(store, records)
    where = DeadLetterFilter(user_id="bob")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await store.list(where, limit=3, cursor=cursor)
        assert len(page.items) <= 3
        seen.extend(record.id for record in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [record.id for record in reversed(records) if record.user_id == "bob"]


@pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.5, "10"])
async def test_list_rejects_a_bad_limit(store: DeadLetterStore, limit: Any) -> None:
    with pytest.raises(InvalidFilter, match="limit"):
        await store.list(limit=limit)


async def test_list_accepts_limits_1_and_1000(store: DeadLetterStore) -> None:
    await add_all(store, [make_record(), make_record()])
    assert len((await store.list(limit=1)).items) == 1
    assert len((await store.list(limit=1000)).items) == 2


@pytest.mark.parametrize("cursor", ["", "nope", "A" * 32, "0" * 31, "0" * 33, 12])
async def test_list_rejects_a_bad_cursor(store: DeadLetterStore, cursor: Any) -> None:
    with pytest.raises(InvalidFilter, match="cursor"):
        await store.list(cursor=cursor)


def test_filter_rejects_an_unknown_reason() -> None:
    with pytest.raises(InvalidFilter, match="unknown reason 'nope'"):
        DeadLetterFilter(reason="nope")
    for reason in REASONS:
        DeadLetterFilter(reason=reason)


@pytest.mark.parametrize(
    "fields",
    [
        {"user_id": ""},
        {"thread_id": "x" * 513},
        {"run_id": 5},
        {"since": math.nan},
        {"before": math.inf},
        {"since": "yesterday"},
        {"before": True},
    ],
)
def test_filter_rejects_unusable_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidFilter):
        DeadLetterFilter(**fields)


# --------------------------------------------------------------------------- purge, counts


async def test_purge_removes_what_matches_and_returns_the_count(store: DeadLetterStore) -> None:
    records = [
        at(0, reason="not_owner"),
        at(1, reason="not_owner"),
        at(2, reason="no_recipient"),
        at(3, reason="not_owner"),
    ]
    await add_all(store, records)
    assert await store.purge(DeadLetterFilter(reason="not_owner", before=BASE + 2)) == 2
    assert await all_ids(store) == [records[3].id, records[2].id]
    assert await store.purge(DeadLetterFilter(reason="invalid_id")) == 0
    assert await store.purge() == 2
    assert await all_ids(store) == []


async def test_counts_by_reason(store: DeadLetterStore) -> None:
    assert await store.counts() == {}
    reasons = ["not_owner", "not_owner", "malformed_event", "not_owner", "no_recipient"]
    records = [make_record(reason=reason) for reason in reasons]
    await add_all(store, records)
    assert await store.counts() == {"not_owner": 3, "malformed_event": 1, "no_recipient": 1}
    await store.delete(records[2].id)
    assert await store.counts() == {"not_owner": 3, "no_recipient": 1}


# --------------------------------------------------------------------------- retention


async def test_max_records_drops_the_oldest(make_store: StoreFactory) -> None:
    store = await make_store(max_records=5)
    records = [make_record() for _ in range(8)]
    await add_all(store, records)
    assert await all_ids(store) == [record.id for record in reversed(records[3:])]
    assert store.retention_removed == 3
    # An older record than all kept ones is itself the one dropped.
    await store.add(at(0))
    assert await all_ids(store) == [record.id for record in reversed(records[3:])]
    assert store.retention_removed == 4


async def test_max_records_counts_deletes_and_purges(make_store: StoreFactory) -> None:
    store = await make_store(max_records=3)
    records = [make_record() for _ in range(3)]
    await add_all(store, records)
    await store.delete(records[0].id)
    await store.add(make_record())
    assert store.retention_removed == 0
    await store.purge()
    await add_all(store, [make_record() for _ in range(3)])
    assert store.retention_removed == 0
    assert len(await all_ids(store)) == 3


async def test_replacing_a_record_does_not_count_twice(make_store: StoreFactory) -> None:
    store = await make_store(max_records=2)
    first, second = make_record(), make_record()
    await add_all(store, [first, second, first, first])
    assert store.retention_removed == 0
    assert await all_ids(store) == [second.id, first.id]


async def test_max_age_drops_records_older_than_it(make_store: StoreFactory) -> None:
    store = await make_store(max_age=3600)
    now = time.time()
    fresh = make_record()
    await store.add(fresh)
    await store.add(make_record(dead_letter_id_floor(now - 7200)))
    assert store.retention_removed == 1
    assert await all_ids(store) == [fresh.id]


async def test_max_age_drops_old_records_on_the_next_add(make_store: StoreFactory) -> None:
    store: Any = await make_store(max_age=None)
    old = [at(0), at(1)]
    await add_all(store, old)
    store.max_age = 3600.0
    fresh = make_record()
    await store.add(fresh)
    assert await all_ids(store) == [fresh.id]
    assert store.retention_removed == 2


async def test_concurrent_adds_with_retention_lose_no_counts(make_store: StoreFactory) -> None:
    store = await make_store(max_records=10)
    records = [make_record() for _ in range(50)]
    async with anyio.create_task_group() as group:
        for record in records:
            group.start_soon(store.add, record)
    assert len(await all_ids(store)) == 10
    assert store.retention_removed == 40


# --------------------------------------------------------------------------- SQLite


async def test_sqlite_records_survive_close_and_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dead.db'}"
    first = SQLiteDeadLetterStore(url)
    await first.open()
    record = make_record(event="not json", event_raw=True)
    record.rejected_again("not_owner", "again")
    await first.add(record)
    await first.close()
    await first.close()  # idempotent

    second = SQLiteDeadLetterStore(url)
    await second.open()
    try:
        assert await second.get(record.id) == record
        assert await second.counts() == {"not_owner": 1}
    finally:
        await second.close()


async def test_sqlite_store_can_be_reopened(tmp_path: Path) -> None:
    store = SQLiteDeadLetterStore(f"sqlite:///{tmp_path / 'dead.db'}")
    record = make_record()
    await store.open()
    await store.open()  # idempotent
    await store.add(record)
    await store.close()
    await store.open()
    try:
        assert await store.get(record.id) == record
    finally:
        await store.close()


async def test_sqlite_store_uses_wal_and_indexes(sqlite_store: SQLiteDeadLetterStore) -> None:
    await sqlite_store.add(make_record())
    with contextlib.closing(sqlite3.connect(sqlite_store.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        indexed = {
            row[0]
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'dead_letters'"
            )
            for row in conn.execute(f"SELECT name FROM pragma_index_info('{name}') WHERE seqno = 0")
        }
    assert {"reason", "user_id", "thread_id", "run_id"} <= indexed


async def test_sqlite_store_creates_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "dead.db"
    store = SQLiteDeadLetterStore(f"sqlite:///{path}")
    await store.open()
    await store.close()
    assert path.is_file()


async def test_sqlite_store_raises_before_open(tmp_path: Path) -> None:
    store = SQLiteDeadLetterStore(f"sqlite:///{tmp_path / 'dead.db'}")
    with pytest.raises(RuntimeError, match="not open"):
        await store.add(make_record())
    with pytest.raises(RuntimeError, match="not open"):
        await store.list()
    await store.open()
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await store.get(new_dead_letter_id())


async def test_sqlite_calls_do_not_block_the_event_loop(
    sqlite_store: SQLiteDeadLetterStore,
) -> None:
    # While a write holds the file lock, other tasks on the loop keep running.
    ticked = anyio.Event()
    with contextlib.closing(sqlite3.connect(sqlite_store.path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        record = make_record()
        async with anyio.create_task_group() as group:

            async def tick() -> None:
                ticked.set()

            group.start_soon(sqlite_store.add, record)
            group.start_soon(tick)
            with anyio.fail_after(5):
                await ticked.wait()
            other.execute("COMMIT")  # let the blocked add through
    assert await sqlite_store.get(record.id) == record


_WRITER = """
import asyncio, sys
from router._sqlite_store import SQLiteDeadLetterStore
from router.deadletters import DeadLetterRecord
from router.ids import new_dead_letter_id

async def main(url: str, label: str) -> None:
    store = SQLiteDeadLetterStore(url)
    await store.open()
    print("ready", flush=True)
    sys.stdin.readline()  # wait for "go" so both processes write at once
    async def add(i: int) -> None:
        record_id = new_dead_letter_id()
        await store.add(DeadLetterRecord(
            id=record_id, reason="no_recipient", detail=f"{label}-{i}", event={"i": i},
            event_raw=False, event_id=None, event_type=None, run_id=None, thread_id=None,
            user_id=label, created_at=0.0,
        ))
    await asyncio.gather(*(add(i) for i in range(300)))
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.timeout(180)
async def test_two_processes_writing_to_one_sqlite_file_at_once_lose_nothing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'shared' / 'dead.db'}"
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path}
    labels = ["one", "two"]
    async with contextlib.AsyncExitStack() as stack:
        processes = []
        for label in labels:
            process = await anyio.open_process(
                [sys.executable, "-c", _WRITER, url, label],
                cwd=ROOT,
                env=env,
                stderr=stack.enter_context(open(tmp_path / f"{label}.err", "wb")),  # noqa: ASYNC230
            )
            await stack.enter_async_context(process)
            processes.append(process)
        for label, process in zip(labels, processes, strict=True):
            assert process.stdout is not None
            with anyio.fail_after(60):
                try:
                    line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 9)
                except anyio.IncompleteRead:  # it died opening the store
                    await process.wait()
                    pytest.fail((tmp_path / f"{label}.err").read_text())
            assert line == b"ready"
        for process in processes:
            assert process.stdin is not None
            await process.stdin.send(b"go\n")
        for label, process in zip(labels, processes, strict=True):
            with anyio.fail_after(150):
                code = await process.wait()
            assert code == 0, (tmp_path / f"{label}.err").read_text()

    store = SQLiteDeadLetterStore(url)
    await store.open()
    try:
        page = await store.list(limit=1000)
        assert page.next_cursor is None
        assert sorted(record.detail for record in page.items) == sorted(
            f"{label}-{i}" for label in labels for i in range(300)
        )
        assert await store.counts() == {"no_recipient": 600}
    finally:
        await store.close()


# --------------------------------------------------------------------------- URLs


async def test_open_dead_letter_store_memory() -> None:
    store = open_dead_letter_store("memory://", max_records=7)
    assert isinstance(store, MemoryDeadLetterStore)
    assert store.url == "memory://"
    assert store.max_records == 7


async def test_open_dead_letter_store_sqlite_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_dead_letter_store("sqlite:///data/dead.db")
    assert isinstance(store, SQLiteDeadLetterStore)
    assert store.url == "sqlite:///data/dead.db"
    assert sqlite_path(store.url) == "data/dead.db"
    await store.open()
    await store.close()
    assert (tmp_path / "data" / "dead.db").is_file()


async def test_open_dead_letter_store_sqlite_absolute(tmp_path: Path) -> None:
    path = tmp_path / "dead.db"
    url = f"sqlite:///{path}"
    assert url.startswith("sqlite:////")
    store = open_dead_letter_store(url, max_records=None, max_age=60.0)
    assert isinstance(store, SQLiteDeadLetterStore)
    assert (store.max_records, store.max_age) == (None, 60.0)
    assert sqlite_path(url) == str(path)
    await store.open()
    await store.close()
    assert path.is_file()


@pytest.mark.parametrize("url", ["postgres://db/x", "dead.db", "", "memory:/", "SQLITE:///x.db"])
def test_open_dead_letter_store_rejects_an_unknown_scheme(url: str) -> None:
    with pytest.raises(ValueError, match="unknown dead-letter store URL"):
        open_dead_letter_store(url)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://host/x.db"])
def test_sqlite_store_rejects_a_bad_url(url: str) -> None:
    with pytest.raises(ValueError, match="bad SQLite URL"):
        SQLiteDeadLetterStore(url)
