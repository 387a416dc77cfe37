"""Resume and replay from history (DESIGN §4): at connect and with subscribe.

What was missed arrives first, then live events, each seq exactly once and in
order, with a ``gap`` frame first when history no longer holds the start.
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import ClientConnection

from router import EventRouter, new_run_id

from .conftest import recv_json, serve, wait_for, ws_connect
from .helpers import ev, frames_before_pong, is_event, new_thread, send_json, thinking


class Thread:
    """A thread of alice's with one started run, published to in process."""

    def __init__(self, router: EventRouter, thread_id: str) -> None:
        self.router = router
        self.id = thread_id
        self.run = new_run_id(thread_id)
        self.seq = 0

    @classmethod
    async def create(cls, router: EventRouter, user: str = "alice") -> Thread:
        thread = cls(router, await new_thread(router, user, "resume"))
        result = await router.publish(ev("agent_started", thread.run))
        assert result.seq == 1
        thread.seq = 1
        return thread

    async def publish(self, count: int, *, pause: bool = False) -> None:
        for _ in range(count):
            if pause:
                await asyncio.sleep(0)  # let the server interleave
            result = await self.router.publish(thinking(self.run, f"step {self.seq + 1}"))
            assert result.seq == self.seq + 1, result
            self.seq += 1


async def event_seqs_until(
    ws: ClientConnection, thread: str, last: int
) -> tuple[list[int], list[dict[str, Any]]]:
    """Read until the event ``last`` of ``thread``; its seqs, and the control frames."""
    seqs: list[int] = []
    control: list[dict[str, Any]] = []
    while not seqs or seqs[-1] < last:
        frame = await recv_json(ws)
        if is_event(frame):
            assert frame["thread_id"] == thread
            seqs.append(frame["seq"])
        else:
            control.append(frame)
    return seqs, control


async def away(router: EventRouter, ws: ClientConnection) -> None:
    """Close a client and wait until the server no longer counts it."""
    await ws.close()
    await wait_for(lambda: len(router.hub) == 0, what="the connection to go")


async def test_reconnect_with_after_seq_gets_missed_then_live_without_gap_or_duplicate(
    router_factory: Any,
) -> None:
    router: EventRouter = router_factory()
    async with serve(router) as server:
        ws = await ws_connect(server, "alice")
        assert (await recv_json(ws))["op"] == "welcome"
        thread = await Thread.create(router)
        await thread.publish(9)
        seqs, _ = await event_seqs_until(ws, thread.id, 10)
        assert seqs == list(range(1, 11))
        await away(router, ws)  # mid-run

        await thread.publish(50)  # 11..60 while nobody listens

        async def live_traffic() -> None:  # 61..90: during the handshake, then the replay
            await thread.publish(15, pause=True)
            await wait_for(lambda: len(router.hub) == 1, what="the resumed connection")
            await thread.publish(15, pause=True)

        live = asyncio.create_task(live_traffic())
        ws = await ws_connect(server, "alice", f"thread_id={thread.id}&after_seq=10")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            await live
            seqs, control = await event_seqs_until(ws, thread.id, 90)
            assert seqs == list(range(11, 91))
            assert [frame["op"] for frame in control] == ["subscribed"]
            assert control[0]["thread_id"] == thread.id
            await thread.publish(1)
            seqs, _ = await event_seqs_until(ws, thread.id, 91)
            assert seqs == [91]
            assert await frames_before_pong(ws) == []
        finally:
            await ws.close()


async def test_resume_beyond_retained_history_sends_gap_frame_first(router_factory: Any) -> None:
    router: EventRouter = router_factory(history_size=10)
    async with serve(router) as server:
        ws = await ws_connect(server, "alice")
        assert (await recv_json(ws))["op"] == "welcome"
        thread = await Thread.create(router)
        await thread.publish(9)
        assert (await event_seqs_until(ws, thread.id, 10))[0] == list(range(1, 11))
        await away(router, ws)

        await thread.publish(50)  # 11..60; history keeps 51..60
        ws = await ws_connect(server, "alice", f"thread_id={thread.id}&after_seq=10")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            frames = []
            while not frames or not (is_event(frames[-1]) and frames[-1]["seq"] == 60):
                frames.append(await recv_json(ws))
            gaps = [f for f in frames if f.get("op") == "gap"]
            assert gaps == [{"op": "gap", "thread_id": thread.id, "from_seq": 11, "to_seq": 50}]
            first_event = next(i for i, f in enumerate(frames) if is_event(f))
            assert frames.index(gaps[0]) < first_event
            assert [f["seq"] for f in frames if is_event(f)] == list(range(51, 61))
            await thread.publish(1)
            assert (await event_seqs_until(ws, thread.id, 61))[0] == [61]
        finally:
            await ws.close()


async def test_resume_larger_than_the_outbox_is_paced_not_closed(router_factory: Any) -> None:
    router: EventRouter = router_factory(outbox_size=5)
    async with serve(router) as server:
        thread = await Thread.create(router)
        await thread.publish(99)  # 2..100, never seen
        ws = await ws_connect(server, "alice", f"thread_id={thread.id}&after_seq=0")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            seqs, control = await event_seqs_until(ws, thread.id, 100)
            assert seqs == list(range(1, 101))
            assert [frame["op"] for frame in control] == ["subscribed"]
            assert router.stats.slow_consumer_closes == 0
            assert len(router.hub) == 1
        finally:
            await ws.close()


async def test_resume_several_threads_paired_by_position(router_factory: Any) -> None:
    router: EventRouter = router_factory()
    async with serve(router) as server:
        one = await Thread.create(router)
        two = await Thread.create(router)
        other = await Thread.create(router)  # not asked for: must not arrive
        await one.publish(4)  # 1..5
        await two.publish(2)  # 1..3
        await other.publish(1)
        query = f"thread_id={one.id}&after_seq=3&thread_id={two.id}&after_seq=0"
        ws = await ws_connect(server, "alice", query)
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            frames = await frames_before_pong(ws)
            events = [(f["thread_id"], f["seq"]) for f in frames if is_event(f)]
            assert [e for e in events if e[0] == one.id] == [(one.id, 4), (one.id, 5)]
            assert [e for e in events if e[0] == two.id] == [(two.id, s) for s in (1, 2, 3)]
            assert len(events) == 5
            await other.publish(1)
            await one.publish(1)
            frames = await frames_before_pong(ws)
            assert [(f["thread_id"], f["seq"]) for f in frames] == [(one.id, 6)]
        finally:
            await ws.close()


async def test_resume_of_a_thread_not_owned_is_an_error_and_the_connection_stays(
    router_factory: Any,
) -> None:
    router: EventRouter = router_factory()
    async with serve(router) as server:
        mine = await Thread.create(router)
        bobs = await Thread.create(router, "bob")
        await bobs.publish(3)
        query = f"thread_id={bobs.id}&after_seq=0&thread_id={mine.id}&after_seq=0"
        ws = await ws_connect(server, "alice", query)
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            frames = await frames_before_pong(ws)
            errors = [f for f in frames if f.get("op") == "error"]
            assert len(errors) == 1
            assert errors[0]["code"] in ("forbidden", "thread_not_found")
            assert errors[0].get("thread_id") == bobs.id
            assert [(f["thread_id"], f["seq"]) for f in frames if is_event(f)] == [(mine.id, 1)]
            await bobs.publish(2)
            assert await frames_before_pong(ws) == []
        finally:
            await ws.close()


async def test_subscribe_with_after_seq_replays_then_goes_live(router_factory: Any) -> None:
    router: EventRouter = router_factory()
    async with serve(router) as server:
        thread = await Thread.create(router)
        elsewhere = await Thread.create(router)
        await thread.publish(19)  # 1..20
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            # Thread mode on another thread first, so this one is not being received.
            await send_json(ws, {"op": "subscribe", "thread_id": elsewhere.id})
            assert (await recv_json(ws))["op"] == "subscribed"
            live = asyncio.create_task(thread.publish(30, pause=True))  # 21..50
            await send_json(ws, {"op": "subscribe", "thread_id": thread.id, "after_seq": 5})
            await live
            seqs, control = await event_seqs_until(ws, thread.id, 50)
            assert seqs == list(range(6, 51))
            assert [f["op"] for f in control] == ["subscribed"]
            assert control[0]["thread_id"] == thread.id
            assert control[0]["last_seq"] >= 20
        finally:
            await ws.close()


async def test_subscribe_with_after_seq_beyond_history_sends_gap(router_factory: Any) -> None:
    router: EventRouter = router_factory(history_size=5)
    async with serve(router) as server:
        thread = await Thread.create(router)
        await thread.publish(19)  # 1..20, history keeps 16..20
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            await send_json(ws, {"op": "subscribe", "thread_id": thread.id, "after_seq": 2})
            frames = await frames_before_pong(ws)
            assert frames[0] == {"op": "subscribed", "thread_id": thread.id, "last_seq": 20}
            assert frames[1] == {"op": "gap", "thread_id": thread.id, "from_seq": 3, "to_seq": 15}
            assert [f["seq"] for f in frames[2:]] == [16, 17, 18, 19, 20]
        finally:
            await ws.close()


async def test_subscribe_on_a_thread_already_received_replays_only_above_last_sent(
    router_factory: Any,
) -> None:
    router: EventRouter = router_factory()
    async with serve(router) as server:
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            thread = await Thread.create(router)
            await thread.publish(9)  # 1..10, received live in ALL mode
            assert (await event_seqs_until(ws, thread.id, 10))[0] == list(range(1, 11))

            await send_json(ws, {"op": "subscribe", "thread_id": thread.id, "after_seq": 3})
            frames = await frames_before_pong(ws)
            assert frames == [{"op": "subscribed", "thread_id": thread.id, "last_seq": 10}]
            # Subscribing again, now in thread mode, replays nothing either.
            await send_json(ws, {"op": "subscribe", "thread_id": thread.id, "after_seq": 0})
            frames = await frames_before_pong(ws)
            assert frames == [{"op": "subscribed", "thread_id": thread.id, "last_seq": 10}]
            await thread.publish(1)
            assert (await event_seqs_until(ws, thread.id, 11))[0] == [11]
            assert await frames_before_pong(ws) == []
        finally:
            await ws.close()


async def test_subscribe_without_after_seq_is_live_only(router_factory: Any) -> None:
    router: EventRouter = router_factory()
    async with serve(router) as server:
        thread = await Thread.create(router)
        await thread.publish(4)
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            await send_json(ws, {"op": "subscribe", "thread_id": thread.id})
            frames = await frames_before_pong(ws)
            assert frames == [{"op": "subscribed", "thread_id": thread.id, "last_seq": 5}]
            await thread.publish(1)
            assert (await event_seqs_until(ws, thread.id, 6))[0] == [6]
        finally:
            await ws.close()


async def test_resume_at_connect_without_after_seq_is_live_only(router_factory: Any) -> None:
    router: EventRouter = router_factory()
    async with serve(router) as server:
        thread = await Thread.create(router)
        await thread.publish(4)  # 1..5
        ws = await ws_connect(server, "alice", f"thread_id={thread.id}")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            frames = await frames_before_pong(ws)
            assert frames == [{"op": "subscribed", "thread_id": thread.id, "last_seq": 5}]
            await thread.publish(1)
            assert (await event_seqs_until(ws, thread.id, 6))[0] == [6]
        finally:
            await ws.close()


async def test_resume_after_history_expired_is_one_gap_then_live(router_factory: Any) -> None:
    router: EventRouter = router_factory(history_ttl=0.001)
    async with serve(router) as server:
        thread = await Thread.create(router)
        await thread.publish(9)  # 1..10, all soon expired

        async def expired() -> bool:
            return (await router.backend.read_history(thread.id, 0)).first_seq is None

        await wait_for(expired, what="history to expire")
        ws = await ws_connect(server, "alice", f"thread_id={thread.id}&after_seq=2")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            frames = await frames_before_pong(ws)
            assert [f for f in frames if f.get("op") == "gap"] == [
                {"op": "gap", "thread_id": thread.id, "from_seq": 3, "to_seq": 10}
            ]
            assert [f for f in frames if is_event(f)] == []
            await thread.publish(1)
            assert (await event_seqs_until(ws, thread.id, 11))[0] == [11]
        finally:
            await ws.close()


async def test_live_events_during_a_paced_replay_follow_it_in_order(router_factory: Any) -> None:
    router: EventRouter = router_factory(outbox_size=5)
    async with serve(router) as server:
        thread = await Thread.create(router)
        big = "y" * 60_000
        for _ in range(149):  # 2..150, ~9 MB: more than the socket buffers hold
            assert await router.publish(thinking(thread.run, big))
        thread.seq = 150
        # The client reads nothing at first, so the replay waits for room.
        ws = await ws_connect(server, "alice", f"thread_id={thread.id}&after_seq=0", max_queue=1)
        try:
            await wait_for(lambda: len(router.hub) == 1, what="the resumed connection")
            (conn,) = router.hub.connections("alice")
            await wait_for(lambda: conn.pending.get(thread.id) is not None, what="the replay")
            await thread.publish(3, pause=True)  # 151..153, held behind the replay
            assert conn.pending.get(thread.id), "the replay finished before the live events"
            seqs, control = await event_seqs_until(ws, thread.id, 153)
            assert seqs == list(range(1, 154))
            assert [f["op"] for f in control] == ["welcome", "subscribed"]
            assert router.stats.slow_consumer_closes == 0
        finally:
            await ws.close()
