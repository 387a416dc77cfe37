"""The event model: what agents publish and what browsers receive.

Inbound events are pydantic models discriminated on ``type``, validated once at
the edge by a module-level ``TypeAdapter``. Stage 1 of the pipeline (this module)
checks shape only: ids are read as plain strings here and judged by
:mod:`router.ids` at stage 2.

The outbound frame is serialised once per accepted event and the same ``str`` is
handed to every recipient. Because the frame carries the thread's ``seq``, which
is known only when the backend commits the event, it is prepared as two halves
(:class:`PreparedFrame`) and joined around the number.
"""

from __future__ import annotations

import dataclasses
import json
import json.encoder
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple, TypeAlias, cast

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)

from .ids import is_event_id, new_event_id

__all__ = [
    "CRITICAL_TYPES",
    "EVENT_TYPES",
    "FINAL_TYPES",
    "AgentCompleted",
    "AgentError",
    "AgentStarted",
    "AgentThinking",
    "BaseEvent",
    "Custom",
    "InboundEvent",
    "MalformedEvent",
    "OutboundFrame",
    "PreparedFrame",
    "ProgressUpdate",
    "ToolCompleted",
    "ToolExecuting",
    "format_timestamp",
    "inbound_schema",
    "outbound_schema",
    "parse_event",
    "prepare_frame",
    "read_event",
]

EVENT_TYPES = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
    "agent_error",
    "progress_update",
    "custom",
)
#: Never silently dropped: the five of the mission plus agent_error.
CRITICAL_TYPES = frozenset(
    {
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
        "agent_error",
    }
)
#: A run's last event; an owner with no live connection gets a no_recipient record.
FINAL_TYPES = frozenset({"agent_completed", "agent_error"})

DEFAULT_MAX_PAYLOAD_BYTES = 65536
# Room for the envelope (ids, names, timestamp) on top of the payload when the
# whole event arrives as bytes or text.
_ENVELOPE_ALLOWANCE = 4096

# NaN and Infinity are not JSON: a frame carrying them would not parse in a browser.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


# Containers nested deeper than this are left to pydantic (which has its own limit).
_MAX_PLAIN_DEPTH = 64


def _plain_json(value: Any, depth: int = 0) -> bool:
    """True when ``value`` is JSON made only of exact builtin types with finite
    floats: what a ``JsonValue`` field keeps as it is."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return bool(value - value == 0.0)  # False for inf and nan
    if depth >= _MAX_PLAIN_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain_json(item, depth + 1):
                return False
        return True
    if kind is list:
        for item in value:
            if not _plain_json(item, depth + 1):
                return False
        return True
    return False


def _keep_plain_json(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # JsonValue's validator calls back into Python for every value it meets (to
    # pick the union member); plain JSON, the usual payload, passes unchanged in
    # one walk. Anything else gets JsonValue's own validation and errors.
    if _plain_json(value):
        return value
    return handler(value)


def _keep_plain_object(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    if type(value) is dict and _plain_json(value):
        return value
    return handler(value)


#: ``JsonValue``, validated the same way, faster for plain JSON.
_Json = Annotated[JsonValue, WrapValidator(_keep_plain_json)]
_JsonObject = Annotated[dict[str, JsonValue], WrapValidator(_keep_plain_object)]


class _Payload(BaseModel):
    model_config = _STRICT


class AgentStartedPayload(_Payload):
    context: _Json = None


class AgentThinkingPayload(_Payload):
    reasoning: str
    step_number: int | None = Field(default=None, ge=0)
    progress_percentage: float | None = Field(default=None, ge=0, le=100)


class ToolExecutingPayload(_Payload):
    tool_name: str = Field(min_length=1, max_length=256)
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=256)
    parameters: _Json = None


class ToolCompletedPayload(_Payload):
    tool_name: str = Field(min_length=1, max_length=256)
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=256)
    result: _Json = None
    execution_time_ms: float | None = Field(default=None, ge=0)
    success: bool | None = None


class AgentCompletedPayload(_Payload):
    result: _Json = None
    execution_time_ms: float | None = Field(default=None, ge=0)


class AgentErrorPayload(_Payload):
    error: str
    error_context: _Json = None


class ProgressUpdatePayload(_Payload):
    progress: _JsonObject


class CustomPayload(_Payload):
    notification_type: str = Field(min_length=1, max_length=128)
    data: _Json = None


class BaseEvent(BaseModel):
    model_config = _STRICT

    # Ids are plain values at stage 1; the id module judges them at stage 2, so a
    # null or numeric run_id is invalid_id rather than malformed_event.
    run_id: Any = Field(description="Canonical run id (run_<thread_id>_<hex8>).")
    thread_id: Any = Field(default=None, description="Optional cross-check of the run's thread.")
    user_id: Any = Field(default=None, description="Optional; must be the thread's owner.")
    agent_name: str = Field(min_length=1, max_length=128)
    event_id: str | None = Field(default=None, description="Idempotency key; minted if absent.")
    timestamp: datetime | None = None

    @field_validator("run_id", "thread_id", "user_id")
    @classmethod
    def _json_only(cls, value: Any) -> Any:
        # Judged as ids at stage 2, but like the rest of the event they must be JSON.
        if value is None or isinstance(value, str):
            return value  # the usual case; json.dumps never fails for these
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise ValueError(f"must be a JSON value, got {type(value).__name__}") from None
        return value

    @field_validator("agent_name")
    @classmethod
    def _encodable(cls, value: str) -> str:
        # Python strs may hold lone surrogates, which no JSON frame can carry.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("agent_name is not valid Unicode text") from None
        return value

    @field_validator("event_id")
    @classmethod
    def _check_event_id(cls, value: str | None) -> str | None:
        if value is not None and not is_event_id(value):
            raise ValueError("event_id must be 1..128 characters of [A-Za-z0-9_.:-]")
        return value

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None:
            try:
                value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            except OverflowError:
                raise ValueError("timestamp is out of range once converted to UTC") from None
        return value


class AgentStarted(BaseEvent):
    type: Literal["agent_started"]
    payload: AgentStartedPayload = Field(default_factory=AgentStartedPayload)


class AgentThinking(BaseEvent):
    type: Literal["agent_thinking"]
    payload: AgentThinkingPayload


class ToolExecuting(BaseEvent):
    type: Literal["tool_executing"]
    payload: ToolExecutingPayload


class ToolCompleted(BaseEvent):
    type: Literal["tool_completed"]
    payload: ToolCompletedPayload


class AgentCompleted(BaseEvent):
    type: Literal["agent_completed"]
    payload: AgentCompletedPayload = Field(default_factory=AgentCompletedPayload)


class AgentError(BaseEvent):
    type: Literal["agent_error"]
    payload: AgentErrorPayload


class ProgressUpdate(BaseEvent):
    type: Literal["progress_update"]
    payload: ProgressUpdatePayload


class Custom(BaseEvent):
    type: Literal["custom"]
    payload: CustomPayload


InboundEvent: TypeAlias = Annotated[
    AgentStarted
    | AgentThinking
    | ToolExecuting
    | ToolCompleted
    | AgentCompleted
    | AgentError
    | ProgressUpdate
    | Custom,
    Field(discriminator="type"),
]
_EVENT_MODELS = (
    AgentStarted,
    AgentThinking,
    ToolExecuting,
    ToolCompleted,
    AgentCompleted,
    AgentError,
    ProgressUpdate,
    Custom,
)
_adapter: TypeAdapter[InboundEvent] = TypeAdapter(InboundEvent)


class OutboundFrame(BaseModel):
    """The shape of the frame a browser receives (for the schema and for clients)."""

    model_config = _STRICT

    type: Literal[
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
        "agent_error",
        "progress_update",
        "custom",
    ]
    event_id: str
    seq: int = Field(ge=1)
    thread_id: str
    run_id: str
    agent_name: str
    timestamp: str = Field(description="UTC, ISO 8601 with milliseconds and 'Z'.")
    payload: dict[str, JsonValue]


@dataclasses.dataclass(slots=True, frozen=True)
class MalformedEvent:
    """Stage 1 failed. ``original`` is the event as received (parsed JSON when it
    was JSON, else the text) and ``raw`` says which."""

    detail: str
    original: Any
    raw: bool
    event_id: str


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "event"
        problems.append(f"{where}: {item['msg']}")
    more = error.error_count() - len(problems)
    if more > 0:
        problems.append(f"and {more} more")
    return "; ".join(problems)


def _read_event_id(data: Any) -> str:
    candidate = data.get("event_id") if isinstance(data, dict) else None
    if isinstance(candidate, str) and is_event_id(candidate):
        return candidate
    return new_event_id()


def parse_event(
    data: Any, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> BaseEvent | MalformedEvent:
    """Stage 1: read one event from a model, a dict, ``bytes`` or ``str``.

    Never raises for bad input; returns :class:`MalformedEvent` with a sentence
    saying what is wrong.
    """
    read = read_event(data, max_payload_bytes=max_payload_bytes)
    return read if isinstance(read, MalformedEvent) else read[0]


def read_event(
    data: Any, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> tuple[BaseEvent, bytes] | MalformedEvent:
    """:func:`parse_event`, also returning the payload as JSON.

    The size check needs the payload serialised; the frame is made of the same
    bytes (pass them to :func:`prepare_frame`), so it is serialised once.
    """
    # ``type(data) is not dict``: the usual input, a dict, skips the isinstance checks
    # (the models' metaclass makes each one slow).
    if type(data) is not dict and isinstance(data, _EVENT_MODELS):
        original: Any = data.model_dump(mode="json", exclude_unset=True)
        event: BaseEvent | None = data
        try:
            # A model built in code may hold values no JSON can carry.
            event = _adapter.validate_python(original)
        except (ValidationError, ValueError, TypeError) as exc:
            return MalformedEvent(str(exc)[:500], original, False, _read_event_id(original))
    else:
        if type(data) is not dict and isinstance(data, bytes | bytearray | memoryview | str):
            text_limit = max_payload_bytes + _ENVELOPE_ALLOWANCE
            if len(data) > text_limit:
                return MalformedEvent(
                    f"event is {len(data)} bytes, over the limit of {text_limit}",
                    _as_text(data),
                    True,
                    new_event_id(),
                )
            try:
                # from_json takes str, bytes and bytearray, not memoryview.
                original = pydantic_core.from_json(
                    bytes(data) if isinstance(data, memoryview) else data
                )
            except (ValueError, TypeError) as exc:
                # TypeError: a str holding a lone surrogate, which no UTF-8 can carry.
                return MalformedEvent(
                    _why_not_json(data, exc), _as_text(data), True, new_event_id()
                )
        else:
            original = data
        if not isinstance(original, dict):
            kept, raw = _jsonable_or_text(original)
            return MalformedEvent(
                f"an event is a JSON object, not {type(original).__name__}",
                kept,
                raw,
                new_event_id(),
            )
        try:
            # The adapter's validator itself: TypeAdapter.validate_python only adds
            # argument handling around this same call.
            event = cast(InboundEvent, _adapter.validator.validate_python(original))
        except ValidationError as exc:
            kept, raw = _jsonable_or_text(original)
            return MalformedEvent(_describe(exc), kept, raw, _read_event_id(original))
    assert event is not None
    try:
        payload = event.payload
        body: bytes = payload.__pydantic_serializer__.to_json(payload, exclude_unset=True)
    except ValueError as exc:  # PydanticSerializationError: a lone surrogate in a str
        return MalformedEvent(
            f"payload cannot be written as JSON: {exc}"[:500],
            original,
            False,
            _read_event_id(original),
        )
    if len(body) > max_payload_bytes:
        return MalformedEvent(
            f"payload is {len(body)} bytes, over the limit of {max_payload_bytes}",
            original,
            False,
            _read_event_id(original),
        )
    return event, body


def _as_text(data: bytes | bytearray | memoryview | str) -> str:
    """Input that is not JSON, as text that can be stored (invalid UTF-8 replaced)."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            return data.encode("utf-8", "replace").decode("utf-8")
        return data
    return bytes(data).decode("utf-8", "replace")


def _why_not_json(data: bytes | bytearray | memoryview | str, error: Exception) -> str:
    try:
        if isinstance(data, str):
            data.encode("utf-8")
        else:
            bytes(data).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError) as bad:
        where = "character" if isinstance(data, str) else "byte"
        return f"not valid UTF-8: {bad.reason} at {where} {bad.start}"
    return f"not valid JSON: {error}"


def _jsonable_or_text(value: Any) -> tuple[Any, bool]:
    """Keep a value as JSON when it is JSON; otherwise keep its text (raw=True)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:65536], True
    return value, False


def format_timestamp(moment: datetime) -> str:
    """``2026-11-21T23:59:00.123Z``: UTC, milliseconds, 'Z'.

    A naive ``moment`` is taken as UTC, as inbound timestamps are. Raises
    ``OverflowError`` when converting it to UTC leaves the datetime range.
    """
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    # isoformat, unlike strftime("%Y"), pads years before 1000 to four digits.
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


class PreparedFrame(NamedTuple):
    """An outbound frame serialised once, waiting only for its ``seq``.

    (A NamedTuple: one is made per accepted event, at a fraction of a frozen
    dataclass's cost.)"""

    head: str
    tail: str

    def with_seq(self, seq: int) -> str:
        return f"{self.head}{seq}{self.tail}"


#: A str (or str subclass, such as the id types) as a JSON string literal, quotes
#: included: the C encoder of the json module; non-ASCII kept as is.
_quote: Callable[[str], str] = json.encoder.encode_basestring


def prepare_frame(
    event: BaseEvent,
    *,
    event_id: str,
    thread_id: str,
    timestamp: str,
    payload_json: bytes | None = None,
) -> PreparedFrame:
    """Serialise an accepted event's frame, apart from its ``seq``.

    ``payload_json`` is the payload as :func:`read_event` serialised it (it is
    serialised here when not given).
    """
    # Hot path: the frame is assembled from JSON string literals, in the key order
    # of the outbound schema, with no intermediate dict.
    if payload_json is None:
        payload = event.payload  # type: ignore[attr-defined]
        payload_json = payload.__pydantic_serializer__.to_json(payload, exclude_unset=True)
    return PreparedFrame(
        head=f'{{"type":{_quote(event.type)},"event_id":{_quote(event_id)},"seq":',  # type: ignore[attr-defined]
        tail=(
            f',"thread_id":{_quote(thread_id)},"run_id":{_quote(event.run_id)}'
            f',"agent_name":{_quote(event.agent_name)},"timestamp":{_quote(timestamp)}'
            f',"payload":{payload_json.decode()}}}'
        ),
    )


def inbound_schema() -> dict[str, Any]:
    """JSON Schema of an inbound event."""
    return _adapter.json_schema()


def outbound_schema() -> dict[str, Any]:
    """JSON Schema of an outbound event frame."""
    return OutboundFrame.model_json_schema()


def now_utc() -> datetime:
    return datetime.now(UTC)
