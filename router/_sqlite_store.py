"""Dead letters in a SQLite file (``sqlite:///path``).

One ``sqlite3`` connection per store, used from anyio worker threads one call at a
time (a :class:`threading.Lock` plus a capacity limiter of one), so the event loop
never waits on the disk. The file is in WAL mode with a busy timeout, so several
processes can share it: readers do not block the writer, and writers queue on the
file lock instead of failing. ``synchronous=FULL`` makes every commit reach the disk
before :meth:`SQLiteDeadLetterStore.add` returns.

Retention runs in the same transaction as each ``add`` and costs index seeks only:
the row count is kept in a one-row table by triggers, so "over max_records?" never
scans the table, and "older than max_age" is a range over the primary key (ids sort
by time).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .deadletters import (
    DeadLetterFilter,
    DeadLetterPage,
    DeadLetterRecord,
    _page,
    check_page,
    sqlite_path,
)
from .ids import dead_letter_id_floor

__all__ = ["SQLiteDeadLetterStore"]

_T = TypeVar("_T")

#: Milliseconds a statement waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    event TEXT NOT NULL,
    event_raw INTEGER NOT NULL,
    event_id TEXT,
    event_type TEXT,
    run_id TEXT,
    thread_id TEXT,
    user_id TEXT,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    history TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters (reason, id);
CREATE INDEX IF NOT EXISTS dead_letters_user ON dead_letters (user_id, id);
CREATE INDEX IF NOT EXISTS dead_letters_thread ON dead_letters (thread_id, id);
CREATE INDEX IF NOT EXISTS dead_letters_run ON dead_letters (run_id, id);
CREATE INDEX IF NOT EXISTS dead_letters_event ON dead_letters (event_id, id);
CREATE TABLE IF NOT EXISTS dead_letters_size (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    n INTEGER NOT NULL
);
INSERT OR IGNORE INTO dead_letters_size (one, n) SELECT 1, COUNT(*) FROM dead_letters;
CREATE TRIGGER IF NOT EXISTS dead_letters_added AFTER INSERT ON dead_letters
BEGIN
    UPDATE dead_letters_size SET n = n + 1 WHERE one = 1;
END;
CREATE TRIGGER IF NOT EXISTS dead_letters_removed AFTER DELETE ON dead_letters
BEGIN
    UPDATE dead_letters_size SET n = n - 1 WHERE one = 1;
END;
"""

_EVERYTHING = DeadLetterFilter()

_COLUMNS = (
    "id, reason, detail, event, event_raw, event_id, event_type, "
    "run_id, thread_id, user_id, created_at, attempts, history"
)
_PLACEHOLDERS = ", ".join("?" * len(_COLUMNS.split(", ")))
_UPDATES = ", ".join(f"{name} = excluded.{name}" for name in _COLUMNS.split(", ")[1:])
_INSERT = (
    f"INSERT INTO dead_letters ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
    f"ON CONFLICT (id) DO UPDATE SET {_UPDATES}"
)
_UPDATE = (
    "UPDATE dead_letters SET "
    + ", ".join(f"{name} = ?" for name in _COLUMNS.split(", ")[1:])
    + " WHERE id = ?"
)


def _text(value: str | None) -> str | None:
    """``value`` as SQLite can store it.

    A string parsed from JSON may hold lone surrogates (``"\\ud800"``), which are not
    UTF-8; they are kept as backslash escapes rather than failing the write.
    """
    if value is None or value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _row(record: DeadLetterRecord) -> tuple[Any, ...]:
    # json.dumps escapes non-ASCII (ensure_ascii), so any event, raw text included,
    # round-trips exactly, lone surrogates too.
    return (
        _text(record.id),
        record.reason,
        _text(record.detail),
        json.dumps(record.event),
        int(record.event_raw),
        _text(record.event_id),
        _text(record.event_type),
        _text(record.run_id),
        _text(record.thread_id),
        _text(record.user_id),
        record.created_at,
        record.attempts,
        json.dumps(record.history),
    )


def _record(row: Sequence[Any]) -> DeadLetterRecord:
    return DeadLetterRecord(
        id=row[0],
        reason=row[1],
        detail=row[2],
        event=json.loads(row[3]),
        event_raw=bool(row[4]),
        event_id=row[5],
        event_type=row[6],
        run_id=row[7],
        thread_id=row[8],
        user_id=row[9],
        created_at=row[10],
        attempts=row[11],
        history=json.loads(row[12]),
    )


def _where(where: DeadLetterFilter, cursor: str | None = None) -> tuple[str, list[Any]]:
    """A SQL condition (never empty) and its parameters for a filter and a cursor."""
    clauses: list[str] = []
    params: list[Any] = []
    for column in ("reason", "user_id", "thread_id", "run_id", "event_id"):
        value = getattr(where, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(_text(value))
    if where.since is not None:
        clauses.append("id >= ?")
        params.append(dead_letter_id_floor(where.since))
    if where.before is not None:
        clauses.append("id < ?")
        params.append(dead_letter_id_floor(where.before))
    if cursor is not None:
        clauses.append("id < ?")
        params.append(cursor)
    return (" AND ".join(clauses) or "1"), params


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL mode (a no-op once it is).

    The switch needs the file to itself, and SQLite reports "database is locked"
    at once instead of waiting when another process is opening or switching it at
    the same moment, so this retries until the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(delay)  # a worker thread, never the event loop
        delay = min(delay * 2, 0.05)


class SQLiteDeadLetterStore:
    """Dead letters in a SQLite file, shared safely by several processes.

    ``url`` is ``sqlite:///relative.db`` or ``sqlite:////absolute.db``; the parent
    directory is created on :meth:`open`. ``max_records`` and ``max_age`` (seconds)
    bound the store: each ``add`` drops the oldest records beyond them and counts
    them in :attr:`retention_removed`.

    Every method but :meth:`open` raises ``RuntimeError`` while the store is not
    open, and ``sqlite3.Error`` when the file is unusable (for instance locked by
    another process for longer than the busy timeout). Methods may be called
    concurrently; they run one at a time. Cancelling one is safe: the statement in
    the worker thread completes (or rolls back) before the cancellation is delivered,
    so the file never holds half a write.
    """

    def __init__(
        self, url: str, *, max_records: int | None = 100_000, max_age: float | None = None
    ) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.max_records = max_records
        self.max_age = max_age
        self.retention_removed = 0
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None

    def __repr__(self) -> str:
        return f"SQLiteDeadLetterStore({self.url!r})"

    # ------------------------------------------------------------------ plumbing

    async def _run(self, func: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._conn is None or self._limiter is None:
            raise RuntimeError(f"{self!r} is not open: await store.open() first")
        return await anyio.to_thread.run_sync(self._locked, func, limiter=self._limiter)

    def _locked(self, func: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            conn = self._conn
            if conn is None:  # closed while this call waited
                raise RuntimeError(f"{self!r} is not open: await store.open() first")
            return func(conn)

    @staticmethod
    def _write(conn: sqlite3.Connection, func: Callable[[], _T]) -> _T:
        # BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy
        # timeout), so a read-then-write transaction can never be refused half-way.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = func()
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return result

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
            # executescript() commits any open transaction first, so the script
            # carries its own; IMMEDIATE makes concurrent first opens take turns.
            conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            conn.close()
            raise
        return conn

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open the file, creating it, its directory and the schema if missing.

        Idempotent. Raises ``OSError`` or ``sqlite3.Error`` when the file cannot be
        opened or the schema cannot be written.
        """
        if self._conn is not None:
            return
        conn = await anyio.to_thread.run_sync(self._connect)
        with self._lock:
            won = self._conn is None
            if won:
                self._conn = conn
                self._limiter = anyio.CapacityLimiter(1)
        if not won:  # a concurrent open() got there first
            conn.close()

    async def close(self) -> None:
        """Close the file once calls in flight are done. Idempotent."""

        def close() -> None:
            with self._lock:
                conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        await anyio.to_thread.run_sync(close)

    # ------------------------------------------------------------------ records

    async def add(self, record: DeadLetterRecord) -> None:
        """Store ``record`` (replacing one with the same id) and apply retention.

        Returns once the record is on disk.
        """
        row = _row(record)

        def add(conn: sqlite3.Connection) -> int:
            def transaction() -> int:
                conn.execute(_INSERT, row)
                return self._retain(conn)

            return self._write(conn, transaction)

        removed = await self._run(add)
        # Not "+= await ...": that would read the counter before awaiting and lose
        # the counts of concurrent adds.
        self.retention_removed += removed

    def _retain(self, conn: sqlite3.Connection) -> int:
        removed = 0
        if self.max_age is not None:
            floor = dead_letter_id_floor(time.time() - self.max_age)
            removed += conn.execute("DELETE FROM dead_letters WHERE id < ?", (floor,)).rowcount
        if self.max_records is not None:
            (size,) = conn.execute("SELECT n FROM dead_letters_size WHERE one = 1").fetchone()
            if size > self.max_records:
                removed += conn.execute(
                    "DELETE FROM dead_letters WHERE id IN "
                    "(SELECT id FROM dead_letters ORDER BY id LIMIT ?)",
                    (size - self.max_records,),
                ).rowcount
        return removed

    async def get(self, record_id: str) -> DeadLetterRecord | None:
        def get(conn: sqlite3.Connection) -> DeadLetterRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?", (_text(record_id),)
            ).fetchone()
            return None if row is None else _record(row)

        return await self._run(get)

    async def update(self, record: DeadLetterRecord) -> None:
        """Overwrite the stored record with the same id; nothing when there is none."""
        row = _row(record)
        params = (*row[1:], row[0])

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(_UPDATE, params)

        await self._run(update)

    async def delete(self, record_id: str) -> bool:
        """Remove one record; false when there was none."""

        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM dead_letters WHERE id = ?", (_text(record_id),))
            return cursor.rowcount > 0

        return await self._run(delete)

    async def list(
        self,
        where: DeadLetterFilter = _EVERYTHING,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> DeadLetterPage:
        """Matching records, newest first; pass ``next_cursor`` back for the next page.

        Raises :class:`~router.deadletters.InvalidFilter` for a limit outside 1..1000
        or a cursor that is not a dead-letter id.
        """
        check_page(limit, cursor)
        condition, params = _where(where, cursor)
        sql = f"SELECT {_COLUMNS} FROM dead_letters WHERE {condition} ORDER BY id DESC LIMIT ?"

        def select(conn: sqlite3.Connection) -> list[DeadLetterRecord]:
            return [_record(row) for row in conn.execute(sql, (*params, limit + 1))]

        return _page(await self._run(select), limit)

    async def purge(self, where: DeadLetterFilter = _EVERYTHING) -> int:
        """Remove every matching record; return how many."""
        condition, params = _where(where)

        def purge(conn: sqlite3.Connection) -> int:
            return conn.execute(f"DELETE FROM dead_letters WHERE {condition}", params).rowcount

        return await self._run(purge)

    async def counts(self) -> dict[str, int]:
        """How many records there are of each reason (reasons with none are absent)."""

        def counts(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason")
            return {reason: count for reason, count in rows}

        return await self._run(counts)
