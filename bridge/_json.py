"""Making agent values JSON-safe at the edge, before they reach the router.

Agents hand the bridge whatever their tools return: pydantic models, dataclasses,
enums, datetimes, sets, bytes, exceptions, decimals, UUIDs. :func:`to_jsonable`
turns those into plain JSON values (``dict``/``list``/``str``/``int``/``float``/
``bool``/``None``), so that an ordinary result never costs the agent an event.

A value that has no JSON form (an arbitrary object, a circular reference, nesting
deeper than :data:`MAX_DEPTH`) is not guessed at and does not raise: it is
replaced by a :class:`NotJSON` marker, which is itself not JSON. The router then
rejects the event as ``malformed_event``, and its dead-letter record says where
(the detail names the path, e.g. ``payload.result.dict.rows.list.3``) and what
(the stored event text shows ``<not JSON: mymodule.Row object>``). The marker's
text is built from the type's name only, never from the object's own ``repr``,
which might be huge, secret or raise.

NaN and infinite floats are passed through unchanged for the same reason: the
router rejects them with "Input should be a finite number".
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
from collections import deque
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import pydantic_core
from pydantic import BaseModel

__all__ = ["MAX_DEPTH", "NotJSON", "exception_message", "to_jsonable"]

#: Containers nested deeper than this are not converted (a marker takes their place).
MAX_DEPTH = 200


class NotJSON:
    """Stands in for a value with no JSON form; the router rejects any event holding one.

    ``what`` says which value it was, e.g. ``"mymodule.Row object"`` or
    ``"circular reference to a dict"``.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<not JSON: {self.what}>"


def _type_name(value: Any) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def exception_message(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose message cannot be read>"


def _exception(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": exception_message(exc)}


def to_jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON values. Never raises.

    ========================================  ==========================================
    pydantic model                            ``model_dump(mode="json")``
    dataclass instance                        a dict of its fields (converted)
    enum member                               its value (converted)
    datetime, date, time                      ISO 8601 text (``isoformat()``)
    timedelta                                 seconds (float)
    set, frozenset                            list (sorted when the items allow it)
    tuple, list, deque                        list
    bytes, bytearray, memoryview              base64 text (standard alphabet, padded)
    exception                                 ``{"type": "ValueError", "message": "…"}``
    Decimal                                   text (exact, as pydantic writes it)
    UUID, path, IP address                    text (UUIDs and the other types pydantic
                                              knows are written by pydantic)
    mapping                                   dict; str keys kept, int/float/bool/None
                                              keys written as JSON writes them
    anything else                             a :class:`NotJSON` marker (rejected)
    ========================================  ==========================================
    """
    return _convert(value, 0, set())


def _convert(value: Any, depth: int, path: set[int]) -> Any:
    try:
        return _convert_unguarded(value, depth, path)
    except Exception as exc:  # a __str__, property or items() of the value's own that raised
        return NotJSON(f"{_type_name(value)} that raised {type(exc).__name__} when read")


def _convert_unguarded(value: Any, depth: int, path: set[int]) -> Any:
    # Order matters: bool and IntEnum are ints, StrEnum is a str.
    if isinstance(value, enum.Enum):
        return _convert(value.value, depth, path)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if type(value) is str else str(value)
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal | PurePath):
        return str(value)
    if isinstance(value, BaseException):
        return _exception(value)
    if isinstance(value, BaseModel):
        try:
            return value.model_dump(mode="json")
        except Exception as exc:  # PydanticSerializationError and whatever a field raises
            return NotJSON(f"{_type_name(value)} model ({type(exc).__name__}: {exc})"[:300])
    is_dataclass = dataclasses.is_dataclass(value) and not isinstance(value, type)
    if not (is_dataclass or isinstance(value, Mapping | list | tuple | set | frozenset | deque)):
        return _other(value)
    # A container: guard against cycles and runaway nesting.
    if depth >= MAX_DEPTH:
        return NotJSON(f"{_type_name(value)} nested deeper than {MAX_DEPTH} levels")
    key = id(value)
    if key in path:
        return NotJSON(f"circular reference to a {_type_name(value)}")
    path.add(key)
    try:
        if is_dataclass:
            return {
                field.name: _convert(getattr(value, field.name, None), depth + 1, path)
                for field in dataclasses.fields(value)
            }
        if isinstance(value, Mapping):
            return {
                _key(item_key, depth, path): _convert(item, depth + 1, path)
                for item_key, item in value.items()
            }
        items = [_convert(item, depth + 1, path) for item in value]
        if isinstance(value, set | frozenset):
            try:
                items.sort()
            except TypeError:  # mixed or unorderable items: keep iteration order
                pass
        return items
    finally:
        path.discard(key)


def _other(value: Any) -> Any:
    """UUIDs, IP addresses and the other values pydantic knows how to write; else a marker.

    (The id module is the only one that may import ``uuid``, so UUIDs are left to pydantic.)
    """
    try:
        return pydantic_core.to_jsonable_python(value, bytes_mode="base64")
    except Exception:  # PydanticSerializationError, or whatever the value raises
        return NotJSON(f"{_type_name(value)} object")


def _key(key: Any, depth: int, path: set[int]) -> Any:
    """A mapping key as JSON text, the way ``json.dumps`` writes the scalar ones."""
    converted = _convert(key, depth + 1, path)
    if isinstance(converted, str):
        return converted
    if converted is None:
        return "null"
    if isinstance(converted, bool):
        return "true" if converted else "false"
    if isinstance(converted, int | float):
        return str(converted)
    return NotJSON(f"mapping key of type {_type_name(key)}")
