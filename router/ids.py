"""Ids: the single source of truth.

Every thread, run, event, connection and dead-letter id the library uses is minted
here, and every decision about an id string (is it canonical, which thread does a
run belong to, do a run and a thread belong together) is made here. No other
module builds, slices or compares id strings; an architecture test enforces it.

Grammar::

    operation  = [a-z][a-z0-9]*(_[a-z0-9]+)*
    thread_id  = "thread_" operation "_" millis "_" counter "_" hex8
    run_id     = "run_" thread_id "_" hex8
    user_id    = 1..128 chars of [A-Za-z0-9_.@:+-], and not itself a thread or run id

Errors: :class:`~router.errors.InvalidId` for a value outside the grammar,
:class:`~router.errors.ThreadMismatch` for a run that embeds another thread. Both
are :class:`~router.errors.IdError`, a ``ValueError``; no other exception escapes
these functions for any input.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from .errors import IdError, InvalidId, ThreadMismatch

__all__ = [
    "check",
    "dead_letter_id_floor",
    "dead_letter_id_time",
    "IdError",
    "InvalidId",
    "RunId",
    "ThreadId",
    "ThreadMismatch",
    "UserId",
    "explain",
    "extract_thread_id",
    "is_dead_letter_id",
    "is_event_id",
    "is_run_id",
    "is_thread_id",
    "is_user_id",
    "new_connection_id",
    "new_dead_letter_id",
    "new_event_id",
    "new_run_id",
    "new_thread_id",
    "parse_run_id",
    "parse_thread_id",
    "parse_user_id",
    "validate_id_pair",
]

_THREAD_PREFIX = "thread_"
_RUN_PREFIX = "run_"

_OPERATION = r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*"
_THREAD = rf"{_THREAD_PREFIX}{_OPERATION}_[0-9]+_[0-9]+_[0-9a-f]{{8}}"
_OPERATION_RE = re.compile(_OPERATION)
_THREAD_RE = re.compile(_THREAD)
# The shape of any run id: "run_" <embedded> "_" hex8. The embedded part is judged
# separately, so that a mismatch is reported as such even when it is not canonical.
_RUN_SHAPE_RE = re.compile(rf"{_RUN_PREFIX}(?P<embedded>.+)_(?P<suffix>[0-9a-f]{{8}})", re.DOTALL)
_RUN_RE = re.compile(rf"{_RUN_PREFIX}(?P<thread>{_THREAD})_[0-9a-f]{{8}}")
_USER_RE = re.compile(r"[A-Za-z0-9_.@:+\-]{1,128}")
_EVENT_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_DEAD_LETTER_RE = re.compile(r"[0-9a-f]{32}")

# Longer input is rejected before any regex runs: it cannot be canonical and
# should not cost more than a length check.
_MAX_ID_LENGTH = 512
# A canonical thread id leaves room for "run_" + "_" + hex8, so that every
# canonical thread has canonical runs; a minted one keeps its operation short.
_MAX_THREAD_LENGTH = _MAX_ID_LENGTH - len(_RUN_PREFIX) - 9
_MAX_OPERATION_LENGTH = 128


class _CanonicalId(str):
    """A str that has been checked against the grammar. Subclasses name the kind."""

    __slots__ = ()
    _kind = "id"

    @classmethod
    def _parse(cls, value: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls._parse,
            core_schema.str_schema(),
            serialization=core_schema.to_string_ser_schema(),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        json_schema: dict[str, Any] = handler(schema)
        json_schema["pattern"] = "^" + cls._pattern() + "$"
        return json_schema

    @classmethod
    def _pattern(cls) -> str:
        return ".*"


class ThreadId(_CanonicalId):
    """A canonical thread id. Construct with :func:`parse_thread_id` or mint with
    :func:`new_thread_id`; as a pydantic field type it validates the grammar."""

    __slots__ = ()

    @classmethod
    def _parse(cls, value: Any) -> ThreadId:
        return parse_thread_id(value)

    @classmethod
    def _pattern(cls) -> str:
        return _THREAD


class RunId(_CanonicalId):
    """A canonical run id (``run_<thread_id>_<hex8>``)."""

    __slots__ = ()

    @classmethod
    def _parse(cls, value: Any) -> RunId:
        return parse_run_id(value)

    @classmethod
    def _pattern(cls) -> str:
        return _RUN_RE.pattern


class UserId(_CanonicalId):
    """An opaque user id minted by the application's authentication."""

    __slots__ = ()

    @classmethod
    def _parse(cls, value: Any) -> UserId:
        return parse_user_id(value)

    @classmethod
    def _pattern(cls) -> str:
        return _USER_RE.pattern


# --------------------------------------------------------------------------- checks


def _fits(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID_LENGTH


def is_thread_id(value: Any) -> bool:
    """True when ``value`` is a canonical thread id. Never raises."""
    return (
        _fits(value)
        and len(value) <= _MAX_THREAD_LENGTH
        and _THREAD_RE.fullmatch(value) is not None
    )


def is_run_id(value: Any) -> bool:
    """True when ``value`` is a canonical run id. Never raises."""
    return _fits(value) and _RUN_RE.fullmatch(value) is not None


def is_user_id(value: Any) -> bool:
    """True when ``value`` is a usable user id. Never raises.

    A canonical thread or run id is refused as a user id: using one in place of
    the other is one of the bugs this library exists to catch.
    """
    return (
        _fits(value)
        and _USER_RE.fullmatch(value) is not None
        and not is_thread_id(value)
        and not is_run_id(value)
    )


def is_event_id(value: Any) -> bool:
    """True for an acceptable event id (1..128 of ``[A-Za-z0-9_.:-]``). Never raises."""
    return _fits(value) and _EVENT_RE.fullmatch(value) is not None


def is_dead_letter_id(value: Any) -> bool:
    """True for a dead-letter id as minted by :func:`new_dead_letter_id`. Never raises."""
    return _fits(value) and _DEAD_LETTER_RE.fullmatch(value) is not None


def _why_not_string(value: Any) -> str:
    if value is None:
        return "it is missing (null)"
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if value == "":
        return "it is empty"
    if len(value) > _MAX_ID_LENGTH:
        return f"it is {len(value)} characters long"
    return ""


def parse_thread_id(value: Any) -> ThreadId:
    """Return ``value`` as a :class:`ThreadId`, or raise :class:`InvalidId`."""
    if is_thread_id(value):
        return ThreadId(value)
    why = _why_not_string(value)
    if not why:
        if len(value) > _MAX_THREAD_LENGTH:
            why = f"it is {len(value)} characters long (at most {_MAX_THREAD_LENGTH})"
        else:
            why = "expected 'thread_<operation>_<millis>_<counter>_<hex8>'"
    raise InvalidId(value, "thread_id", why)


def parse_run_id(value: Any) -> RunId:
    """Return ``value`` as a :class:`RunId`, or raise :class:`InvalidId`."""
    extract_thread_id(value)
    return RunId(value)


def parse_user_id(value: Any) -> UserId:
    """Return ``value`` as a :class:`UserId`, or raise :class:`InvalidId`."""
    if is_user_id(value):
        return UserId(value)
    why = _why_not_string(value)
    if not why:
        if is_thread_id(value) or is_run_id(value):
            why = "a thread or run id cannot be used as a user id"
        else:
            why = "expected 1..128 characters of [A-Za-z0-9_.@:+-]"
    raise InvalidId(value, "user_id", why)


def _split_run(run_id: Any) -> str:
    """The embedded part of a run id, or InvalidId when it is not ``run_<x>_<hex8>``."""
    why = _why_not_string(run_id)
    if not why:
        match = _RUN_SHAPE_RE.fullmatch(run_id)
        if match is not None:
            return match.group("embedded")
        why = "expected 'run_<thread_id>_<hex8>'"
    raise InvalidId(run_id, "run_id", why)


def extract_thread_id(run_id: Any) -> ThreadId:
    """The thread a run belongs to, read from the run id itself.

    Raises :class:`InvalidId` when ``run_id`` is not ``run_<x>_<hex8>`` or ``<x>``
    is not a canonical thread id.
    """
    embedded = _split_run(run_id)
    if not is_thread_id(embedded):
        raise InvalidId(
            run_id,
            "run_id",
            f"the embedded thread {embedded!r} is not a canonical thread id"[:200],
        )
    return ThreadId(embedded)


def validate_id_pair(run_id: Any, thread_id: Any) -> ThreadId:
    """Check that ``run_id`` embeds exactly ``thread_id``; return the thread.

    A run id whose embedded part differs from ``thread_id`` is a
    :class:`ThreadMismatch` even when the embedded part is not canonical;
    otherwise any non-canonical id is :class:`InvalidId`.
    """
    embedded = _split_run(run_id)
    if not isinstance(thread_id, str):
        raise InvalidId(thread_id, "thread_id", _why_not_string(thread_id))
    if embedded != thread_id:
        raise ThreadMismatch(run_id, thread_id, embedded)
    return extract_thread_id(run_id)


# --------------------------------------------------------------------------- minting

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _hex8() -> str:
    return secrets.token_hex(4)


def new_thread_id(operation: str = "chat") -> ThreadId:
    """Mint a canonical thread id. The counter is process-wide and thread-safe.

    Raises :class:`InvalidId` when ``operation`` is outside ``[a-z][a-z0-9]*(_[a-z0-9]+)*``.
    """
    if not (
        isinstance(operation, str)
        and 0 < len(operation) <= _MAX_OPERATION_LENGTH
        and _OPERATION_RE.fullmatch(operation)
    ):
        raise InvalidId(
            operation,
            "operation",
            f"expected 1..{_MAX_OPERATION_LENGTH} characters of [a-z][a-z0-9]*(_[a-z0-9]+)*",
        )
    with _counter_lock:
        count = next(_counter)
    millis = time.time_ns() // 1_000_000
    return ThreadId(f"{_THREAD_PREFIX}{operation}_{millis}_{count}_{_hex8()}")


def new_run_id(thread_id: Any) -> RunId:
    """Mint a run id for a thread. Raises :class:`InvalidId` if ``thread_id`` is not canonical."""
    thread = parse_thread_id(thread_id)
    return RunId(f"{_RUN_PREFIX}{thread}_{_hex8()}")


def new_event_id() -> str:
    """A fresh event id (uuid4, hex)."""
    # One is minted per published event: take it from a batch made with a single
    # os.urandom call rather than paying a system call each time.
    global _event_ids
    value = next(_event_ids, None)
    if value is None:
        _event_ids = _event_id_batch()
        value = next(_event_ids)
    return value


def _event_id_batch() -> Iterator[str]:
    # uuid.uuid4().hex without building UUIDs: 16 random bytes each, with the
    # version (4) and variant (RFC 4122) bits set on every block at once. A list
    # iterator: next() on it is atomic, so threads minting at once never get the
    # same id.
    data = bytearray(os.urandom(16 * _EVENT_ID_BATCH))
    data[6::16] = data[6::16].translate(_UUID4_VERSION)
    data[8::16] = data[8::16].translate(_UUID4_VARIANT)
    text = data.hex()
    return iter([text[i : i + 32] for i in range(0, len(text), 32)])


#: Byte maps setting a uuid4's version nibble (byte 6) and variant bits (byte 8).
_UUID4_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))
_UUID4_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


def _forget_event_ids() -> None:
    # A forked child must not mint the ids its parent's batch still holds.
    global _event_ids
    _event_ids = iter(())


_EVENT_ID_BATCH = 256
_event_ids: Iterator[str] = iter(())
os.register_at_fork(after_in_child=_forget_event_ids)


def new_connection_id() -> str:
    """A fresh WebSocket connection id."""
    return secrets.token_hex(8)


_dl_lock = threading.Lock()
_dl_last = [0, 0]  # last millisecond, counter within it


def new_dead_letter_id() -> str:
    """A dead-letter id: 32 hex characters that sort by creation time.

    48 bits of milliseconds, a 24-bit counter that keeps ids minted in the same
    millisecond by this process in order, and 56 random bits.
    """
    millis = time.time_ns() // 1_000_000
    with _dl_lock:
        if millis <= _dl_last[0]:
            millis = _dl_last[0]
            _dl_last[1] += 1
            if _dl_last[1] > 0xFFFFFF:
                millis += 1
                _dl_last[1] = 0
        else:
            _dl_last[1] = 0
        _dl_last[0] = millis
        counter = _dl_last[1]
    return f"{millis:012x}{counter:06x}{secrets.token_hex(7)}"


# --------------------------------------------------------------------------- explain


def explain(run_id: Any, thread_id: Any = None) -> str:
    """One human paragraph: what each id is, what the run embeds, and why a pair fails."""
    parts: list[str] = []
    try:
        embedded: str | None = _split_run(run_id)
    except IdError as exc:
        embedded = None
        parts.append(f"The run id is not usable: {exc}.")
    if embedded is not None:
        if is_thread_id(embedded):
            parts.append(f"The run id {run_id!r} is canonical; it belongs to thread {embedded!r}.")
        else:
            parts.append(
                f"The run id {run_id!r} has the shape run_<thread>_<hex8>, but the part it "
                f"embeds, {embedded!r}, is not a canonical thread id "
                "(thread_<operation>_<millis>_<counter>_<hex8>): it was not minted by new_run_id."
            )
    if thread_id is not None:
        if is_thread_id(thread_id):
            parts.append(f"The thread id {thread_id!r} is canonical.")
        else:
            parts.append(f"The thread id is not usable: {InvalidId(thread_id, 'thread_id')}.")
        try:
            validate_id_pair(run_id, thread_id)
            parts.append("The pair is consistent: the run belongs to that thread.")
        except ThreadMismatch as exc:
            parts.append(
                f"The pair is a mismatch: {exc}. An event carrying both would be dead-lettered "
                "as thread_mismatch; mint run ids with new_run_id(thread_id) so they cannot "
                "disagree."
            )
        except IdError:
            parts.append("The pair cannot be checked until both ids are canonical.")
    return " ".join(parts)


def check(run_id: Any, thread_id: Any = None) -> bool:
    """True when ``run_id`` is canonical and, if given, embeds ``thread_id``. Never raises."""
    try:
        if thread_id is None:
            extract_thread_id(run_id)
        else:
            validate_id_pair(run_id, thread_id)
    except IdError:
        return False
    return True


def dead_letter_id_floor(timestamp: float) -> str:
    """The smallest dead-letter id minted at or after ``timestamp`` (unix seconds).

    Dead-letter ids sort by time, so a time filter is a range over ids.
    """
    millis = max(0, min(int(timestamp * 1000), 0xFFFFFFFFFFFF))
    return f"{millis:012x}" + "0" * 20


def dead_letter_id_time(dead_letter_id: str) -> float:
    """The creation time (unix seconds) encoded in a dead-letter id."""
    if not is_dead_letter_id(dead_letter_id):
        raise InvalidId(dead_letter_id, "dead_letter_id", "expected 32 hex characters")
    return int(dead_letter_id[:12], 16) / 1000
