"""The publishing pipeline (DESIGN §3): every reason code, in process and over HTTP.

Each rejection must come back as a result naming the reason, have its dead-letter
record, and reach no WebSocket client. ``no_recipient`` is the one reason given to
an accepted event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from router import (
    EventRouter,
    RouterNotStarted,
    ThreadMismatch,
    new_run_id,
    new_thread_id,
    validate_id_pair,
)
from router.connections import Connection

from .conftest import ADMIN_TOKEN, recv_json, recv_until, serve, ws_connect
from .helpers import (
    close_connection,
    drain,
    ev,
    frames_before_pong,
    is_event,
    new_thread,
    open_connection,
    start_run,
    thinking,
)

#: The exact case of DESIGN §1: a run minted for one thread, an event naming another.
MISMATCH_RUN = "run_websocket_factory_1757361062151_8_1a2b3c4d"
MISMATCH_THREAD = "thread_websocket_factory_1757361062151_7_90c65fe4"
MISMATCH_EMBEDDED = "websocket_factory_1757361062151_8"

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


class World:
    """A running router with alice and bob connected; alice has a started run.

    ``via="process"``: no sockets; publish with ``router.publish`` and read
    in-process connections. ``via="http"``: a real server; publish with
    ``POST /_router/publish`` and read real WebSocket clients.
    """

    def __init__(self, router: EventRouter, via: str) -> None:
        self.router = router
        self.via = via
        self.client: httpx.AsyncClient | None = None
        self.accepted: set[str] = set()
        self.alice: ClientConnection | Connection
        self.bob: ClientConnection | Connection
        self.alice_thread = ""
        self.alice_run = ""
        self.bob_thread = ""

    async def publish(self, event: Any) -> dict[str, Any]:
        """Publish in process or through ``POST /_router/publish``; the result as JSON."""
        if self.client is None:
            result = (await self.router.publish(event)).to_dict()
        else:
            if isinstance(event, bytes | str):
                response = await self.client.post("/_router/publish", content=event, headers=AUTH)
            else:
                response = await self.client.post("/_router/publish", json=event, headers=AUTH)
            result = response.json()
            assert response.status_code == (202 if result["accepted"] else 422), result
        if result["accepted"]:
            self.accepted.add(result["event_id"])
        return result

    async def ok(self, event: dict[str, Any]) -> None:
        """Publish a setup event in process; it must be accepted."""
        result = await self.router.publish(event)
        assert result.accepted, result
        self.accepted.add(result.event_id)

    async def start_run(self) -> str:
        run = new_run_id(self.alice_thread)
        await self.ok(ev("agent_started", run))
        return run

    async def frames_until(self, event_id: str) -> list[dict[str, Any]]:
        """Alice's frames up to and including the event ``event_id``."""
        if isinstance(self.alice, Connection):
            # In process, delivery is done when publish returns.
            frames = drain(self.alice)
            assert frames and frames[-1].get("event_id") == event_id
            return frames
        return await recv_until(self.alice, lambda f: f.get("event_id") == event_id)

    async def bob_frames(self) -> list[dict[str, Any]]:
        if isinstance(self.bob, Connection):
            return drain(self.bob)
        return await frames_before_pong(self.bob)

    async def assert_nothing_leaked(self, rejected_event_id: str) -> None:
        """Alice gets only accepted events, up to a marker; bob gets nothing."""
        marker = await self.router.publish(thinking(self.alice_run, "marker"))
        assert marker.accepted
        self.accepted.add(marker.event_id)
        frames = await self.frames_until(marker.event_id)
        received = {frame["event_id"] for frame in frames if is_event(frame)}
        assert rejected_event_id not in received
        assert received <= self.accepted
        assert [f for f in frames if not is_event(f)] == []
        assert await self.bob_frames() == []

    async def setup(self) -> None:
        self.alice_thread = await new_thread(self.router, "alice")
        self.bob_thread = await new_thread(self.router, "bob")
        self.alice_run = new_run_id(self.alice_thread)
        started = await self.publish(ev("agent_started", self.alice_run))
        assert started["accepted"]
        frames = await self.frames_until(started["event_id"])
        assert [frame["seq"] for frame in frames] == [1]


@contextlib.asynccontextmanager
async def world(via: str, **router_options: Any) -> AsyncIterator[World]:
    router_options.setdefault("dead_letters", "memory://")
    router = EventRouter(**router_options)
    w = World(router, via)
    if via == "process":
        async with router:
            w.alice = open_connection(router, "alice")
            w.bob = open_connection(router, "bob")
            try:
                await w.setup()
                yield w
            finally:
                close_connection(w.alice)
                close_connection(w.bob)
        return
    async with serve(router) as server, httpx.AsyncClient(base_url=server.http) as client:
        w.client = client
        w.alice = await ws_connect(server, "alice")
        w.bob = await ws_connect(server, "bob")
        try:
            assert (await recv_json(w.alice))["op"] == "welcome"
            assert (await recv_json(w.bob))["op"] == "welcome"
            await w.setup()
            yield w
        finally:
            await w.alice.close()
            await w.bob.close()


# --------------------------------------------------------------------------- cases
# Each case sets up what it needs and returns the event to publish.

Case = Callable[[World], Awaitable[Any]]


async def missing_run_id(w: World) -> Any:
    event = thinking(w.alice_run)
    del event["run_id"]
    return event


async def unknown_type(w: World) -> Any:
    return {"type": "agent_dreaming", "run_id": w.alice_run, "agent_name": "a", "payload": {}}


async def payload_missing_field(w: World) -> Any:
    return ev("agent_thinking", w.alice_run, {"step_number": 1})


async def payload_extra_field(w: World) -> Any:
    return ev("tool_executing", w.alice_run, {"tool_name": "x", "surprise": True})


async def no_agent_name(w: World) -> Any:
    event = thinking(w.alice_run)
    del event["agent_name"]
    return event


async def not_json(w: World) -> Any:
    return b'{"type": "agent_thinking", "run_id": '


async def not_utf8(w: World) -> Any:
    return b'{"type": "agent_thinking", "agent_name": "\xff\xfe"}'


async def not_an_object(w: World) -> Any:
    return b'["agent_thinking"]'


async def payload_too_big(w: World) -> Any:
    return thinking(w.alice_run, "x" * 70_000)


async def run_id_null(w: World) -> Any:
    return thinking(None)


async def run_id_empty(w: World) -> Any:
    return thinking("")


async def run_id_registry(w: World) -> Any:
    return thinking("registry")


async def run_id_number(w: World) -> Any:
    return thinking(12345)


async def run_id_without_thread(w: World) -> Any:
    return thinking("run_websocket_factory_1757361062151_8_1a2b3c4d_extra")


async def bad_user_id(w: World) -> Any:
    return thinking(w.alice_run, user_id="not a user id!")


async def mismatch_exact_case(w: World) -> Any:
    await w.router.threads.create(MISMATCH_THREAD, "alice")
    return thinking(MISMATCH_RUN, thread_id=MISMATCH_THREAD)


async def mismatch_canonical(w: World) -> Any:
    return thinking(w.alice_run, thread_id=w.bob_thread)


async def unknown_thread(w: World) -> Any:
    return ev("agent_started", new_run_id(new_thread_id("never_stored")))


async def unknown_thread_named(w: World) -> Any:
    thread = new_thread_id("never_stored")
    return ev("agent_started", new_run_id(thread), thread_id=thread)


async def user_not_owner(w: World) -> Any:
    return thinking(w.alice_run, user_id="bob")


async def no_agent_started(w: World) -> Any:
    return thinking(new_run_id(w.alice_thread))


async def started_twice(w: World) -> Any:
    return ev("agent_started", w.alice_run)


async def after_agent_completed(w: World) -> Any:
    run = await w.start_run()
    await w.ok(ev("agent_completed", run))
    return thinking(run, "too late")


async def after_agent_error(w: World) -> Any:
    run = await w.start_run()
    await w.ok(ev("agent_error", run))
    return ev("agent_completed", run)


async def tool_completed_not_open(w: World) -> Any:
    return ev("tool_completed", w.alice_run, {"tool_name": "search"})


async def tool_completed_other_tool(w: World) -> Any:
    run = await w.start_run()
    await w.ok(ev("tool_executing", run, {"tool_name": "search"}))
    return ev("tool_completed", run, {"tool_name": "fetch"})


async def tool_call_id_mismatch(w: World) -> Any:
    run = await w.start_run()
    opened = ev("tool_executing", run, {"tool_name": "search", "tool_call_id": "call-1"})
    await w.ok(opened)
    return ev("tool_completed", run, {"tool_name": "search", "tool_call_id": "call-2"})


async def tool_completed_twice(w: World) -> Any:
    run = await w.start_run()
    await w.ok(ev("tool_executing", run, {"tool_name": "search"}))
    await w.ok(ev("tool_completed", run, {"tool_name": "search"}))
    return ev("tool_completed", run, {"tool_name": "search"})


# Precedence: the first failing stage decides.


async def malformed_before_invalid_id(w: World) -> Any:
    return {"type": "agent_thinking", "run_id": "registry", "agent_name": "a"}  # no payload


async def invalid_run_before_mismatch(w: World) -> Any:
    return thinking("registry", thread_id=w.alice_thread)


async def not_found_before_lifecycle(w: World) -> Any:
    return thinking(new_run_id(new_thread_id("never_stored")))  # never started either


async def not_owner_before_lifecycle(w: World) -> Any:
    return thinking(new_run_id(w.alice_thread), user_id="bob")  # never started either


async def mismatch_before_not_found(w: World) -> Any:
    return thinking(MISMATCH_RUN, thread_id=new_thread_id("never_stored"))


CASES: list[tuple[str, Case]] = [
    ("malformed_event", missing_run_id),
    ("malformed_event", unknown_type),
    ("malformed_event", payload_missing_field),
    ("malformed_event", payload_extra_field),
    ("malformed_event", no_agent_name),
    ("malformed_event", not_json),
    ("malformed_event", not_utf8),
    ("malformed_event", not_an_object),
    ("malformed_event", payload_too_big),
    ("invalid_id", run_id_null),
    ("invalid_id", run_id_empty),
    ("invalid_id", run_id_registry),
    ("invalid_id", run_id_number),
    ("invalid_id", run_id_without_thread),
    ("invalid_id", bad_user_id),
    ("thread_mismatch", mismatch_exact_case),
    ("thread_mismatch", mismatch_canonical),
    ("thread_not_found", unknown_thread),
    ("thread_not_found", unknown_thread_named),
    ("not_owner", user_not_owner),
    ("lifecycle_violation", no_agent_started),
    ("lifecycle_violation", started_twice),
    ("lifecycle_violation", after_agent_completed),
    ("lifecycle_violation", after_agent_error),
    ("lifecycle_violation", tool_completed_not_open),
    ("lifecycle_violation", tool_completed_other_tool),
    ("lifecycle_violation", tool_call_id_mismatch),
    ("lifecycle_violation", tool_completed_twice),
    ("malformed_event", malformed_before_invalid_id),
    ("invalid_id", invalid_run_before_mismatch),
    ("thread_not_found", not_found_before_lifecycle),
    ("not_owner", not_owner_before_lifecycle),
    ("thread_mismatch", mismatch_before_not_found),
]


@pytest.mark.parametrize("via", ["process", "http"])
@pytest.mark.parametrize(("reason", "make"), CASES, ids=[case.__name__ for _, case in CASES])
async def test_publish_rejects_with_reason_and_dead_letter(
    via: str, reason: str, make: Case
) -> None:
    async with world(via) as w:
        event = await make(w)
        before = dict(w.router.stats.rejected)
        result = await w.publish(event)
        assert result["accepted"] is False
        assert result["reason"] == reason, result
        assert result["seq"] is None and result["spooled"] is False
        assert result["event_id"] and result["detail"]
        record = await w.router.dead_letters.get(result["dead_letter_id"])
        assert record is not None
        assert record.reason == reason
        assert record.event_id == result["event_id"]
        assert record.attempts == 1
        if isinstance(event, dict) and not (via == "http" and record.event_raw):
            # (Over HTTP an oversize body may be kept as its raw text, unparsed.)
            assert record.event == event and record.event_raw is False
        assert w.router.stats.rejected.get(reason, 0) == before.get(reason, 0) + 1
        await w.assert_nothing_leaked(result["event_id"])


@pytest.mark.parametrize("via", ["process", "http"])
async def test_publish_rejects_the_exact_thread_mismatch_case(via: str) -> None:
    async with world(via) as w:
        await w.router.threads.create(MISMATCH_THREAD, "alice")
        with pytest.raises(ThreadMismatch) as caught:
            validate_id_pair(MISMATCH_RUN, MISMATCH_THREAD)
        assert caught.value.embedded == MISMATCH_EMBEDDED
        result = await w.publish(ev("agent_started", MISMATCH_RUN, thread_id=MISMATCH_THREAD))
        assert result["reason"] == "thread_mismatch"
        record = await w.router.dead_letters.get(result["dead_letter_id"])
        for text in (result["detail"], record.detail):
            assert MISMATCH_RUN in text
            assert MISMATCH_THREAD in text
            assert MISMATCH_EMBEDDED in text
        assert record.run_id == MISMATCH_RUN
        assert record.thread_id == MISMATCH_THREAD
        await w.assert_nothing_leaked(result["event_id"])


@pytest.mark.parametrize("via", ["process", "http"])
async def test_publish_keeps_event_id_of_rejected_event(via: str) -> None:
    async with world(via) as w:
        result = await w.publish(thinking(w.alice_run, user_id="bob", event_id="evt-rejected-1"))
        assert result["reason"] == "not_owner" and result["event_id"] == "evt-rejected-1"
        record = await w.router.dead_letters.get(result["dead_letter_id"])
        assert record.user_id == "bob" and record.thread_id == w.alice_thread
        assert record.run_id == w.alice_run and record.event_type == "agent_thinking"


@pytest.mark.parametrize("via", ["process", "http"])
@pytest.mark.parametrize("final", ["agent_completed", "agent_error"])
async def test_final_event_nobody_hears_is_accepted_and_dead_lettered_no_recipient(
    via: str, final: str
) -> None:
    async with world(via) as w:
        thread = await new_thread(w.router, "carol")  # carol is not connected
        run = new_run_id(thread)
        started = await w.publish(ev("agent_started", run))
        assert started["accepted"] and started["dead_letter_id"] is None  # not a final event
        result = await w.publish(ev(final, run))
        assert result["accepted"] is True and result["seq"] == 2
        assert result["reason"] is None
        record = await w.router.dead_letters.get(result["dead_letter_id"])
        assert record is not None and record.reason == "no_recipient"
        assert record.user_id == "carol" and record.thread_id == thread
        assert record.event_id == result["event_id"] and record.event_type == final
        assert w.router.stats.rejected == {}
        assert w.router.stats.dead_letters == {"no_recipient": 1}
        # It stays in history for a resume.
        history = await w.router.backend.read_history(thread, 0)
        assert [seq for seq, _ in history.frames] == [1, 2]
        await w.assert_nothing_leaked(result["event_id"])


@pytest.mark.parametrize("via", ["process", "http"])
async def test_final_event_with_a_listener_is_not_dead_lettered(via: str) -> None:
    async with world(via) as w:
        result = await w.publish(ev("agent_completed", w.alice_run))
        assert result["accepted"] and result["seq"] == 2 and result["dead_letter_id"] is None
        (frame,) = await w.frames_until(result["event_id"])
        assert frame["type"] == "agent_completed"
        assert w.router.stats.dead_letters == {}


async def test_no_recipient_is_configurable() -> None:
    async with world("process", dead_letter_no_recipient=False) as w:
        thread = await new_thread(w.router, "carol")
        run = await start_run(w.router, thread)
        result = await w.publish(ev("agent_completed", run))
        assert result["accepted"] and result["dead_letter_id"] is None
        assert w.router.stats.dead_letters == {}


async def test_accepted_event_frame_matches_design() -> None:
    async with world("http") as w:
        result = await w.publish(
            ev(
                "tool_executing",
                w.alice_run,
                {"tool_name": "search", "parameters": {"q": "x"}},
                thread_id=w.alice_thread,
                user_id="alice",
                event_id="evt-frame-1",
                timestamp="2026-11-21T23:59:00.123Z",
            )
        )
        assert result == {
            "accepted": True,
            "event_id": "evt-frame-1",
            "seq": 2,
            "reason": None,
            "detail": None,
            "dead_letter_id": None,
            "spooled": False,
        }
        (frame,) = await w.frames_until("evt-frame-1")
        assert frame == {
            "type": "tool_executing",
            "event_id": "evt-frame-1",
            "seq": 2,
            "thread_id": w.alice_thread,
            "run_id": w.alice_run,
            "agent_name": "tester",
            "timestamp": "2026-11-21T23:59:00.123Z",
            "payload": {"tool_name": "search", "parameters": {"q": "x"}},
        }


async def test_http_publish_needs_a_token() -> None:
    async with world("http") as w:
        response = await w.client.post("/_router/publish", json=thinking(w.alice_run))
        assert response.status_code == 401
        wrong = {"authorization": "Bearer nope"}
        response = await w.client.post(
            "/_router/publish", json=thinking(w.alice_run), headers=wrong
        )
        assert response.status_code == 401
        assert w.router.stats.published == 1  # only the world's agent_started


async def test_publish_token_may_publish_but_not_administer(router_factory: Any) -> None:
    router: EventRouter = router_factory()
    async with serve(router, publish_token="pub-secret") as server:
        async with httpx.AsyncClient(base_url=server.http) as client:
            thread = await new_thread(router, "alice")
            headers = {"authorization": "Bearer pub-secret"}
            event = ev("agent_started", new_run_id(thread))
            response = await client.post("/_router/publish", json=event, headers=headers)
            assert response.status_code == 202 and response.json()["seq"] == 1
            assert (await client.get("/_router/stats", headers=headers)).status_code == 401
            assert (await client.get("/_router/stats", headers=AUTH)).status_code == 200


async def test_publish_before_start_is_misuse() -> None:
    router = EventRouter(dead_letters="memory://")
    with pytest.raises(RouterNotStarted):
        await router.publish(thinking("registry"))
    async with router:
        result = await router.publish(thinking("registry"))
        assert not result and result.reason == "invalid_id"
    with pytest.raises(RouterNotStarted):
        await router.publish(thinking("registry"))


async def test_recent_event_lookup_keeps_two_generations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("router.router._RECENT_EVENTS", 3)
    async with EventRouter(dead_letters="memory://") as router:
        thread = await new_thread(router, "alice")
        run_id = await start_run(router, thread)
        conn = open_connection(router, "alice")
        results = [await router.publish(thinking(run_id, f"step {n}")) for n in range(7)]
        close_connection(conn)
        # agent_started and steps 0-1 filled a generation; steps 2-4 the next, which
        # pushed the first out; steps 5-6 are in the newest.
        assert [router.accepted_event(r.event_id) is not None for r in results] == [
            False,
            False,
            True,
            True,
            True,
            True,
            True,
        ]
        found = router.accepted_event(results[-1].event_id)
        assert found == (thread, 8, 1, True)


async def test_a_tight_publishing_loop_lets_other_tasks_run() -> None:
    from router.router import _YIELD_EVERY

    async with EventRouter(dead_letters="memory://") as router:
        thread = await new_thread(router, "alice")
        run_id = await start_run(router, thread)
        ticks = 0
        done = False

        async def other_task() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other_task())
        await asyncio.sleep(0)
        started = ticks
        # Publishing awaits nothing that suspends: without the periodic yield the
        # other task (a writer, say) would not run until the loop ends.
        for n in range(10 * _YIELD_EVERY):
            assert await router.publish(thinking(run_id, f"step {n}"))
        ran = ticks - started
        done = True
        await task
        assert ran >= 9
