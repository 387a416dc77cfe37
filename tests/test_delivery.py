"""Delivery through per-user isolated channels (DESIGN §4).

An event reaches only connections of its thread's owner that want that thread,
each thread in strictly increasing seq, without gaps or duplicates, and nothing
of anyone else's; under concurrent publishing too.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection

from router import EventRouter, new_run_id

from .conftest import recv_json, serve, ws_connect
from .helpers import (
    close_connection,
    drain,
    ev,
    frames_before_pong,
    is_event,
    new_thread,
    open_connection,
    send_json,
    thinking,
)


def check_stream(
    frames: Sequence[dict[str, Any]],
    *,
    wanted: set[str],
    last_seq: dict[str, int],
    first_seq: int = 1,
) -> None:
    """Frames of a connection: only ``wanted`` threads, each complete and in order."""
    by_thread: dict[str, list[int]] = {}
    for frame in frames:
        assert is_event(frame), frame
        assert frame["thread_id"] in wanted, frame
        by_thread.setdefault(frame["thread_id"], []).append(frame["seq"])
    for thread in wanted:
        expected = list(range(first_seq, last_seq.get(thread, 0) + 1))
        assert by_thread.get(thread, []) == expected, thread


# --------------------------------------------------------------------------- end to end

USERS = [f"user{i:02d}" for i in range(20)]
THREADS_PER_USER = 3
EVENTS = 2000
PUBLISHERS = 5


@pytest.mark.timeout(90)
async def test_every_connection_gets_exactly_its_users_events_under_concurrency(
    router_factory: Any,
) -> None:
    rng = random.Random(20260101)
    router: EventRouter = router_factory()
    async with serve(router) as server:
        threads = {
            user: [await new_thread(router, user, "iso") for _ in range(THREADS_PER_USER)]
            for user in USERS
        }
        owner = {thread: user for user, ts in threads.items() for thread in ts}
        # Three connections per user: one user-wide, one on the first thread, and a
        # third that is user-wide for even users and on the other two threads for odd.
        clients: list[tuple[str, ClientConnection, set[str]]] = []
        readers: list[asyncio.Task[list[dict[str, Any]]]] = []
        try:
            for index, user in enumerate(USERS):
                for slot in range(3):
                    ws = await ws_connect(server, user)
                    assert (await recv_json(ws))["op"] == "welcome"
                    if slot == 0 or (slot == 2 and index % 2 == 0):
                        clients.append((user, ws, set(threads[user])))
                        continue
                    wanted = {threads[user][0]} if slot == 1 else set(threads[user][1:])
                    for thread in sorted(wanted):
                        await send_json(ws, {"op": "subscribe", "thread_id": thread})
                        reply = await recv_json(ws)
                        assert reply == {"op": "subscribed", "thread_id": thread, "last_seq": None}
                    clients.append((user, ws, wanted))
            assert len(router.hub) == len(USERS) * 3

            runs = {thread: new_run_id(thread) for thread in owner}
            for run in runs.values():
                assert await router.publish(ev("agent_started", run))
            plan = [rng.choice(list(owner)) for _ in range(EVENTS)]
            published: dict[str, set[str]] = {thread: set() for thread in owner}

            async def publisher(part: list[str]) -> None:
                for thread in part:
                    result = await router.publish(thinking(runs[thread]))
                    assert result.accepted, result
                    published[thread].add(result.event_id)
                    await asyncio.sleep(0)  # interleave with the other publishers

            expected = [len(ts) + sum(plan.count(t) for t in ts) for _, _, ts in clients]
            readers = [
                asyncio.create_task(collect(ws, count))
                for (_, ws, _), count in zip(clients, expected, strict=True)
            ]
            async with asyncio.TaskGroup() as group:
                for index in range(PUBLISHERS):
                    group.create_task(publisher(plan[index::PUBLISHERS]))
            last_seq = {thread: await router.backend.last_seq(thread) for thread in owner}
            assert sum(last_seq.values()) == EVENTS + len(owner)
            async with asyncio.timeout(60):
                received = await asyncio.gather(*readers)

            for (user, ws, wanted), frames in zip(clients, received, strict=True):
                check_stream(frames, wanted=wanted, last_seq=last_seq)
                assert {owner[f["thread_id"]] for f in frames} <= {user}
                ids = {frame["event_id"] for frame in frames if frame["type"] == "agent_thinking"}
                assert ids == set().union(*(published[t] for t in wanted))
                assert await frames_before_pong(ws) == []  # nothing more is coming
            assert router.snapshot()["delivered"] == sum(len(frames) for frames in received)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for _, ws, _ in clients:
                await ws.close()


async def collect(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` frames of a client."""
    return [await recv_json(ws, 30) for _ in range(count)]


# --------------------------------------------------------------------------- property


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    """Users, their connections' filters, and publishers with interleavings."""
    users = draw(st.integers(2, 4))
    per_user = draw(st.integers(1, 3))
    thread_index = st.integers(0, per_user - 1)
    connections = [
        (user, draw(st.none() | st.frozensets(thread_index, max_size=per_user)))
        for user in range(users)
        for _ in range(draw(st.integers(0, 3)))
    ]
    step = st.tuples(
        st.integers(0, users - 1),
        thread_index,
        st.sampled_from(["ok", "ok", "ok", "not_owner", "mismatch", "no_run", "tool"]),
        st.booleans(),  # yield to the other publishers first
    )
    publishers = draw(st.lists(st.lists(step, max_size=25), min_size=1, max_size=4))
    return {"users": users, "per_user": per_user, "conns": connections, "pubs": publishers}


async def run_schedule(schedule: dict[str, Any]) -> None:
    router = EventRouter(dead_letters="memory://")
    async with router:
        users = [f"u{i}" for i in range(schedule["users"])]
        threads = [
            [await new_thread(router, user, "prop") for _ in range(schedule["per_user"])]
            for user in users
        ]
        conns = [
            (
                open_connection(
                    router, users[u], None if f is None else [threads[u][i] for i in f]
                ),
                set(threads[u]) if f is None else {threads[u][i] for i in f},
            )
            for u, f in schedule["conns"]
        ]
        try:
            runs = {}
            accepted: dict[str, set[str]] = {t: set() for ts in threads for t in ts}
            rejected: set[str] = set()
            for thread in accepted:
                runs[thread] = new_run_id(thread)
                result = await router.publish(ev("agent_started", runs[thread]))
                accepted[thread].add(result.event_id)

            async def publisher(steps: list[tuple[int, int, str, bool]]) -> None:
                for u, i, kind, pause in steps:
                    if pause:
                        await asyncio.sleep(0)
                    thread = threads[u][i]
                    other = (u + 1) % len(users)
                    event = thinking(runs[thread])
                    if kind == "not_owner":
                        event["user_id"] = users[other]
                    elif kind == "mismatch":
                        event["thread_id"] = threads[other][0]
                    elif kind == "no_run":
                        event = thinking(new_run_id(thread))
                    elif kind == "tool":
                        event = ev("tool_completed", runs[thread], {"tool_name": "never_opened"})
                    result = await router.publish(event)
                    assert result.accepted == (kind == "ok"), result
                    if result.accepted:
                        accepted[thread].add(result.event_id)
                    else:
                        rejected.add(result.event_id)

            async with asyncio.TaskGroup() as group:
                for steps in schedule["pubs"]:
                    group.create_task(publisher(steps))

            last_seq = {t: await router.backend.last_seq(t) for t in accepted}
            for thread, ids in accepted.items():
                assert last_seq[thread] == len(ids)
            for conn, wanted in conns:
                frames = drain(conn)
                check_stream(frames, wanted=wanted, last_seq=last_seq)
                ids = {frame["event_id"] for frame in frames}
                assert ids == set().union(*(accepted[t] for t in wanted))
                assert not ids & rejected
            stats = router.stats
            assert stats.published == stats.accepted + sum(stats.rejected.values())
            assert stats.accepted == sum(len(ids) for ids in accepted.values())
            assert sum(stats.rejected.values()) == len(rejected)
        finally:
            for conn, _ in conns:
                close_connection(conn)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules())
def test_no_event_crosses_users_whatever_the_schedule(schedule: dict[str, Any]) -> None:
    asyncio.run(run_schedule(schedule))


# --------------------------------------------------------------------------- filters


async def test_subscribe_unsubscribe_and_star_change_what_a_connection_receives(
    router_factory: Any,
) -> None:
    router: EventRouter = router_factory()
    async with serve(router) as server:
        one, two = [await new_thread(router, "alice", "filter") for _ in range(2)]
        runs = {one: new_run_id(one), two: new_run_id(two)}
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"

            async def publish_both() -> dict[str, str]:
                ids = {}
                for thread, run in runs.items():
                    kind = "agent_thinking" if await router.backend.last_seq(thread) else (
                        "agent_started"
                    )
                    result = await router.publish(ev(kind, run))
                    assert result.accepted
                    ids[thread] = result.event_id
                return ids

            # ALL: both threads.
            ids = await publish_both()
            got = [await recv_json(ws), await recv_json(ws)]
            assert {f["event_id"] for f in got} == set(ids.values())
            # The first subscribe switches ALL to {one}.
            await send_json(ws, {"op": "subscribe", "thread_id": one})
            assert await recv_json(ws) == {"op": "subscribed", "thread_id": one, "last_seq": 1}
            ids = await publish_both()
            frames = await frames_before_pong(ws)
            assert [f["event_id"] for f in frames] == [ids[one]]
            # Unsubscribing the only thread leaves an empty set: nothing arrives.
            await send_json(ws, {"op": "unsubscribe", "thread_id": one})
            assert await recv_json(ws) == {"op": "unsubscribed", "thread_id": one}
            await publish_both()
            assert await frames_before_pong(ws) == []
            # "*" is ALL again (live from now on).
            await send_json(ws, {"op": "subscribe", "thread_id": "*"})
            assert await recv_json(ws) == {"op": "subscribed", "thread_id": "*", "last_seq": None}
            ids = await publish_both()
            frames = await frames_before_pong(ws)
            assert {f["event_id"] for f in frames} == set(ids.values())
            assert {f["seq"] for f in frames} == {4}
        finally:
            await ws.close()


async def test_connections_of_one_user_all_receive_and_others_none(router_factory: Any) -> None:
    router: EventRouter = router_factory()
    async with router:
        thread = await new_thread(router, "alice")
        mine = [open_connection(router, "alice") for _ in range(3)]
        theirs = [open_connection(router, "bob"), open_connection(router, "mallory")]
        try:
            run = new_run_id(thread)
            started = await router.publish(ev("agent_started", run))
            assert started.accepted and started.dead_letter_id is None
            for conn in mine:
                assert [f["event_id"] for f in drain(conn)] == [started.event_id]
            for conn in theirs:
                assert drain(conn) == []
            assert router.snapshot()["delivered"] == 3
        finally:
            for conn in mine + theirs:
                close_connection(conn)
