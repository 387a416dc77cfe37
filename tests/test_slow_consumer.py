"""Slow consumers (DESIGN §4): a full outbox closes that connection with 1013,
counted in stats; nobody else is delayed or loses anything."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from router import EventRouter, new_run_id

from .conftest import recv_json, serve, wait_for, ws_connect
from .helpers import (
    close_connection,
    drain,
    ev,
    frames_until_closed,
    is_event,
    new_thread,
    open_connection,
    thinking,
)

BIG = "x" * 60_000  # under the 64 KiB payload limit; fills socket buffers fast


async def read_events(ws: ClientConnection, into: list[dict[str, Any]]) -> None:
    """Keep reading a fast client's frames (until cancelled)."""
    while True:
        frame = await recv_json(ws, 30)
        if is_event(frame):
            into.append(frame)


@pytest.mark.timeout(60)
async def test_slow_consumer_is_closed_1013_and_does_not_delay_others(
    router_factory: Any,
) -> None:
    router: EventRouter = router_factory(outbox_size=20)
    async with serve(router) as server:
        slow_thread = await new_thread(router, "alice", "slow")
        fast_thread = await new_thread(router, "bob", "fast")
        # The slow client reads nothing: its library buffers one message, then the
        # socket buffers fill, then the server's outbox, then it is closed.
        slow = await ws_connect(server, "alice", max_queue=1)
        fast = await ws_connect(server, "bob")
        reader: asyncio.Task[None] | None = None
        try:
            assert (await recv_json(fast))["op"] == "welcome"
            bob_frames: list[dict[str, Any]] = []
            reader = asyncio.create_task(read_events(fast, bob_frames))
            slow_run, fast_run = new_run_id(slow_thread), new_run_id(fast_thread)
            assert await router.publish(ev("agent_started", slow_run))
            assert await router.publish(ev("agent_started", fast_run))
            bob_sent = [1]  # a list, so the conditions below see it change

            # Alternate one big event for alice and one for bob, waiting each time
            # until bob has his: bob keeps up, alice's buffers fill.
            for step in range(2000):
                assert await router.publish(thinking(slow_run, BIG))
                assert await router.publish(thinking(fast_run, f"{step}"))
                bob_sent[0] += 1
                await wait_for(lambda: len(bob_frames) == bob_sent[0], what="bob's event")
                if router.stats.slow_consumer_closes:
                    break
            # Closed within a bounded time, and no longer counted.
            await wait_for(lambda: router.stats.slow_consumer_closes == 1, timeout=10)
            await wait_for(lambda: len(router.hub) == 1, timeout=10, what="alice to go")
            assert router.snapshot()["connections"] == 1
            assert router.hub.has_user("bob") and not router.hub.has_user("alice")

            # Bob goes on receiving every one of his events.
            # (In bursts under bob's outbox size: a burst bigger than any outbox,
            # published without yielding, would overflow a fast client too.)
            for burst in range(5):
                for step in range(10):
                    assert await router.publish(thinking(fast_run, f"after {burst}.{step}"))
                    bob_sent[0] += 1
                await wait_for(lambda: len(bob_frames) == bob_sent[0], what="bob's events")
            assert [f["seq"] for f in bob_frames] == list(range(1, bob_sent[0] + 1))
            # Publishing to alice still works: her events are in history for a resume.
            result = await router.publish(thinking(slow_run, "later"))
            assert result.accepted and result.dead_letter_id is None
            assert router.stats.rejected == {}
            assert router.stats.dead_letters == {}

            # The slow client, drained at last, sees an in-order prefix, then 1013.
            frames, code = await frames_until_closed(slow, within=20)
            assert code == 1013
            seqs = [f["seq"] for f in frames if is_event(f)]
            assert seqs == list(range(1, len(seqs) + 1))
            assert router.stats.slow_consumer_closes == 1
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            await slow.close()
            await fast.close()


async def test_full_outbox_closes_only_that_connection(router_factory: Any) -> None:
    router: EventRouter = router_factory(outbox_size=3)
    async with router:
        thread = await new_thread(router, "alice")
        stuck = open_connection(router, "alice")
        keeping_up = open_connection(router, "alice")
        try:
            run = new_run_id(thread)
            assert await router.publish(ev("agent_started", run))
            received = drain(keeping_up)
            for _ in range(5):
                result = await router.publish(thinking(run))
                assert result.accepted and result.dead_letter_id is None
                received += drain(keeping_up)
            assert [f["seq"] for f in received] == [1, 2, 3, 4, 5, 6]
            assert stuck.close_code == 1013
            assert router.stats.slow_consumer_closes == 1
            assert router.hub.connections("alice") == [keeping_up]
            assert router.snapshot()["connections"] == 1
            assert router.stats.dead_letters == {} and router.stats.rejected == {}
            history = await router.backend.read_history(thread, 0)
            assert [seq for seq, _ in history.frames] == [1, 2, 3, 4, 5, 6]
        finally:
            close_connection(stuck)
            close_connection(keeping_up)


@pytest.mark.timeout(60)
async def test_burst_from_one_task_does_not_close_fast_clients(router_factory: Any) -> None:
    """A burst far larger than the outbox, published without awaiting anything
    else, must not starve the writers: fast clients get everything, nobody is
    closed as a slow consumer."""
    router: EventRouter = router_factory(outbox_size=50)
    async with serve(router) as server:
        clients = [await ws_connect(server, "alice") for _ in range(3)]
        for ws in clients:
            assert (await recv_json(ws))["op"] == "welcome"
        thread = await new_thread(router, "alice")
        run_id = new_run_id(thread)
        assert await router.publish(ev("agent_started", run_id))
        for n in range(2000):
            assert await router.publish(thinking(run_id, f"step {n}"))
        try:
            for ws in clients:
                seqs = []
                while len(seqs) < 2001:
                    frame = await recv_json(ws, 20)
                    if is_event(frame):
                        seqs.append(frame["seq"])
                assert seqs == list(range(1, 2002))
            assert router.stats.slow_consumer_closes == 0
        finally:
            for ws in clients:
                await ws.close()


@pytest.mark.timeout(30)
async def test_a_tight_burst_into_a_small_outbox_reaches_a_reading_client(
    router_factory: Any,
) -> None:
    # 60 events published without awaiting anything else, to a connection whose
    # outbox holds 8: the publisher lets the writer run whenever the outbox is half
    # full, so a client that reads gets everything and is never taken for slow.
    router: EventRouter = router_factory(outbox_size=8)
    async with serve(router) as server:
        thread = await new_thread(router, "alice")
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            run_id = new_run_id(thread)
            assert await router.publish(ev("agent_started", run_id))
            for n in range(60):
                assert await router.publish(thinking(run_id, f"step {n}"))
            frames = [await recv_json(ws) for _ in range(61)]
            assert [f["seq"] for f in frames] == list(range(1, 62))
            assert router.stats.slow_consumer_closes == 0
        finally:
            await ws.close()
