"""router.events: stage 1 (shape) of the pipeline, the outbound frame and the schemas."""

from __future__ import annotations

import json
import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pydantic_core
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ConfigDict, JsonValue, TypeAdapter, ValidationError

from router.events import (
    EVENT_TYPES,
    BaseEvent,
    CustomPayload,
    MalformedEvent,
    OutboundFrame,
    ProgressUpdatePayload,
    format_timestamp,
    inbound_schema,
    outbound_schema,
    parse_event,
    prepare_frame,
)
from router.ids import is_event_id, is_run_id, new_run_id, new_thread_id

THREAD = new_thread_id("events_test")
RUN = new_run_id(THREAD)
FRAME_KEYS = [
    "type",
    "event_id",
    "seq",
    "thread_id",
    "run_id",
    "agent_name",
    "timestamp",
    "payload",
]
TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")

# One payload per type of DESIGN §2, every field of the table set.
FULL_PAYLOADS: dict[str, dict[str, Any]] = {
    "agent_started": {"context": {"user_request": "plan a trip", "tags": ["a", 1, None]}},
    "agent_thinking": {
        "reasoning": "Looking at the map",
        "step_number": 2,
        "progress_percentage": 40.5,
    },
    "tool_executing": {"tool_name": "search", "tool_call_id": "call_1", "parameters": {"q": "x"}},
    "tool_completed": {
        "tool_name": "search",
        "tool_call_id": "call_1",
        "result": {"hits": [1, 2.5, "three", True, None]},
        "execution_time_ms": 12.5,
        "success": True,
    },
    "agent_completed": {"result": "done", "execution_time_ms": 1500},
    "agent_error": {"error": "tool timed out", "error_context": {"tool": "search"}},
    "progress_update": {"progress": {"done": 3, "total": 10, "label": "Reading"}},
    "custom": {"notification_type": "quota_warning", "data": {"left": 3}},
}
# Only what each type requires.
MINIMAL_PAYLOADS: dict[str, dict[str, Any]] = {
    "agent_started": {},
    "agent_thinking": {"reasoning": ""},
    "tool_executing": {"tool_name": "search"},
    "tool_completed": {"tool_name": "search"},
    "agent_completed": {},
    "agent_error": {"error": "boom"},
    "progress_update": {"progress": {}},
    "custom": {"notification_type": "n"},
}


def make(event_type: str = "agent_thinking", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": event_type,
        "run_id": RUN,
        "agent_name": "planner",
        "payload": FULL_PAYLOADS[event_type],
    }
    event.update(fields)
    return event


def as_forms(event: Any) -> Iterator[tuple[str, Any]]:
    text = json.dumps(event)
    yield "dict", event
    yield "str", text
    yield "bytes", text.encode()
    yield "bytearray", bytearray(text.encode())
    yield "memoryview", memoryview(text.encode())


def accepted(data: Any, **kwargs: Any) -> BaseEvent:
    result = parse_event(data, **kwargs)
    assert isinstance(result, BaseEvent), result
    return result


def malformed(data: Any, **kwargs: Any) -> MalformedEvent:
    result = parse_event(data, **kwargs)
    assert isinstance(result, MalformedEvent), result
    assert result.detail
    assert is_event_id(result.event_id)
    return result


def frame_of(event: BaseEvent, seq: int = 1, event_id: str = "evt-1") -> dict[str, Any]:
    prepared = prepare_frame(
        event, event_id=event_id, thread_id=THREAD, timestamp="2026-11-21T23:59:00.123Z"
    )
    text = prepared.with_seq(seq)
    OutboundFrame.model_validate_json(text)
    decoded: dict[str, Any] = json.loads(text)
    return decoded


# --------------------------------------------------------------------------- round trips


def test_design_lists_every_type() -> None:
    assert set(EVENT_TYPES) == set(FULL_PAYLOADS) == set(MINIMAL_PAYLOADS)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@pytest.mark.parametrize("payloads", [FULL_PAYLOADS, MINIMAL_PAYLOADS], ids=["full", "minimal"])
def test_every_type_round_trips_from_every_input_form(
    event_type: str, payloads: dict[str, dict[str, Any]]
) -> None:
    source = make(event_type, payload=payloads[event_type], user_id="alice", thread_id=THREAD)
    for form, data in as_forms(source):
        event = accepted(data)
        assert event.type == event_type, form  # type: ignore[attr-defined]
        assert event.run_id == RUN
        assert event.thread_id == THREAD
        assert event.user_id == "alice"
        assert event.agent_name == "planner"
        frame = frame_of(event, seq=17)
        assert list(frame) == FRAME_KEYS, form
        assert "user_id" not in frame
        assert frame["type"] == event_type
        assert frame["seq"] == 17
        assert frame["event_id"] == "evt-1"
        assert frame["thread_id"] == THREAD
        assert frame["run_id"] == RUN
        assert frame["agent_name"] == "planner"
        assert frame["timestamp"] == "2026-11-21T23:59:00.123Z"
        assert frame["payload"] == payloads[event_type], form


@pytest.mark.parametrize("event_type", ["agent_started", "agent_completed"])
def test_payload_may_be_left_out_where_nothing_is_required(event_type: str) -> None:
    source = make(event_type)
    del source["payload"]
    assert frame_of(accepted(source))["payload"] == {}


def test_a_model_built_in_code_is_accepted() -> None:
    event = accepted(make("tool_completed"))
    again = accepted(event)
    assert frame_of(again) == frame_of(event)


def test_one_prepared_frame_serves_every_seq() -> None:
    prepared = prepare_frame(
        accepted(make("custom")), event_id="e", thread_id=THREAD, timestamp="t"
    )
    first, second = prepared.with_seq(1), prepared.with_seq(1_000_000_000)
    assert json.loads(first)["seq"] == 1
    assert json.loads(second)["seq"] == 1_000_000_000
    assert first.replace('"seq":1,', '"seq":1000000000,') == second
    assert prepared.with_seq(1) == first


def test_unicode_and_escapes_survive_the_frame() -> None:
    payload = {"reasoning": 'quote " backslash \\ newline \n emoji 🚀 nul \x00 rtl \u202e'}
    frame = frame_of(accepted(make(payload=payload)))
    assert frame["payload"] == payload


def test_a_given_event_id_is_kept() -> None:
    for form, data in as_forms(make(event_id="evt-42.retry:1")):
        assert accepted(data).event_id == "evt-42.retry:1", form
    assert accepted(make()).event_id is None
    kept = malformed(make(event_id="evt-42", unknown=1))
    assert kept.event_id == "evt-42"


# --------------------------------------------------------------------------- ids are judged later


@pytest.mark.parametrize("run_id", [None, 123, "", "registry", [], {"a": 1}, 1.5])
def test_a_bad_run_id_is_not_malformed_at_stage_one(run_id: Any) -> None:
    for form, data in as_forms(make(run_id=run_id)):
        assert accepted(data).run_id == run_id, form


@pytest.mark.parametrize("field", ["thread_id", "user_id"])
@pytest.mark.parametrize("value", [None, 7, "", "registry"])
def test_bad_optional_ids_are_not_malformed_at_stage_one(field: str, value: Any) -> None:
    assert getattr(accepted(make(**{field: value})), field) == value


# --------------------------------------------------------------------------- malformed


def _without(key: str) -> dict[str, Any]:
    event = make()
    del event[key]
    return event


@pytest.mark.parametrize(
    ("event", "words"),
    [
        (_without("run_id"), ["run_id", "required"]),
        (_without("agent_name"), ["agent_name", "required"]),
        (_without("type"), ["type"]),
        (_without("payload"), ["payload", "required"]),
        (make(type="nope"), ["'nope'", "agent_thinking"]),
        (make(type=None), ["type"]),
        (make("tool_executing", payload={"name": "search"}), ["tool_name", "required", "name"]),
        (make(payload={"reasoning": 5}), ["reasoning", "string"]),
        (make(payload={"reasoning": "x", "mood": "ok"}), ["mood", "Extra"]),
        (make(payload={"reasoning": "x", "progress_percentage": 101}), ["progress_percentage"]),
        (make(payload="reasoning"), ["payload"]),
        (make(payload=None), ["payload"]),
        (make("progress_update", payload={"progress": [1]}), ["progress"]),
        (make(extra=1), ["extra", "Extra"]),
        (make(seq=4), ["seq", "Extra"]),
        (make(agent_name=""), ["agent_name"]),
        (make(agent_name="a" * 129), ["agent_name"]),
        (make(agent_name=None), ["agent_name"]),
        (make(event_id="has space"), ["event_id"]),
        (make(event_id=""), ["event_id"]),
        (make(timestamp="yesterday"), ["timestamp"]),
    ],
    ids=lambda value: "" if isinstance(value, list) else None,
)
def test_shape_errors_are_malformed_with_a_clear_detail(
    event: dict[str, Any], words: list[str]
) -> None:
    for form, data in as_forms(event):
        result = malformed(data)
        for word in words:
            assert word in result.detail, (form, result.detail)
        assert result.raw is False
        assert result.original == json.loads(json.dumps(event))


@pytest.mark.parametrize(
    "timestamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", 1e20]
)
def test_timestamps_out_of_range_are_malformed_not_raised(timestamp: Any) -> None:
    assert "timestamp" in malformed(make(timestamp=timestamp)).detail


def test_payload_over_the_limit_is_malformed() -> None:
    empty = len(json.dumps({"notification_type": "n", "data": ""}, separators=(",", ":")))
    at_limit = make("custom", payload={"notification_type": "n", "data": "x" * (100 - empty)})
    over = make("custom", payload={"notification_type": "n", "data": "x" * (101 - empty)})
    for _form, data in as_forms(at_limit):
        accepted(data, max_payload_bytes=100)
    for form, data in as_forms(over):
        result = malformed(data, max_payload_bytes=100)
        assert "101 bytes" in result.detail and "limit of 100" in result.detail, form


def test_payload_limit_counts_bytes_not_characters() -> None:
    empty = len(json.dumps({"reasoning": ""}, separators=(",", ":")))
    # 'é' is two bytes in UTF-8.
    result = malformed(make(payload={"reasoning": "é" * (100 - empty)}), max_payload_bytes=100)
    assert "over the limit of 100" in result.detail


def test_default_payload_limit_is_64_kib() -> None:
    big = make("custom", payload={"notification_type": "n", "data": "x" * 65_536})
    for form, data in as_forms(big):
        assert "65536" in malformed(data).detail, form
    accepted(make("custom", payload={"notification_type": "n", "data": "x" * 65_000}))


def test_huge_text_is_refused_before_parsing_and_kept_as_text() -> None:
    text = '{"type": "' + "x" * 200_000
    result = malformed(text)
    assert "over the limit" in result.detail
    assert result.raw is True
    assert result.original == text


class Opaque:
    pass


@pytest.mark.parametrize(
    "event",
    [
        make("custom", payload={"notification_type": "n", "data": {1, 2}}),
        make("custom", payload={"notification_type": "n", "data": object()}),
        make("custom", payload={"notification_type": "n", "data": Opaque()}),
        make("custom", payload={"notification_type": "n", "data": b"bytes"}),
        make("custom", payload={"notification_type": "n", "data": float("nan")}),
        make("tool_completed", payload={"tool_name": "t", "execution_time_ms": float("inf")}),
        make("tool_completed", payload={"tool_name": "t", "result": [float("-inf")]}),
        make(payload={"reasoning": {1, 2}}),
        make(run_id={1, 2}),
        make(run_id=object()),
        make(thread_id=object()),
        make(user_id=Opaque()),
        make(run_id=float("nan")),
    ],
    ids=repr,
)
def test_values_that_are_not_json_are_malformed(event: dict[str, Any]) -> None:
    result = malformed(event)
    assert result.raw is True
    assert isinstance(result.original, str)
    assert "planner" in result.original


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "custom", "run_id": "r", "agent_name": "a", '
        '"payload": {"notification_type": "n", "data": NaN}}',
        '{"type": "agent_completed", "run_id": "r", "agent_name": "a", '
        '"payload": {"execution_time_ms": Infinity}}',
    ],
)
def test_non_finite_numbers_in_json_text_are_malformed(text: str) -> None:
    for data in (text, text.encode()):
        result = malformed(data)
        assert "finite" in result.detail


@pytest.mark.parametrize(
    "data",
    [b"not json", "not json", b"", "", b"{", "{'single': 'quotes'}", b'{"a": 1} trailing'],
)
def test_text_that_is_not_json_is_kept_raw(data: bytes | str) -> None:
    result = malformed(data)
    assert result.detail.startswith("not valid JSON")
    assert result.raw is True
    assert result.original == (data if isinstance(data, str) else data.decode())


@pytest.mark.parametrize(
    "data",
    [b"\xff\xfe", b"\xc3\x28", b'{"type": "custom", "agent_name": "\xed\xa0\x80"}', b"\x80"],
)
def test_invalid_utf8_is_malformed_and_kept_as_text(data: bytes) -> None:
    result = malformed(data)
    assert result.detail.startswith("not valid UTF-8")
    assert result.raw is True
    assert result.original == data.decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"[1, 2]", "list"),
        ("[" + json.dumps(make()) + "]", "list"),
        ("42", "int"),
        ("null", "NoneType"),
        ('"text"', "str"),
        ([make()], "list"),
        (None, "NoneType"),
        (7, "int"),
    ],
)
def test_anything_but_an_object_is_malformed(data: Any, kind: str) -> None:
    result = malformed(data)
    assert f"JSON object, not {kind}" in result.detail
    assert result.raw is False


@pytest.mark.parametrize(
    "event",
    [
        make("custom", payload={"notification_type": "n", "data": {1: "int key"}}),
        make(payload={"reasoning": "lone \udfff surrogate"}),
        make("custom", payload={"notification_type": "n", "data": {"\ud800": 1}}),
        make(agent_name="a\udfffb"),
    ],
    ids=repr,
)
def test_python_values_no_json_text_can_carry_are_malformed(event: dict[str, Any]) -> None:
    result = malformed(event)
    json.dumps(result.original)


def test_a_str_with_a_lone_surrogate_is_not_valid_utf8() -> None:
    result = malformed('{"type": "\ud800"}')
    assert result.detail.startswith("not valid UTF-8")
    assert result.raw is True
    result.original.encode("utf-8")


def test_a_python_value_that_is_not_json_is_kept_as_text() -> None:
    result = malformed({1, 2})
    assert result.raw is True
    assert result.original == "{1, 2}"


# --------------------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    event = make(draw(st.sampled_from(EVENT_TYPES)))
    keys = [*event, "payload.x", "thread_id", "user_id", "event_id", "timestamp", "zzz"]
    for key in draw(st.lists(st.sampled_from(keys), max_size=3)):
        if key == "payload.x":
            payload = event.get("payload")
            if isinstance(payload, dict):
                event["payload"] = {**payload, "x": draw(json_values)}
        elif draw(st.booleans()):
            event.pop(key, None)
        else:
            event[key] = draw(json_values)
    return event


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(mutated_events(), json_values, st.binary(), st.text()))
@example(data=b"\x00")
@example(data="\ud800")
@example(data=b"[" * 10_000)
@example(data='{"a":' * 5_000)
def test_parse_event_never_raises(data: Any) -> None:
    result = parse_event(data)
    if isinstance(result, MalformedEvent):
        assert result.detail and is_event_id(result.event_id)
        if not result.raw:
            json.dumps(result.original, allow_nan=False)
    elif is_run_id(result.run_id):  # stage 2 would refuse the others
        frame = frame_of(result)
        assert list(frame) == FRAME_KEYS


@settings(max_examples=200, deadline=None)
@given(event=mutated_events())
def test_every_input_form_gives_the_same_answer(event: dict[str, Any]) -> None:
    results = [parse_event(data) for _, data in as_forms(event)]
    if isinstance(results[0], MalformedEvent):
        assert all(isinstance(r, MalformedEvent) for r in results)
        assert len({r.detail for r in results if isinstance(r, MalformedEvent)}) == 1
    else:
        events = [r for r in results if isinstance(r, BaseEvent)]
        assert len(events) == len(results)
        dumps = {e.model_dump_json() for e in events}
        assert len(dumps) == 1


# --------------------------------------------------------------------------- timestamps


def test_timestamp_format() -> None:
    moment = datetime(2026, 11, 21, 23, 59, 0, 123456, tzinfo=UTC)
    assert format_timestamp(moment) == "2026-11-21T23:59:00.123Z"
    assert format_timestamp(moment.replace(microsecond=0)) == "2026-11-21T23:59:00.000Z"
    paris = moment.astimezone(timezone(timedelta(hours=1)))
    assert format_timestamp(paris) == "2026-11-21T23:59:00.123Z"
    assert format_timestamp(datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0005-01-02T03:04:05.000Z"


def test_a_naive_timestamp_is_taken_as_utc_whatever_the_local_zone() -> None:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        naive = datetime(2026, 11, 21, 23, 59, 0, 123000)
        assert format_timestamp(naive) == "2026-11-21T23:59:00.123Z"
        event = accepted(make(timestamp="2026-11-21T23:59:00.123"))
        assert event.timestamp is not None
        assert format_timestamp(event.timestamp) == "2026-11-21T23:59:00.123Z"
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@pytest.mark.parametrize(
    "given_timestamp",
    [
        "2026-11-21T23:59:00.123Z",
        "2026-11-22T00:59:00.123+01:00",
        "2026-11-21T23:59:00.123456",
        "2026-11-21T18:59:00.123-05:00",
    ],
)
def test_a_given_timestamp_is_kept_in_utc(given_timestamp: str) -> None:
    for form, data in as_forms(make(timestamp=given_timestamp)):
        event = accepted(data)
        assert event.timestamp is not None, form
        assert event.timestamp.tzinfo is not None
        assert event.timestamp.utcoffset() == timedelta(0)
        assert format_timestamp(event.timestamp) == "2026-11-21T23:59:00.123Z"


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    )
)
def test_formatted_timestamps_parse_back_to_the_millisecond(moment: datetime) -> None:
    text = format_timestamp(moment)
    assert TIMESTAMP_RE.fullmatch(text)
    back = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert back == moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# --------------------------------------------------------------------------- schemas


def test_schemas_are_json_schema_dicts() -> None:
    for schema in (inbound_schema(), outbound_schema()):
        assert isinstance(schema, dict)
        json.dumps(schema)
    inbound_text = json.dumps(inbound_schema())
    for event_type in EVENT_TYPES:
        assert event_type in inbound_text
    outbound = outbound_schema()
    assert outbound["type"] == "object"
    assert set(outbound["properties"]) == set(FRAME_KEYS)
    assert set(outbound["required"]) == set(FRAME_KEYS)
    assert outbound.get("additionalProperties") is False


def test_schemas_validate_real_events_and_frames() -> None:
    import jsonschema

    inbound = jsonschema.Draft202012Validator(inbound_schema())
    outbound = jsonschema.Draft202012Validator(outbound_schema())
    jsonschema.Draft202012Validator.check_schema(inbound_schema())
    jsonschema.Draft202012Validator.check_schema(outbound_schema())
    for event_type in EVENT_TYPES:
        for payloads in (FULL_PAYLOADS, MINIMAL_PAYLOADS):
            event = make(event_type, payload=payloads[event_type], event_id="e1")
            inbound.validate(event)
            outbound.validate(frame_of(accepted(event)))
    assert not inbound.is_valid(make(type="nope"))
    assert not inbound.is_valid(_without("agent_name"))
    assert not inbound.is_valid(make(extra=1))
    assert not outbound.is_valid({**frame_of(accepted(make())), "seq": 0})
    assert not outbound.is_valid({**frame_of(accepted(make())), "user_id": "alice"})


# Values a JsonValue field may meet: JSON, and what is not quite JSON (tuples, sets,
# non-finite floats, non-str keys, bytes, str and int subclasses, deep nesting).
class _Text(str):
    pass


class _Count(int):
    pass


_near_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=4)
    | st.builds(_Text, st.text(max_size=4))
    | st.builds(_Count, st.integers())
    | st.just("\ud800"),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
        | st.dictionaries(st.integers() | st.text(max_size=2), inner, max_size=3)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=12,
)
# As the payload models are configured: no inf or nan.
_reference_json: TypeAdapter[Any] = TypeAdapter(JsonValue, config=ConfigDict(allow_inf_nan=False))
_reference_object: TypeAdapter[Any] = TypeAdapter(
    dict[str, JsonValue], config=ConfigDict(allow_inf_nan=False)
)


def _outcome(validate: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", validate(value)
    except ValidationError as exc:
        return "error", [(e["type"], e["loc"]) for e in exc.errors(include_url=False)]


@settings(max_examples=400, deadline=None)
@given(value=_near_json)
def test_json_fields_accept_and_reject_exactly_what_jsonvalue_does(value: Any) -> None:
    # The payload fields take plain JSON as it is (a faster path) and hand all else
    # to JsonValue: the outcome must be JsonValue's, value or error, either way.
    want_kind, want = _outcome(_reference_json.validate_python, value)
    got_kind, got = _outcome(lambda v: CustomPayload(notification_type="n", data=v).data, value)
    assert got_kind == want_kind
    if want_kind == "ok":
        assert got == want
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    else:
        assert [kind for kind, _ in got] == [kind for kind, _ in want]
    object_kind, _ = _outcome(lambda v: ProgressUpdatePayload(progress=v).progress, value)
    assert object_kind == _outcome(_reference_object.validate_python, value)[0]
    # The payload as serialised for the frame is the same too (or fails alike: a
    # lone surrogate is JSON to pydantic but cannot be written as UTF-8).
    if want_kind == "ok":
        payload = CustomPayload(notification_type="n", data=value)
        assert _written(
            lambda: payload.__pydantic_serializer__.to_json(payload, exclude_unset=True)
        ) == _written(lambda: pydantic_core.to_json({"notification_type": "n", "data": want}))


def _written(serialise: Any) -> bytes | str:
    try:
        return bytes(serialise())
    except ValueError as exc:
        return type(exc).__name__


class _Ratio(float):
    pass


def _nested(depth: int) -> Any:
    value: Any = 1
    for n in range(depth):
        value = [value] if n % 2 else {"k": value}
    return value


def _cycle() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "value",
    [
        _nested(63),
        _nested(64),
        _nested(65),
        _nested(300),
        OrderedDict(a=1, b=[2.5]),
        {"r": _Ratio(0.5)},
        [_Ratio(1.5)],
        _cycle(),
    ],
    ids=[
        "depth63",
        "depth64",
        "depth65",
        "depth300",
        "ordereddict",
        "float-sub",
        "list-sub",
        "cycle",
    ],
)
def test_json_fields_match_jsonvalue_at_the_edges(value: Any) -> None:
    want = _outcome(_reference_json.validate_python, value)
    got = _outcome(lambda v: CustomPayload(notification_type="n", data=v).data, value)
    assert got[0] == want[0]
    if want[0] == "ok":
        assert got[1] == want[1]
    else:
        assert [kind for kind, _ in got[1]] == [kind for kind, _ in want[1]]
