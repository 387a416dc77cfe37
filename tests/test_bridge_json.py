"""Payload values are made JSON-safe at the edge (bridge.to_jsonable); values with no
JSON form are rejected by the router as malformed_event, never raised at the agent."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import ipaddress
import json
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from bridge import AgentWebSocketBridge, NotJSON, to_jsonable
from bridge._json import MAX_DEPTH
from router import EventRouter, new_run_id, new_thread_id


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Mode(enum.StrEnum):
    FAST = "fast"


class Source(BaseModel):
    url: str
    seen: datetime.date


@dataclasses.dataclass
class Hit:
    title: str
    score: decimal.Decimal
    tags: frozenset[str]


class Opaque:
    def __repr__(self) -> str:
        raise RuntimeError("a repr that explodes must not matter")


class Touchy(ValueError):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


class BrokenMapping(dict[str, int]):
    def items(self) -> Any:
        raise RuntimeError("cannot iterate")


class Holder(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    thing: Opaque


WHEN = datetime.datetime(2026, 11, 21, 23, 59, 0, 123000, tzinfo=datetime.UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (3, 3),
        (2.5, 2.5),
        ("text", "text"),
        (Colour.RED, "red"),
        (Level.HIGH, 3),
        (Mode.FAST, "fast"),
        (WHEN, "2026-11-21T23:59:00.123000+00:00"),
        (datetime.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
        (datetime.date(2026, 11, 21), "2026-11-21"),
        (datetime.time(12, 30), "12:30:00"),
        (datetime.timedelta(minutes=1, milliseconds=500), 60.5),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ["a", "b"]),
        ((1, "two", (3,)), [1, "two", [3]]),
        (deque([1, 2]), [1, 2]),
        (b"\x00\xffbytes", base64.b64encode(b"\x00\xffbytes").decode()),
        (bytearray(b"abc"), "YWJj"),
        (memoryview(b"abc"), "YWJj"),
        (ValueError("bad input"), {"type": "ValueError", "message": "bad input"}),
        (decimal.Decimal("12.3400"), "12.3400"),
        (ID, "12345678-1234-5678-1234-567812345678"),
        (ipaddress.ip_address("10.0.0.1"), "10.0.0.1"),
        (PurePosixPath("/tmp/report.txt"), "/tmp/report.txt"),
        (
            Source(url="https://example.org", seen=datetime.date(2026, 1, 1)),
            {"url": "https://example.org", "seen": "2026-01-01"},
        ),
        (
            Hit("t", decimal.Decimal("0.5"), frozenset({"y", "x"})),
            {"title": "t", "score": "0.5", "tags": ["x", "y"]},
        ),
        (
            {7: "a", None: "b", False: "c", 2.5: "d", Colour.RED: "e"},
            {"7": "a", "null": "b", "false": "c", "2.5": "d", "red": "e"},
        ),
        (
            {"nested": [{"at": WHEN, "id": ID}]},
            {"nested": [{"at": WHEN.isoformat(), "id": str(ID)}]},
        ),
    ],
)
def test_to_jsonable_converts_each_type(value: Any, expected: Any) -> None:
    converted = to_jsonable(value)
    assert converted == expected
    assert json.loads(json.dumps(converted)) == converted


def test_unorderable_set_keeps_its_items() -> None:
    converted = to_jsonable({1, "a"})
    assert sorted(converted, key=str) == [1, "a"]


def test_to_jsonable_never_raises_and_marks_what_has_no_json_form() -> None:
    circular: dict[str, Any] = {"name": "loop"}
    circular["self"] = circular
    deep: list[Any] = []
    cursor = deep
    for _ in range(MAX_DEPTH + 5):
        cursor.append([])
        cursor = cursor[0]
    cases = {
        "plain": object(),
        "opaque": Opaque(),
        "circular": circular,
        "key": {(1, 2): "tuple key"},
        "model": Holder(thing=Opaque()),
        "deep": deep,
        "touchy": Touchy(),
        "broken": BrokenMapping(a=1),
    }
    converted = to_jsonable(cases)
    assert isinstance(converted["plain"], NotJSON)
    assert repr(converted["plain"]) == "<not JSON: object object>"
    assert converted["opaque"].what.endswith("Opaque object")
    assert converted["circular"]["name"] == "loop"
    assert repr(converted["circular"]["self"]) == "<not JSON: circular reference to a dict>"
    assert [repr(key) for key in converted["key"]] == ["<not JSON: mapping key of type tuple>"]
    assert "Holder model" in converted["model"].what
    assert isinstance(converted["model"], NotJSON)
    assert "nested deeper than" in json.dumps(converted["deep"], default=repr)
    assert converted["touchy"] == {
        "type": "Touchy",
        "message": "<Touchy whose message cannot be read>",
    }
    assert repr(converted["broken"]).endswith("BrokenMapping that raised RuntimeError when read>")
    # A shared (not circular) value is fine twice.
    shared = {"x": 1}
    assert to_jsonable([shared, shared]) == [{"x": 1}, {"x": 1}]


# ------------------------------------------------------------------ through the router


async def _started_run(router: EventRouter, bridge: AgentWebSocketBridge) -> str:
    thread = new_thread_id()
    await router.threads.create(thread, "alice")
    run_id = new_run_id(thread)
    assert await bridge.notify_agent_started(run_id, "a")
    return run_id


async def test_converted_values_arrive_in_the_frame(
    router_factory: Callable[..., EventRouter],
) -> None:
    router = router_factory()
    async with router:
        bridge = AgentWebSocketBridge(router)
        run = await bridge.start_run(thread_id=new_thread_id(), user_id="alice", agent_name="a")
        result = await run.custom(
            "everything",
            {
                "when": WHEN,
                "id": ID,
                "amount": decimal.Decimal("9.99"),
                "colour": Colour.RED,
                "tags": {"b", "a"},
                "pair": (1, 2),
                "blob": b"hi",
                "error": KeyError("k"),
                "source": Source(url="u", seen=datetime.date(2026, 1, 1)),
                "hit": Hit("t", decimal.Decimal("1"), frozenset()),
            },
        )
        assert result
        history = await router.backend.read_history(run.thread_id, 0)
    frame = json.loads(history.frames[-1][1])
    assert frame["payload"]["data"] == {
        "when": "2026-11-21T23:59:00.123000+00:00",
        "id": str(ID),
        "amount": "9.99",
        "colour": "red",
        "tags": ["a", "b"],
        "pair": [1, 2],
        "blob": "aGk=",
        "error": {"type": "KeyError", "message": "'k'"},
        "source": {"url": "u", "seen": "2026-01-01"},
        "hit": {"title": "t", "score": "1", "tags": []},
    }


@pytest.mark.parametrize(
    ("make", "where", "shown"),
    [
        (lambda: {"handle": object()}, "payload.result", "<not JSON: object object>"),
        (lambda: [Opaque()], "payload.result", "Opaque object>"),
        (
            lambda: (lambda d: (d.update(me=d), d)[1])({}),
            "payload.result",
            "<not JSON: circular reference to a dict>",
        ),
        (lambda: {(1, 2): "x"}, "payload.result", "mapping key of type tuple"),
        (lambda: float("nan"), "payload.result", "nan"),
        (lambda: Holder(thing=Opaque()), "payload.result", "Holder model"),
    ],
    ids=["object", "opaque", "circular", "tuple-key", "nan", "model"],
)
async def test_unserialisable_value_is_a_malformed_event_dead_letter(
    router_factory: Callable[..., EventRouter],
    make: Callable[[], Any],
    where: str,
    shown: str,
) -> None:
    router = router_factory()
    async with router:
        bridge = AgentWebSocketBridge(router)
        run_id = await _started_run(router, bridge)
        assert await bridge.notify_tool_executing(run_id, "search")
        result = await bridge.notify_tool_completed(run_id, "search", make())
        assert not result and result.reason == "malformed_event" and result.seq is None
        record = await router.dead_letters.get(result.dead_letter_id or "")
        assert record is not None and record.reason == "malformed_event"
        assert where in record.detail
        assert shown in str(record.event)
        # Not JSON, so the record keeps the event as text, ids included. (The record's
        # run_id/event_type fields stay null for such events: see the router note.)
        assert record.event_raw and run_id in str(record.event)
        assert "tool_completed" in record.detail
        # The run goes on: the tool is still open and can complete properly.
        assert await bridge.notify_tool_completed(run_id, "search", "fine")
