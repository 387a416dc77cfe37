"""Dead letters: every rejected or undeliverable event, kept with a reason.

A :class:`DeadLetterStore` is a small protocol of async methods. Implementations
shipped here: :class:`MemoryDeadLetterStore` (``memory://``) and
:class:`SQLiteDeadLetterStore` (``sqlite:///path``, in :mod:`router._sqlite_store`);
the Redis one lives with the Redis backend. :func:`open_dead_letter_store` picks one
by URL scheme.

Records are ordered by id, which sorts by creation time, so "newest first" and
cursor paging are range scans over ids: a page's cursor is the last id it
returned, and records added meanwhile (always newer) never shift later pages.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from .errors import RouterError
from .ids import dead_letter_id_floor, is_dead_letter_id

__all__ = [
    "REASONS",
    "DeadLetterFilter",
    "DeadLetterPage",
    "DeadLetterRecord",
    "DeadLetterStore",
    "InvalidFilter",
    "MemoryDeadLetterStore",
    "count_all",
    "list_all",
    "open_dead_letter_store",
    "parse_duration",
    "parse_since",
]

#: Every reason code a record can carry.
REASONS = (
    "malformed_event",
    "invalid_id",
    "thread_mismatch",
    "thread_not_found",
    "not_owner",
    "lifecycle_violation",
    "no_recipient",
    "backend_unavailable",
)

#: Text kept of an event that was not JSON.
RAW_EVENT_LIMIT = 65536


class InvalidFilter(RouterError, ValueError):
    """A dead-letter query is unusable (unknown reason, bad cursor, bad limit...)."""


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclasses.dataclass(slots=True)
class DeadLetterRecord:
    """One dead letter. ``event`` is the original as received; when it was not
    JSON it is the text (capped at 64 KiB) and ``event_raw`` is true."""

    id: str
    reason: str
    detail: str
    event: Any
    event_raw: bool
    event_id: str | None
    event_type: str | None
    run_id: str | None
    thread_id: str | None
    user_id: str | None
    created_at: float
    attempts: int = 1
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the admin API and the CLI."""
        return {
            "id": self.id,
            "reason": self.reason,
            "detail": self.detail,
            "event": self.event,
            "event_raw": self.event_raw,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "user_id": self.user_id,
            "created_at": _iso(self.created_at),
            "attempts": self.attempts,
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeadLetterRecord:
        created = data["created_at"]
        if isinstance(created, str):
            created = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
        return cls(
            id=data["id"],
            reason=data["reason"],
            detail=data["detail"],
            event=data["event"],
            event_raw=bool(data.get("event_raw", False)),
            event_id=data.get("event_id"),
            event_type=data.get("event_type"),
            run_id=data.get("run_id"),
            thread_id=data.get("thread_id"),
            user_id=data.get("user_id"),
            created_at=float(created),
            attempts=int(data.get("attempts", 1)),
            history=list(data.get("history") or []),
        )

    def rejected_again(self, reason: str, detail: str) -> None:
        """Record another failed attempt: the new reason first, the old one to history."""
        earlier = {"reason": self.reason, "detail": self.detail, "at": _iso(time.time())}
        self.history.insert(0, earlier)
        self.reason = reason
        self.detail = detail
        self.attempts += 1


@dataclasses.dataclass(slots=True, frozen=True)
class DeadLetterFilter:
    """Which records a list, purge or bulk replay is about. All fields optional.

    ``since``: created at or after (unix seconds); ``before``: created strictly
    before (unix seconds); ``event_id``: records of that event (the lookup of
    ``GET /_router/events/{event_id}``).
    """

    reason: str | None = None
    user_id: str | None = None
    thread_id: str | None = None
    run_id: str | None = None
    since: float | None = None
    before: float | None = None
    event_id: str | None = None

    def __post_init__(self) -> None:
        if self.reason is not None and self.reason not in REASONS:
            raise InvalidFilter(
                f"unknown reason {self.reason!r}; expected one of {', '.join(REASONS)}"
            )
        for name in ("user_id", "thread_id", "run_id", "event_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 512):
                raise InvalidFilter(f"{name} must be a non-empty string")
        for name in ("since", "before"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise InvalidFilter(f"{name} must be a unix time in seconds, got {value!r}")

    def matches(self, record: DeadLetterRecord) -> bool:
        return (
            (self.reason is None or record.reason == self.reason)
            and (self.user_id is None or record.user_id == self.user_id)
            and (self.thread_id is None or record.thread_id == self.thread_id)
            and (self.run_id is None or record.run_id == self.run_id)
            and (self.event_id is None or record.event_id == self.event_id)
            and (self.since is None or record.id >= dead_letter_id_floor(self.since))
            and (self.before is None or record.id < dead_letter_id_floor(self.before))
        )


@dataclasses.dataclass(slots=True, frozen=True)
class DeadLetterPage:
    items: Sequence[DeadLetterRecord]
    next_cursor: str | None


MAX_PAGE = 1000
_EVERYTHING = DeadLetterFilter()


def check_page(limit: int, cursor: str | None) -> None:
    """Raise :class:`InvalidFilter` for a limit outside 1..1000 or a cursor that is not an id."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidFilter(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}")
    if cursor is not None and not is_dead_letter_id(cursor):
        raise InvalidFilter(
            f"bad cursor {str(cursor)[:40]!r}: pass the next_cursor of a previous page"
        )


@runtime_checkable
class DeadLetterStore(Protocol):
    """Where dead letters live. Every method is safe to call concurrently.

    ``add`` returns only once the record is durable for the store's kind (on
    disk for SQLite, acknowledged for Redis).
    """

    url: str
    #: records dropped by retention (max_records / max_age) since start
    retention_removed: int

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def add(self, record: DeadLetterRecord) -> None: ...
    async def get(self, record_id: str) -> DeadLetterRecord | None: ...
    async def update(self, record: DeadLetterRecord) -> None: ...
    async def delete(self, record_id: str) -> bool: ...
    async def list(
        self, where: DeadLetterFilter = ..., *, limit: int = 100, cursor: str | None = None
    ) -> DeadLetterPage: ...
    async def purge(self, where: DeadLetterFilter = ...) -> int: ...
    async def counts(self) -> dict[str, int]: ...


class MemoryDeadLetterStore:
    """Dead letters in this process's memory (``memory://``): for tests and demos."""

    def __init__(self, *, max_records: int | None = 100_000, max_age: float | None = None) -> None:
        self.url = "memory://"
        self.max_records = max_records
        self.max_age = max_age
        self.retention_removed = 0
        self._records: dict[str, DeadLetterRecord] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _retain(self) -> None:
        if self.max_age is not None:
            floor = dead_letter_id_floor(time.time() - self.max_age)
            for record_id in [key for key in self._records if key < floor]:
                del self._records[record_id]
                self.retention_removed += 1
        if self.max_records is not None and len(self._records) > self.max_records:
            excess = len(self._records) - self.max_records
            for record_id in sorted(self._records)[:excess]:
                del self._records[record_id]
                self.retention_removed += 1

    async def add(self, record: DeadLetterRecord) -> None:
        self._records[record.id] = _copy(record)
        self._retain()

    async def get(self, record_id: str) -> DeadLetterRecord | None:
        record = self._records.get(record_id)
        return None if record is None else _copy(record)

    async def update(self, record: DeadLetterRecord) -> None:
        if record.id in self._records:
            self._records[record.id] = _copy(record)

    async def delete(self, record_id: str) -> bool:
        return self._records.pop(record_id, None) is not None

    async def list(
        self,
        where: DeadLetterFilter = _EVERYTHING,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> DeadLetterPage:
        check_page(limit, cursor)
        items: list[DeadLetterRecord] = []
        for record_id in sorted(self._records, reverse=True):
            if cursor is not None and record_id >= cursor:
                continue
            record = self._records[record_id]
            if where.matches(record):
                items.append(_copy(record))
                if len(items) > limit:
                    break
        return _page(items, limit)

    async def purge(self, where: DeadLetterFilter = _EVERYTHING) -> int:
        doomed = [key for key, record in self._records.items() if where.matches(record)]
        for key in doomed:
            del self._records[key]
        return len(doomed)

    async def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for record in self._records.values():
            result[record.reason] = result.get(record.reason, 0) + 1
        return result


def _copy(record: DeadLetterRecord) -> DeadLetterRecord:
    return dataclasses.replace(record, history=[dict(item) for item in record.history])


def _page(items: list[DeadLetterRecord], limit: int) -> DeadLetterPage:
    """``items`` holds up to limit+1 records; the extra one says another page exists."""
    if len(items) > limit:
        return DeadLetterPage(items[:limit], items[limit - 1].id)
    return DeadLetterPage(items, None)


#: URL schemes of Redis (the Redis backend and the Redis dead-letter store).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_dead_letter_store(url: str, **options: Any) -> DeadLetterStore:
    """A store for ``url``: ``memory://``, ``sqlite:///relative.db``,
    ``sqlite:////absolute.db`` or ``redis://host:port/db``.

    Raises ``ValueError`` for an unknown scheme.
    """
    if url.startswith("memory://"):
        return MemoryDeadLetterStore(**options)
    if url.startswith("sqlite://"):
        from ._sqlite_store import SQLiteDeadLetterStore

        return SQLiteDeadLetterStore(url, **options)
    if url.startswith(REDIS_SCHEMES):
        try:
            from .backends.redis import RedisDeadLetterStore  # type: ignore[import-not-found,unused-ignore]
        except ModuleNotFoundError as exc:
            if exc.name not in ("redis", "hiredis"):
                raise
            raise ImportError(
                "Redis dead letters need redis-py: pip install 'agent-event-router[redis]'"
            ) from exc

        store: DeadLetterStore = RedisDeadLetterStore(url, **options)
        return store
    raise ValueError(
        f"unknown dead-letter store URL {url!r}: use memory://, sqlite:///path or redis://host"
    )


def sqlite_path(url: str) -> str:
    """The file path of a SQLAlchemy-style SQLite URL.

    ``sqlite:///relative.db`` -> ``relative.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``.
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(
            f"bad SQLite URL {url!r}: expected sqlite:///relative.db or sqlite:////abs.db"
        )
    return url[len(prefix) :]


async def list_all(
    stores: Sequence[DeadLetterStore],
    where: DeadLetterFilter = _EVERYTHING,
    *,
    limit: int = 100,
    cursor: str | None = None,
) -> DeadLetterPage:
    """One page over several stores, newest first, as if they were one store.

    Ids sort by time across stores, so a cursor (the last id returned) means the
    same thing in each: every store is asked for its ``limit`` newest records below
    the cursor and the newest ``limit`` of those are the page. Raises
    :class:`InvalidFilter` like :meth:`DeadLetterStore.list`.
    """
    check_page(limit, cursor)
    items: dict[str, DeadLetterRecord] = {}
    more = False
    for store in stores:
        page = await store.list(where, limit=limit, cursor=cursor)
        more = more or page.next_cursor is not None
        for record in page.items:
            items.setdefault(record.id, record)
    ordered = sorted(items.values(), key=lambda record: record.id, reverse=True)
    if more or len(ordered) > limit:
        return DeadLetterPage(ordered[:limit], ordered[min(limit, len(ordered)) - 1].id)
    return DeadLetterPage(ordered, None)


async def count_all(stores: Sequence[DeadLetterStore]) -> dict[str, int]:
    """Records per reason, summed over several stores."""
    total: dict[str, int] = {}
    for store in stores:
        for reason, count in (await store.counts()).items():
            total[reason] = total.get(reason, 0) + count
    return dict(sorted(total.items()))


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> float:
    """Seconds in ``30s``, ``15m``, ``2h``, ``7d``, ``1w`` or a plain number of seconds.

    Raises :class:`InvalidFilter` for anything else (negative, not finite, no number).
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)) is not None:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    else:
        raise InvalidFilter(
            f"bad duration {str(value)[:40]!r}: use a number of seconds or a number with a "
            "unit s, m, h, d or w, as in 30s, 15m, 2h, 7d"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidFilter(f"bad duration {str(value)[:40]!r}: must be finite and not negative")
    return seconds


def parse_since(value: Any, *, now: float | None = None) -> float:
    """A moment (unix seconds) from what an operator types for ``since``.

    Three forms: a duration back from now (``30s``, ``15m``, ``2h``, ``7d``), an ISO
    8601 time (``2026-11-21T23:00:00Z``; without a zone it is UTC), or unix seconds
    (a number, or a string of digits). Raises :class:`InvalidFilter` otherwise.
    """
    now = time.time() if now is None else now
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidFilter(f"since must be finite, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            number: float | None = float(text)
        except ValueError:
            number = None
        if number is not None:
            if math.isfinite(number):
                return number
        elif _DURATION.fullmatch(text) is not None:
            return now - parse_duration(text)
        else:
            try:
                return _iso_time(text)
            except ValueError:
                pass
    raise InvalidFilter(
        f"bad since {str(value)[:40]!r}: use a duration back from now (30s, 15m, 2h, 7d), "
        "an ISO 8601 time (2026-11-21T23:00:00Z) or unix seconds"
    )


def _iso_time(text: str) -> float:
    """Unix seconds of an ISO 8601 time; naive means UTC. Raises ``ValueError``."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iter_reasons(counts: dict[str, int]) -> Iterable[tuple[str, int]]:
    return sorted(counts.items())
