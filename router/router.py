"""EventRouter: the publishing pipeline and the owner of every moving part.

Pipeline (the first failing stage decides the reason; every failure is a dead
letter written before ``publish`` returns):

1. parses, fits the schema and the size limit       ``malformed_event``
2. ids valid and consistent                          ``invalid_id``, ``thread_mismatch``
3. the thread exists                                 ``thread_not_found``
4. ``user_id``, if given, is the thread's owner      ``not_owner``
5. run lifecycle                                     ``lifecycle_violation``
6. committed: seq, history, the owner's connections (``no_recipient`` for a final
   event nobody was connected to receive)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from types import TracebackType
from typing import Any

import anyio

from ._tasks import Services
from .backends import Backend, Committed, MemoryBackend, open_backend
from .backends.base import BackendDown
from .connections import Connection, ConnectionState, Hub
from .deadletters import (
    RAW_EVENT_LIMIT,
    REDIS_SCHEMES,
    DeadLetterFilter,
    DeadLetterRecord,
    DeadLetterStore,
    list_all,
    open_dead_letter_store,
    sqlite_path,
)
from .errors import (
    BackendUnavailable,
    IdError,
    OwnerLookupFailed,
    RouterNotStarted,
    ThreadMismatch,
    short_repr,
)
from .events import (
    FINAL_TYPES,
    BaseEvent,
    MalformedEvent,
    format_timestamp,
    parse_event,
    prepare_frame,
    read_event,
)
from .ids import (
    extract_thread_id,
    is_event_id,
    is_thread_id,
    is_user_id,
    new_dead_letter_id,
    new_event_id,
    parse_user_id,
    validate_id_pair,
)
from .stats import Stats
from .threads import OwnerOf, ThreadRegistry

__all__ = ["EventRouter", "PublishResult", "ReplayReport"]

logger = logging.getLogger("router")

_DEFAULT_SPOOL = "sqlite:///./agent-router-spool.db"


@dataclasses.dataclass(slots=True, frozen=True)
class PublishResult:
    """What became of one published event. Truthy when accepted (or spooled)."""

    accepted: bool
    event_id: str
    seq: int | None = None
    reason: str | None = None
    detail: str | None = None
    dead_letter_id: str | None = None
    spooled: bool = False

    def __bool__(self) -> bool:
        return self.accepted or self.spooled

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True, frozen=True)
class ReplayReport:
    matched: int
    accepted: int
    rejected: int
    skipped: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class _Rejection(Exception):
    """Internal: a pipeline stage failed."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


#: The last millisecond stamped (unix ms) and its text: every event accepted within
#: one millisecond shares it (strftime, and even formatting, cost more than a compare).
#: One tuple, replaced whole, so concurrent callers never pair a text with another ms.
_last_stamp: tuple[int, str] = (-1, "")


def _ms_timestamp() -> str:
    """Now, in UTC, as ``2026-11-21T23:59:00.123Z`` (truncated to the millisecond)."""
    global _last_stamp
    millis = time.time_ns() // 1_000_000
    stamp = _last_stamp
    if stamp[0] != millis:
        seconds, rest = divmod(millis, 1000)
        text = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{rest:03d}Z"
        stamp = _last_stamp = (millis, text)
    return stamp[1]


class EventRouter:
    """Validates agent events and routes them to their owner's connections.

    Use as ``async with router:`` or ``await router.start()`` / ``await
    router.stop()``; :class:`~router.middleware.EventRouterMiddleware` does this
    with the application's lifespan. ``publish`` may be called from any task of
    the router's event loop; from other threads use the bridge's sync API.
    """

    def __init__(
        self,
        *,
        backend: str | Backend = "memory://",
        dead_letters: str | DeadLetterStore = "sqlite:///./agent-router.db",
        owner_of: OwnerOf | None = None,
        history_size: int = 1000,
        history_ttl: float = 900.0,
        outbox_size: int = 1000,
        max_payload_bytes: int = 65536,
        dead_letter_no_recipient: bool = True,
        owner_cache_ttl: float = 5.0,
        run_ttl: float = 600.0,
        dead_letter_max_records: int | None = 100_000,
        dead_letter_max_age: float | None = None,
        spool_size: int = 10_000,
        spool_dead_letters: str | DeadLetterStore = _DEFAULT_SPOOL,
        sweep_interval: float = 60.0,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        if outbox_size < 1:
            raise ValueError("outbox_size must be at least 1")
        if isinstance(backend, str):
            options: dict[str, Any] = {
                "history_size": history_size,
                "history_ttl": history_ttl,
                "run_ttl": run_ttl,
            }
            options.update(backend_options or {})
            backend = open_backend(backend, **options)
        self.backend: Backend = backend
        if isinstance(dead_letters, str):
            store_options: dict[str, Any] = {
                "max_records": dead_letter_max_records,
                "max_age": dead_letter_max_age,
            }
            prefix = getattr(self.backend, "prefix", None)
            if prefix is not None and dead_letters.startswith(REDIS_SCHEMES):
                # Dead letters on Redis live under the backend's key prefix too, so
                # deployments sharing one Redis keep their records apart.
                store_options["prefix"] = prefix
            dead_letters = open_dead_letter_store(dead_letters, **store_options)
        self.dead_letters: DeadLetterStore = dead_letters
        self._spool_store_spec = spool_dead_letters
        self.spool_dead_letters: DeadLetterStore | None = None
        self.spool_size = spool_size
        self._spool: deque[tuple[Any, str]] = deque()
        self._spool_ready = anyio.Event()
        self.sweep_interval = sweep_interval
        self.threads = ThreadRegistry(backend.threads, owner_of=owner_of, cache_ttl=owner_cache_ttl)
        if hasattr(backend, "on_epoch_change"):
            backend.on_epoch_change = self._epoch_changed
        self.hub = Hub()
        self.stats = Stats()
        self.outbox_size = outbox_size
        self.max_payload_bytes = max_payload_bytes
        self.dead_letter_no_recipient = dead_letter_no_recipient
        self._running = False
        #: publishes since the last one that let other tasks run
        self._unyielded = 0
        self._run_threads: dict[str, str] = {}
        # Recent accepted events, for the admin lookup: event_id -> (thread_id, seq,
        # connections queued here, owner listening anywhere), kept as a str and an int
        # (_pack_recent) because neither is tracked by the cyclic garbage collector: a
        # tuple per event would trigger a collection every 700 events. Two generations
        # of _RECENT_EVENTS: a full one is kept as the older and a new one started, so
        # the hot path pays one insert and no eviction.
        self._recent_threads: dict[str, str] = {}
        self._recent_info: dict[str, int] = {}
        self._recent_threads_older: dict[str, str] = {}
        self._recent_info_older: dict[str, int] = {}
        # Where a record being replayed lives, when not in ``dead_letters`` (the spool store).
        self._replay_sources: dict[str, DeadLetterStore] = {}
        self._services = Services()

    # ------------------------------------------------------------------ lifetime

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        """Open the dead-letter store and the backend and start the background tasks
        (spool flushing, history sweeping) as tasks of their own. Idempotent."""
        if self._running:
            return
        await self.dead_letters.open()
        try:
            await self.backend.start(self.hub)
        except BaseException:
            await self.dead_letters.close()
            raise
        self._services.spawn(self._flusher, name="router-spool-flusher")
        self._services.spawn(self._sweeper, name="router-history-sweeper")
        self._running = True

    async def stop(self) -> None:
        """Close every connection (1001), then the backend and the stores. Idempotent.

        Events still in the spool (scale-out backend unreachable) are written to the
        spool dead-letter store with reason ``backend_unavailable``."""
        if not self._running:
            return
        self._running = False
        for conn in self.hub.connections():
            conn.close(1001, "server shutting down")
        await self._services.close()
        while self._spool:
            event, event_id = self._spool.popleft()
            await self._overflow(event, event_id, "the router stopped before the backend returned")
        await self.backend.stop()
        await self.dead_letters.close()
        if self.spool_dead_letters is not None:
            await self.spool_dead_letters.close()
            self.spool_dead_letters = None

    async def __aenter__(self) -> EventRouter:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ publish

    async def publish(self, event: Any) -> PublishResult:
        """Validate one event and route it. Never raises for a bad event.

        ``event`` may be an event model, a dict, or JSON ``bytes``/``str``. The
        result is truthy when the event was accepted. Raises
        :class:`~router.errors.RouterNotStarted` when the router is not running.
        Cancelling it is safe: the event is then either fully committed or not
        committed at all, and a rejection is either recorded or not counted.
        """
        if not self._running:
            raise RouterNotStarted()
        started = time.perf_counter()
        self.stats.published += 1
        if self._spool:
            # Keep order: while anything waits in the spool, new events queue behind it.
            return await self._spool_event(event)
        try:
            result = await self._pipeline(event, None)
        except BackendDown:
            return await self._spool_event(event)
        self.stats.observe(time.perf_counter() - started)
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY or self.hub.pressure:
            # A burst published without awaiting anything else: let the writers, and
            # every other task, run once. Bounds how long a tight publishing loop holds
            # the event loop; sooner when an outbox is already half full.
            self._unyielded = 0
            self.hub.pressure = False
            await asyncio.sleep(0)
        return result

    # ------------------------------------------------------------------ spool

    async def _spool_event(self, event: Any) -> PublishResult:
        """The backend is unreachable: keep the event in order for later, or, when
        the spool is full, write it to the spool dead-letter store."""
        event_id = _peek_event_id(event)
        if len(self._spool) < self.spool_size:
            self._spool.append((event, event_id))
            self.stats.spooled += 1
            self._spool_ready.set()
            return PublishResult(False, event_id, spooled=True)
        return await self._overflow(
            event, event_id, f"the spool is full ({self.spool_size} events)"
        )

    async def _overflow(self, event: Any, event_id: str, why: str) -> PublishResult:
        parsed = parse_event(event, max_payload_bytes=self.max_payload_bytes)
        if isinstance(parsed, MalformedEvent):
            original, raw, model = parsed.original, parsed.raw, None
        else:
            original, raw, model = _original(event, parsed), False, parsed
        detail = f"backend unreachable and {why}; replay it once the backend is back"
        record = await self._record(
            "backend_unavailable",
            detail,
            original=original,
            raw=raw,
            event_id=event_id,
            parsed=model,
            fallback_only=True,
            source=event,
        )
        self.stats.reject("backend_unavailable")
        logger.warning("event %s dead-lettered as backend_unavailable: %s", event_id, why)
        return PublishResult(
            False, event_id, reason="backend_unavailable", detail=detail, dead_letter_id=record.id
        )

    async def _flusher(self) -> None:
        """Send spooled events through the whole pipeline, in order, once the backend answers."""
        while True:
            await self._spool_ready.wait()
            delay = 0.05
            while self._spool:
                event, event_id = self._spool[0]
                try:
                    if not await self.backend.ping():
                        raise BackendDown("ping failed")
                    await self._pipeline(event, None, event_id=event_id)
                except BackendDown:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                except Exception as exc:
                    # Never let one event stop the flusher: record it and go on.
                    logger.exception("spooled event %s failed in the pipeline", event_id)
                    self._spool.popleft()
                    try:
                        await self._overflow(event, event_id, f"its replay failed: {exc!r:.200}")
                    except Exception:
                        logger.exception("spooled event %s could not be recorded", event_id)
                    continue
                self._spool.popleft()
                delay = 0.05
            self._spool_ready = anyio.Event()

    async def _sweeper(self) -> None:
        sweep = getattr(self.backend, "sweep", None)
        if sweep is None:
            return
        while True:
            await anyio.sleep(self.sweep_interval)
            sweep()

    # ------------------------------------------------------------------ pipeline

    async def _pipeline(
        self, event: Any, replaying: DeadLetterRecord | None, *, event_id: str | None = None
    ) -> PublishResult:
        """Stages 1-6. Raises BackendDown when a scale-out backend does not answer."""
        if replaying is not None and replaying.event_id:
            event_id = replaying.event_id
        read = read_event(event, max_payload_bytes=self.max_payload_bytes)
        if isinstance(read, MalformedEvent):
            return await self._reject(
                "malformed_event",
                read.detail,
                original=read.original,
                raw=read.raw,
                event_id=event_id or read.event_id,
                replaying=replaying,
                source=event,
            )
        parsed, payload_json = read
        event_id = parsed.event_id or event_id or new_event_id()
        try:
            thread_id, user_id = self._read_ids(parsed)
            try:
                owner = await self.threads.owner(thread_id)
            except OwnerLookupFailed as exc:
                raise _Rejection(
                    "backend_unavailable",
                    f"{exc}; replay the event once the application's thread store answers",
                ) from None
            if owner is None:
                raise _Rejection(
                    "thread_not_found",
                    f"thread {thread_id!r} is not in the thread store: create it "
                    "(router.threads.create) before publishing to it",
                )
            if user_id is not None and user_id != owner:
                raise _Rejection(
                    "not_owner",
                    f"user {user_id!r} does not own thread {thread_id!r}",
                )
            timestamp = (
                _format(parsed.timestamp) if parsed.timestamp is not None else _ms_timestamp()
            )
            frame = prepare_frame(
                parsed,
                event_id=event_id,
                thread_id=thread_id,
                timestamp=timestamp,
                payload_json=payload_json,
            )
            outcome = await self.backend.commit(
                thread_id=thread_id,
                user_id=owner,
                run_id=parsed.run_id,
                event_type=parsed.type,  # type: ignore[attr-defined]
                payload=parsed.payload,  # type: ignore[attr-defined]
                head=frame.head,
                tail=frame.tail,
            )
            if not isinstance(outcome, Committed):
                raise _Rejection("lifecycle_violation", outcome)
        except _Rejection as rejection:
            return await self._reject(
                rejection.reason,
                rejection.detail,
                original=_original(event, parsed),
                raw=False,
                event_id=event_id,
                parsed=parsed,
                replaying=replaying,
            )
        self.stats.accepted += 1
        threads = self._recent_threads
        if len(threads) >= _RECENT_EVENTS:
            self._recent_threads_older, threads = threads, {}
            self._recent_info_older, self._recent_info = self._recent_info, {}
            self._recent_threads = threads
        threads[event_id] = thread_id
        self._recent_info[event_id] = (
            (outcome.seq << 32) | (outcome.queued << 1) | (1 if outcome.listeners else 0)
        )
        dead_letter_id = None
        event_type: str = parsed.type  # type: ignore[attr-defined]
        if not outcome.listeners and self.dead_letter_no_recipient and event_type in FINAL_TYPES:
            no_recipient = await self._record(
                "no_recipient",
                f"{event_type} (seq {outcome.seq}) reached nobody: user {owner!r} had no live "
                "connection; it stays in history for a resume",
                original=_original(event, parsed),
                raw=False,
                event_id=event_id,
                parsed=parsed,
                owner=owner,
            )
            dead_letter_id = no_recipient.id
        if replaying is not None:
            await self._store_of(replaying).delete(replaying.id)
        return PublishResult(True, event_id, outcome.seq, dead_letter_id=dead_letter_id)

    def _read_ids(self, parsed: BaseEvent) -> tuple[str, str | None]:
        """Stage 2, all through the id module."""
        try:
            run_id = parsed.run_id
            # A run's events all name it: remember the thread each run embeds (pure
            # function of the string) instead of parsing the run id every time.
            known = self._run_threads.get(run_id) if isinstance(run_id, str) else None
            if known is not None and (parsed.thread_id is None or parsed.thread_id == known):
                thread_id: str = known
            else:
                if parsed.thread_id is None:
                    thread_id = extract_thread_id(run_id)
                else:
                    thread_id = validate_id_pair(run_id, parsed.thread_id)
                # As a plain str: a ThreadId (a str subclass) is tracked by the cyclic
                # garbage collector, and every accepted event keeps its thread id
                # (recent events), so each would be one more object for every collection.
                thread_id = str.__str__(thread_id)
                if len(self._run_threads) >= _RUN_THREADS_SIZE:
                    self._run_threads.clear()
                self._run_threads[run_id] = thread_id
            user_id = None if parsed.user_id is None else parse_user_id(parsed.user_id)
        except ThreadMismatch as exc:
            raise _Rejection("thread_mismatch", str(exc)) from None
        except IdError as exc:
            raise _Rejection("invalid_id", str(exc)) from None
        return thread_id, user_id

    async def _reject(
        self,
        reason: str,
        detail: str,
        *,
        original: Any,
        raw: bool,
        event_id: str,
        parsed: BaseEvent | None = None,
        replaying: DeadLetterRecord | None = None,
        source: Any = None,
    ) -> PublishResult:
        if replaying is not None:
            replaying.rejected_again(reason, detail)
            await self._store_of(replaying).update(replaying)
            record = replaying
        else:
            record = await self._record(
                reason,
                detail,
                original=original,
                raw=raw,
                event_id=event_id,
                parsed=parsed,
                source=source,
            )
        record_id = record.id
        self.stats.reject(reason)
        logger.warning(
            "event rejected: reason=%s event_id=%s run_id=%s thread_id=%s user_id=%s "
            "dead_letter_id=%s: %s",
            reason,
            event_id,
            short_repr(record.run_id),
            short_repr(record.thread_id),
            short_repr(record.user_id),
            record_id,
            detail,
        )
        return PublishResult(
            False, event_id, reason=reason, detail=detail, dead_letter_id=record_id
        )

    async def _record(
        self,
        reason: str,
        detail: str,
        *,
        original: Any,
        raw: bool,
        event_id: str,
        parsed: BaseEvent | None = None,
        owner: str | None = None,
        fallback_only: bool = False,
        source: Any = None,
    ) -> DeadLetterRecord:
        run_id: str | None = None
        thread_id: str | None = None
        user_id: str | None = None
        event_type: str | None = None
        if parsed is not None:
            event_type = parsed.type  # type: ignore[attr-defined]
            run_id = parsed.run_id if isinstance(parsed.run_id, str) else None
            try:
                thread_id = extract_thread_id(parsed.run_id)
            except IdError:
                thread_id = parsed.thread_id if isinstance(parsed.thread_id, str) else None
            user_id = owner or (parsed.user_id if isinstance(parsed.user_id, str) else None)
        else:
            # Not a valid event: read what ids it has from the input itself
            # (a dict may have been kept as text when it held non-JSON values).
            fields = source if isinstance(source, dict) else original
            if isinstance(fields, dict):
                event_type = _str_or_none(fields.get("type"))
                run_id = _str_or_none(fields.get("run_id"))
                thread_id = _str_or_none(fields.get("thread_id"))
                user_id = _str_or_none(fields.get("user_id"))
        if thread_id is not None and not is_thread_id(thread_id):
            thread_id = thread_id[:256]
        if user_id is not None and not is_user_id(user_id):
            user_id = user_id[:256]
        if raw and isinstance(original, str) and len(original) > RAW_EVENT_LIMIT:
            detail += (
                f" (event text cut to its first {RAW_EVENT_LIMIT} of {len(original)} characters)"
            )
            original = original[:RAW_EVENT_LIMIT]
        record = DeadLetterRecord(
            id=new_dead_letter_id(),
            reason=reason,
            detail=detail,
            event=original,
            event_raw=raw,
            event_id=event_id,
            event_type=event_type,
            run_id=run_id[:512] if run_id else run_id,
            thread_id=thread_id,
            user_id=user_id,
            created_at=time.time(),
        )
        try:
            if fallback_only:
                raise BackendDown("spooling")
            await self.dead_letters.add(record)
        except BackendDown:
            # The dead-letter store is on the unreachable backend: keep it locally.
            try:
                store = await self._spool_store()
                await store.add(record)
            except Exception as exc:
                raise BackendUnavailable(
                    f"event {event_id!r} ({reason}) could be neither routed, spooled nor "
                    f"stored: {exc}"
                ) from exc
        self.stats.dead_letter(reason)
        return record

    async def _spool_store(self) -> DeadLetterStore:
        store = self.spool_dead_letters
        if store is None:
            spec = self._spool_store_spec
            store = open_dead_letter_store(spec) if isinstance(spec, str) else spec
            # Set before the first await, so that concurrent callers share one store;
            # each awaits open(), which is idempotent.
            self.spool_dead_letters = store
        await store.open()
        return store

    async def dead_letter_stores(self) -> list[DeadLetterStore]:
        """The stores an operator sees (the admin API lists and replays from all):
        ``dead_letters``, then the spool store when this process has opened it or its
        SQLite file exists (records written while a scale-out backend was down, maybe
        by an earlier run). Raises what opening the spool store raises."""
        stores = [self.dead_letters]
        spec = self._spool_store_spec
        if self.spool_dead_letters is not None:
            stores.append(self.spool_dead_letters)
        elif isinstance(self.backend, MemoryBackend) and spec == _DEFAULT_SPOOL:
            # One process never spools; a default spool file in the working directory
            # belongs to some other deployment. (An explicitly named one is shown.)
            pass
        elif not isinstance(spec, str):
            stores.append(await self._spool_store())
        elif (
            spec.startswith("sqlite://")
            and spec != self.dead_letters.url
            and await anyio.Path(sqlite_path(spec)).is_file()
        ):
            stores.append(await self._spool_store())
        return stores

    async def find_dead_letter(
        self, record_id: str
    ) -> tuple[DeadLetterRecord, DeadLetterStore] | None:
        """A record by id from any of :meth:`dead_letter_stores`, with its store."""
        for store in await self.dead_letter_stores():
            record = await store.get(record_id)
            if record is not None:
                return record, store
        return None

    def accepted_event(self, event_id: str) -> tuple[str, int, int, bool] | None:
        """``(thread_id, seq, queued, listeners)`` of a recently accepted event (about
        the last 20,000 to 40,000), or None: ``queued`` is how many connections the
        backend's commit handed it to in this process (a scale-out backend fans out
        later, so 0 there), ``listeners`` whether the owner had a live connection
        anywhere."""
        thread_id = self._recent_threads.get(event_id)
        if thread_id is not None:
            info = self._recent_info[event_id]
        else:
            thread_id = self._recent_threads_older.get(event_id)
            if thread_id is None:
                return None
            info = self._recent_info_older[event_id]
        return thread_id, info >> 32, (info & 0xFFFFFFFF) >> 1, bool(info & 1)

    def _store_of(self, record: DeadLetterRecord) -> DeadLetterStore:
        return self._replay_sources.get(record.id, self.dead_letters)

    # ------------------------------------------------------------------ replay

    async def replay(self, record_id: str) -> PublishResult:
        """Run a dead letter's original event through the whole pipeline again.

        Accepted: the record is removed. Rejected again: the record stays with
        ``attempts`` + 1 and the new reason first. The ``event_id`` is kept. Records
        of the spool store are replayed too (and stay there when rejected again).
        Raises ``KeyError`` when there is no such record, and
        :class:`~router.backends.base.BackendDown` when a scale-out backend does not
        answer (the record is then unchanged and the replay not counted).
        """
        if not self._running:
            raise RouterNotStarted("replay")
        found = await self.find_dead_letter(record_id)
        if found is None:
            raise KeyError(record_id)
        record, store = found
        if store is not self.dead_letters:
            self._replay_sources[record.id] = store
        self.stats.published += 1
        try:
            if record.reason == "no_recipient":
                return await self._redeliver(record)
            event = record.event
            if isinstance(event, dict) and record.event_id and "event_id" not in event:
                event = {**event, "event_id": record.event_id}
            return await self._pipeline(event, record)
        except BackendDown:
            self.stats.published -= 1
            raise
        finally:
            self._replay_sources.pop(record.id, None)

    async def _redeliver(self, record: DeadLetterRecord) -> PublishResult:
        """Replay a ``no_recipient`` record: its event was accepted and is in history,
        so replaying hands that same frame (same seq) to the owner's live connections
        here. The record goes once a connection took it; otherwise it stays."""
        event_id = record.event_id or new_event_id()
        self.stats.accepted += 1
        thread_id, user_id = record.thread_id, record.user_id
        if thread_id is None or user_id is None or not is_thread_id(thread_id):
            return PublishResult(True, event_id, dead_letter_id=record.id)
        seq = await self.backend.find_event(thread_id, event_id)
        if seq is None:
            return PublishResult(True, event_id, dead_letter_id=record.id)
        handed = 0
        frames = (await self.backend.read_history(thread_id, seq - 1)).frames
        if frames and frames[0][0] == seq:
            for conn in self.hub.connections(user_id):
                if conn.wants(thread_id) and await conn.put_event(thread_id, seq, frames[0][1]):
                    handed += 1
        self.hub.delivered += handed
        if handed:
            await self._store_of(record).delete(record.id)
            return PublishResult(True, event_id, seq)
        return PublishResult(True, event_id, seq, dead_letter_id=record.id)

    async def replay_many(
        self,
        where: DeadLetterFilter | None = None,
        *,
        dry_run: bool = False,
        limit: int = 1000,
        rate: float = 500.0,
    ) -> ReplayReport:
        """Replay the oldest ``limit`` records matching ``where``, oldest first (the
        order they were published in), at most ``rate`` per second.

        ``matched`` counts every match; accepted, rejected and skipped add up to the
        records taken (at most ``limit``), so a larger backlog shows as ``matched``
        above their sum. With ``dry_run`` nothing is replayed and every record taken
        counts as skipped. A record that is gone by its turn, or that the scale-out
        backend cannot take right now, is skipped (and kept)."""
        where = where or DeadLetterFilter()
        stores = await self.dead_letter_stores()
        # Pages come newest first: keep a window of the last ``limit`` ids seen.
        oldest: deque[str] = deque(maxlen=max(limit, 0))
        matched = 0
        cursor = None
        while True:
            page = await list_all(stores, where, limit=1000, cursor=cursor)
            matched += len(page.items)
            oldest.extend(record.id for record in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        record_ids = list(reversed(oldest))
        if dry_run:
            return ReplayReport(matched, 0, 0, len(record_ids))
        accepted = rejected = skipped = 0
        interval = 1.0 / rate if rate > 0 else 0.0
        next_at = time.monotonic()
        for record_id in record_ids:
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                next_at = max(next_at, time.monotonic()) + interval
            try:
                result = await self.replay(record_id)
            except (KeyError, BackendDown):
                skipped += 1
                continue
            if result.accepted and result.dead_letter_id != record_id:
                # Accepted (a final event may have a fresh no_recipient record).
                accepted += 1
            elif result.accepted:
                skipped += 1  # a no_recipient record nobody was there to take
            else:
                rejected += 1
        return ReplayReport(matched, accepted, rejected, skipped)

    # ------------------------------------------------------------------ connections

    def connect(self, user_id: str, connection_id: str) -> Connection:
        """Register a new connection for a user (used by the middleware)."""
        conn = Connection(
            connection_id, user_id, outbox_size=self.outbox_size, on_close=self._connection_closing
        )
        return conn

    async def attach(self, conn: Connection) -> None:
        """Start delivering live events to a connection. Returns once this process is
        sure to receive every event of the user published from now on."""
        try:
            await self.backend.watch(conn.user_id)
        except BaseException:
            self.backend.unwatch(conn.user_id)
            raise
        if conn.state is not ConnectionState.OPEN:
            self.backend.unwatch(conn.user_id)
            return
        self.hub.add(conn)

    def _epoch_changed(self) -> None:
        """The shared backend lost its data: owners must be read again, and clients
        learn that their seqs restart."""
        self.threads.invalidate()
        self.hub.reset_sequences()

    def detach(self, conn: Connection) -> None:
        """Stop delivering to a connection. Idempotent."""
        if self.hub.remove(conn):
            self.backend.unwatch(conn.user_id)

    def _connection_closing(self, conn: Connection) -> None:
        self.detach(conn)
        if conn.close_code == 1013:
            self.stats.slow_consumer_closes += 1

    def snapshot(self) -> dict[str, Any]:
        """The figures of ``GET /_router/stats``."""
        data = self.stats.snapshot(connections=len(self.hub), delivered=self.hub.delivered)
        data["spool_pending"] = len(self._spool)
        data["backend"] = self.backend.stats()
        data["dead_letter_retention_removed"] = self.dead_letters.retention_removed
        return data


#: How many run ids ``_read_ids`` remembers the thread of (then it starts afresh).
_RUN_THREADS_SIZE = 65536

#: A publish lets other tasks run at least this often (a tight loop of publishes
#: awaits nothing that suspends: without it, writers would wait for the whole burst).
_YIELD_EVERY = 32

#: Accepted events per generation of the lookup map (two generations are kept).
_RECENT_EVENTS = 20_000


_format = format_timestamp


def _str_or_none(value: Any) -> str | None:
    return value[:512] if isinstance(value, str) else None


def _original(event: Any, parsed: BaseEvent) -> Any:
    """The event as received, for a dead letter of a parsed event."""
    if isinstance(event, dict):
        return event
    return parsed.model_dump(mode="json", exclude_unset=True)


def _peek_event_id(event: Any) -> str:
    """The event's own id when it carries a usable one, else a new one (kept for replay)."""
    if isinstance(event, dict):
        candidate = event.get("event_id")
    else:
        candidate = getattr(event, "event_id", None)
    return str(candidate) if is_event_id(candidate) else new_event_id()
