"""The Redis backend across real processes and a real Redis server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from anyio import fail_after as anyio_fail_after
from websockets.asyncio.client import ClientConnection, connect

from router import EventRouter, new_run_id, new_thread_id

from .conftest import recv_json, recv_until, wait_for
from .redis_support import PrivateRedis

ROOT = Path(__file__).resolve().parent.parent


class Node:
    def __init__(self, process: asyncio.subprocess.Process, port: int | None) -> None:
        self.process = process
        self.port = port

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@contextlib.asynccontextmanager
async def server_node(backend: str, prefix: str, *extra: str) -> AsyncIterator[Node]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.nodes",
        "server",
        "--backend",
        backend,
        "--prefix",
        prefix,
        *extra,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert line.startswith(b"READY "), line
        yield Node(process, int(line.split()[1]))
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def run_worker(
    backend: str,
    prefix: str,
    plan: dict[str, Any],
    tmp_path: Path,
    name: str = "plan",
    dead_letters: str = "memory://",
) -> dict[str, Any]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(plan))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.nodes",
        "worker",
        "--backend",
        backend,
        "--prefix",
        prefix,
        "--dead-letters",
        dead_letters,
        "--plan",
        str(path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, out[-2000:]
    done = [line for line in out.decode().splitlines() if line.startswith("DONE ")]
    assert done, out[-2000:]
    result: dict[str, Any] = json.loads(done[0][5:])
    return result


async def connect_user(node: Node, user: str, query: str = "") -> ClientConnection:
    url = f"{node.ws}?token=tok-{user}" + (f"&{query}" if query else "")
    ws = await connect(url, open_timeout=10, max_queue=None)
    welcome = await recv_json(ws)
    assert welcome["op"] == "welcome"
    return ws


def run_events(thread_id: str, count: int) -> list[dict[str, Any]]:
    """A run of ``count`` events: started, thinking..., completed."""
    run_id = new_run_id(thread_id)
    events: list[dict[str, Any]] = [{"type": "agent_started", "run_id": run_id, "agent_name": "w"}]
    for step in range(count - 2):
        events.append(
            {
                "type": "agent_thinking",
                "run_id": run_id,
                "agent_name": "w",
                "payload": {"reasoning": f"step {step}", "step_number": step},
            }
        )
    events.append({"type": "agent_completed", "run_id": run_id, "agent_name": "w"})
    return events


async def collect(ws: ClientConnection, expected: int, wait: float = 60) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while len(frames) < expected:
        frame = await recv_json(ws, wait)
        if "type" in frame:
            frames.append(frame)
    return frames


def assert_in_order(frames: list[dict[str, Any]]) -> None:
    last: dict[str, int] = {}
    for frame in frames:
        thread = frame["thread_id"]
        assert frame["seq"] == last.get(thread, 0) + 1, (thread, frame["seq"], last.get(thread))
        last[thread] = frame["seq"]


@pytest.mark.timeout(180)
async def test_two_servers_and_a_worker_deliver_each_user_exactly_their_events(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    users = [f"user{n}" for n in range(10)]
    threads = {user: new_thread_id("redis_fanout") for user in users}
    per_user = 200
    events: list[dict[str, Any]] = []
    streams = [run_events(threads[user], per_user) for user in users]
    # Interleave the users' runs; each run stays in order.
    while any(streams):
        stream = random.choice([s for s in streams if s])
        events.append(stream.pop(0))
    # Ten bad events: a mismatched pair, an unknown thread.
    for n in range(5):
        events.append(
            {
                "type": "agent_thinking",
                "run_id": "run_websocket_factory_1757361062151_8_1a2b3c4d",
                "thread_id": "thread_websocket_factory_1757361062151_7_90c65fe4",
                "agent_name": "w",
                "payload": {"reasoning": str(n)},
            }
        )
        events.append(
            {"type": "agent_started", "run_id": new_run_id(new_thread_id()), "agent_name": "w"}
        )
    plan = {"threads": [[threads[u], u] for u in users], "events": events}
    async with server_node(redis_url, prefix) as one, server_node(redis_url, prefix) as two:
        clients: list[tuple[str, ClientConnection]] = []
        for index, user in enumerate(users):
            # Two connections per user; spread over both servers.
            clients.append((user, await connect_user(one if index % 2 else two, user)))
            clients.append((user, await connect_user(two if index % 2 else one, user)))
        try:
            outcome = await run_worker(redis_url, prefix, plan, tmp_path)
            received = await asyncio.gather(*(collect(ws, per_user) for _, ws in clients))
            for (user, _), frames in zip(clients, received, strict=True):
                assert {f["thread_id"] for f in frames} == {threads[user]}
                assert_in_order(frames)
            # Nothing more arrives for anyone: a ping answers before any stray event.
            for _, ws in clients:
                await ws.send(json.dumps({"op": "ping"}))
                assert (await recv_json(ws))["op"] == "pong"
        finally:
            for _, ws in clients:
                await ws.close()
    stats = outcome["stats"]
    assert stats["published"] == len(events) == 2010
    assert stats["accepted"] == 2000
    assert stats["published"] == stats["accepted"] + sum(stats["rejected"].values())
    assert stats["rejected"] == {"thread_mismatch": 5, "thread_not_found": 5}


@pytest.mark.timeout(120)
async def test_resume_on_another_server_gets_exactly_the_missing_events(
    redis_url: str, prefix: str
) -> None:
    options = {"prefix": prefix}
    agent = EventRouter(backend=redis_url, dead_letters="memory://", backend_options=options)
    async with agent, server_node(redis_url, prefix) as one, server_node(redis_url, prefix) as two:
        thread = new_thread_id("resume")
        await agent.threads.create(thread, "alice")
        events = run_events(thread, 102)
        ws = await connect_user(one, "alice")
        for event in events[:30]:
            assert await agent.publish(event)
        first = await collect(ws, 30)
        await ws.close()
        for event in events[30:80]:
            assert await agent.publish(event)
        ws2 = await connect_user(two, "alice", f"thread_id={thread}&after_seq={first[-1]['seq']}")
        try:
            frames = await recv_until(ws2, lambda f: f.get("seq") == 80)
            events_only = [f for f in frames if "type" in f]
            assert [f["seq"] for f in events_only] == list(range(31, 81))
            assert not any(f.get("op") == "gap" for f in frames)
            for event in events[80:]:
                assert await agent.publish(event)
            live = await collect(ws2, 22)
            assert [f["seq"] for f in live] == list(range(81, 103))
        finally:
            await ws2.close()


@pytest.mark.timeout(120)
async def test_bridge_in_a_worker_process_reaches_the_browser_through_another_server(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    # The agent runs in its own process with a publish-only router (no connections)
    # and the bridge; the browser is connected to a server process.
    thread = new_thread_id("bridged")
    plan = {"bridge_runs": [{"thread_id": thread, "user_id": "alice", "query": "q"}]}
    async with server_node(redis_url, prefix) as web:
        ws = await connect_user(web, "alice")
        try:
            outcome = await run_worker(redis_url, prefix, plan, tmp_path, "bridge")
            frames = await collect(ws, 5)
        finally:
            await ws.close()
    (run_id,) = outcome["runs"]
    assert [f["type"] for f in frames] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
    ]
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5]
    assert {f["run_id"] for f in frames} == {run_id}
    assert {f["thread_id"] for f in frames} == {thread}
    assert {f["agent_name"] for f in frames} == {"worker"}
    assert frames[3]["payload"]["result"] == {"hits": 3}
    assert frames[3]["payload"]["success"] is True
    assert frames[4]["payload"]["result"] == {"answer": "Q"}
    assert outcome["stats"]["accepted"] == 5 and outcome["stats"]["connections"] == 0


@pytest.mark.timeout(120)
async def test_ownership_lifecycle_and_seq_agree_under_concurrent_publishing(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    threads = [new_thread_id("contend") for _ in range(20)]
    runs = {thread: new_run_id(thread) for thread in threads}
    shared = []
    for thread in threads:
        run_id = runs[thread]
        shared.append({"type": "agent_started", "run_id": run_id, "agent_name": "w"})
        for n in range(40):
            shared.append(
                {
                    "type": "agent_thinking",
                    "run_id": run_id,
                    "agent_name": "w",
                    "payload": {"reasoning": str(n)},
                }
            )
    # Two worker processes race to own every thread (as different users, in opposite
    # orders) and to start every run; their rejections go to the shared Redis store.
    plan_a = {"claims": [[t, "ann"] for t in threads], "events": shared}
    plan_b = {"claims": [[t, "ben"] for t in reversed(threads)], "events": shared[::-1]}
    a, b = await asyncio.gather(
        run_worker(redis_url, prefix, plan_a, tmp_path, "a", dead_letters=redis_url),
        run_worker(redis_url, prefix, plan_b, tmp_path, "b", dead_letters=redis_url),
    )
    # One owner per thread, whichever process asked: both saw the same winner.
    owners_a = dict(zip(threads, a["owners"], strict=True))
    owners_b = dict(zip(reversed(threads), b["owners"], strict=True))
    assert owners_a == owners_b
    assert set(owners_a.values()) <= {"ann", "ben"}
    seqs: dict[str, list[int]] = {}
    for outcome, plan in ((a, plan_a), (b, plan_b)):
        for result, event in zip(outcome["results"], plan["events"], strict=True):
            if result["accepted"]:
                seqs.setdefault(event["run_id"], []).append(result["seq"])
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for thread in threads:
            accepted = sorted(seqs.get(runs[thread], []))
            assert accepted == list(range(1, len(accepted) + 1)), "duplicate or missing seq"
            assert int(await client.hget(prefix + "seq", thread)) == len(accepted)
            assert await client.hget(prefix + "threads", thread) == owners_a[thread]
        total_started = sum(
            1
            for outcome, plan in ((a, plan_a), (b, plan_b))
            for r, e in zip(outcome["results"], plan["events"], strict=True)
            if r["accepted"] and e["type"] == "agent_started"
        )
        assert total_started == len(threads)  # every run started exactly once
        rejected = 0
        for outcome in (a, b):
            stats = outcome["stats"]
            assert stats["published"] == stats["accepted"] + sum(stats["rejected"].values())
            assert set(stats["rejected"]) <= {"lifecycle_violation"}
            rejected += sum(stats["rejected"].values())
        # Every rejection of both processes is one record in the shared store, under
        # the backend's key prefix.
        counts = await client.hgetall(prefix + "dl:counts")
        assert {k: int(v) for k, v in counts.items() if int(v)} == (
            {"lifecycle_violation": rejected} if rejected else {}
        )
        assert await client.zcard(prefix + "dl:ids") == rejected
    finally:
        await client.aclose()


@pytest.mark.timeout(120)
async def test_subscriber_cut_off_by_redis_resubscribes_and_heals(
    private_redis: PrivateRedis,
) -> None:
    options = {"prefix": "cut:", "probe_interval": 0.5, "probe_timeout": 2.0}
    url = private_redis.url
    async with (
        EventRouter(backend=url, dead_letters="memory://", backend_options=options) as agent,
        EventRouter(backend=url, dead_letters="memory://", backend_options=options) as web,
    ):
        thread = new_thread_id("cutoff")
        await agent.threads.create(thread, "alice")
        conn = web.connect("alice", "c1")
        conn.opened()
        await web.attach(conn)
        # A tiny pub/sub output buffer: a burst of big events overflows it and
        # Redis disconnects the web router's subscription.
        private_redis.config("client-output-buffer-limit", "pubsub 8kb 4kb 1")
        big = "x" * 3000
        events = run_events(thread, 200)
        for event in events[1:-1]:
            event["payload"]["reasoning"] = big
        received: list[int] = []

        async def drain() -> None:
            async for frame in conn.frames():
                received.append(json.loads(frame)["seq"])
                if len(received) == len(events):
                    return

        reader = asyncio.create_task(drain())
        # agent_started first, then a concurrent burst of the thinking events (their
        # order among themselves does not matter to the lifecycle), then the end.
        results = [await agent.publish(events[0])]
        results += await asyncio.gather(*(agent.publish(e) for e in events[1:-1]))
        results.append(await agent.publish(events[-1]))
        assert all(results)
        await asyncio.wait_for(reader, 60)
        assert received == list(range(1, len(events) + 1))
        assert web.backend.stats()["resubscribes"] >= 1
        assert web.backend.stats()["healed"] >= 1
        conn.closed()


@pytest.mark.timeout(180)
async def test_redis_killed_mid_stream_loses_nothing(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    url = private_redis.url
    options = {"prefix": "kill:", "probe_interval": 0.3, "probe_timeout": 1.0}
    spool_db = f"sqlite:///{tmp_path}/spool.db"
    agent = EventRouter(
        backend=url,
        dead_letters="memory://",
        spool_size=200,
        spool_dead_letters=spool_db,
        backend_options=options,
    )
    web = EventRouter(backend=url, dead_letters="memory://", backend_options=options)
    from .conftest import serve, ws_connect

    async with agent, serve(web) as server:
        thread = new_thread_id("outage")
        await agent.threads.create(thread, "alice")
        conn = web.connect("alice", "c1")
        conn.opened()
        await web.attach(conn)
        received: dict[str, int] = {}

        async def drain() -> None:
            async for frame in conn.frames():
                data = json.loads(frame)
                received[data["event_id"]] = data["seq"]

        reader = asyncio.create_task(drain())
        events = run_events(thread, 1000)
        results = []
        for index, event in enumerate(events):
            if index == 300:
                private_redis.kill()
            results.append(await agent.publish(event))
        assert sum(r.spooled for r in results) == 200  # the spool filled up...
        overflow = [r for r in results if r.reason == "backend_unavailable"]
        assert len(overflow) == 500  # ...and the rest went to the local SQLite file
        private_redis.start()  # empty: a new history epoch
        await wait_for(lambda: agent.snapshot()["spool_pending"] == 0, 30, "spool flushed")
        reader.cancel()
        conn.closed()
        # Every event was delivered or has a dead-letter record; none vanished.
        records: dict[str, str] = {}
        for store in (agent.dead_letters, agent.spool_dead_letters):
            assert store is not None
            page = await store.list(limit=1000)
            records.update({r.event_id: r.reason for r in page.items if r.event_id})
        for result in results:
            assert result.event_id in received or result.event_id in records, result
        # Redis came back empty: what was spooled meets a store without the thread
        # (or, had the owner still been cached, without the run's state).
        assert set(records.values()) <= {
            "backend_unavailable",
            "thread_not_found",
            "lifecycle_violation",
        }
        assert list(records.values()).count("backend_unavailable") == 500
        stats = agent.snapshot()
        assert stats["published"] == stats["accepted"] + sum(stats["rejected"].values())
        epochs = web.backend.stats()["epoch_changes"] + agent.backend.stats()["epoch_changes"]
        assert epochs >= 1
        # The client resumes over a real WebSocket from the last seq it had: the old
        # history is gone, so it is told (a gap frame that resets the thread's seqs)
        # and then gets the new epoch's events.
        last = max(received.values())
        await agent.threads.create(thread, "alice")
        fresh = run_events(thread, 3)
        for event in fresh:
            assert await agent.publish(event)
        ws = await ws_connect(server, "alice", f"thread_id={thread}&after_seq={last}")
        try:
            frames = await recv_until(ws, lambda f: f.get("seq") == 3 and "type" in f)
            gap = next(f for f in frames if f.get("op") == "gap")
            assert gap["thread_id"] == thread and gap["reset"] is True
            assert [f["seq"] for f in frames if "type" in f] == [1, 2, 3]
        finally:
            await ws.close()


@pytest.mark.timeout(120)
async def test_client_resuming_across_an_empty_redis_restart_gets_a_gap_frame(
    private_redis: PrivateRedis,
) -> None:
    from .conftest import serve, ws_connect

    options = {"prefix": "epoch:", "probe_interval": 0.3, "probe_timeout": 1.0}
    router = EventRouter(
        backend=private_redis.url, dead_letters="memory://", backend_options=options
    )
    async with serve(router) as server:
        thread = new_thread_id("epoch")
        await router.threads.create(thread, "alice")
        events = run_events(thread, 12)
        ws = await ws_connect(server, "alice")
        assert (await recv_json(ws))["op"] == "welcome"
        for event in events[:10]:
            assert await router.publish(event)
        seen = await collect(ws, 10)
        await ws.close()
        private_redis.kill()
        private_redis.start()  # empty: threads, seq and history are gone
        await wait_for(
            lambda: router.backend.stats()["epoch_changes"] == 1, 20, "new epoch seen by the probe"
        )
        # The application registers the thread again and the agent goes on.
        await router.threads.create(thread, "alice")
        fresh = run_events(thread, 3)
        for event in fresh:
            assert await router.publish(event)
        ws = await ws_connect(server, "alice", f"thread_id={thread}&after_seq={seen[-1]['seq']}")
        try:
            frames = await recv_until(ws, lambda f: f.get("seq") == 3 and "type" in f)
            gap = next(f for f in frames if f.get("op") == "gap")
            assert gap["reset"] is True and gap["thread_id"] == thread
            assert [f["seq"] for f in frames if "type" in f] == [1, 2, 3]
            assert {f["run_id"] for f in frames if "type" in f} == {fresh[0]["run_id"]}
        finally:
            await ws.close()


@pytest.mark.timeout(120)
async def test_client_connected_through_an_empty_redis_restart_is_told_and_keeps_receiving(
    private_redis: PrivateRedis,
) -> None:
    from .conftest import serve, ws_connect

    options = {"prefix": "epoch2:", "probe_interval": 0.3, "probe_timeout": 1.0}
    router = EventRouter(
        backend=private_redis.url, dead_letters="memory://", backend_options=options
    )
    async with serve(router) as server:
        thread = new_thread_id("epoch")
        await router.threads.create(thread, "alice")
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            for event in run_events(thread, 6):
                assert await router.publish(event)
            assert [f["seq"] for f in await collect(ws, 6)] == [1, 2, 3, 4, 5, 6]
            private_redis.kill()
            private_redis.start()  # empty
            # The router notices by itself (its probe reads the epoch token).
            await wait_for(
                lambda: router.backend.stats()["epoch_changes"] == 1, 20, "new epoch seen"
            )
            # The application registers its thread again; the agent goes on.
            await router.threads.create(thread, "alice")
            for event in run_events(thread, 4):
                assert await router.publish(event)
            frames = await recv_until(ws, lambda f: f.get("seq") == 4 and "type" in f, 20)
            reset = [f for f in frames if f.get("op") == "gap"]
            assert reset == [
                {"op": "gap", "thread_id": thread, "from_seq": 1, "to_seq": 6, "reset": True}
            ]
            assert [f["seq"] for f in frames if "type" in f] == [1, 2, 3, 4]
        finally:
            await ws.close()


@pytest.mark.timeout(120)
async def test_probe_catches_a_subscription_that_delivers_nothing_and_heals(
    private_redis: PrivateRedis,
) -> None:
    from .redis_support import SilencingProxy

    async with SilencingProxy(private_redis.port) as proxy:
        web_options = {"prefix": "probe:", "probe_interval": 0.2, "probe_timeout": 0.5}
        web = EventRouter(backend=proxy.url, dead_letters="memory://", backend_options=web_options)
        agent = EventRouter(
            backend=private_redis.url,
            dead_letters="memory://",
            backend_options={"prefix": "probe:"},
        )
        async with agent, web:
            thread = new_thread_id("probe")
            await agent.threads.create(thread, "alice")
            conn = web.connect("alice", "c1")
            conn.opened()
            await web.attach(conn)
            events = run_events(thread, 40)
            for event in events[:10]:
                assert await agent.publish(event)
            frames = conn.frames()
            received = [json.loads(await anext(frames))["seq"] for _ in range(10)]
            # The subscription goes quiet without closing: no error anywhere.
            assert proxy.silence() == 1
            for event in events[10:]:
                assert await agent.publish(event)
            # Only the probe can notice; it resubscribes and heals from history,
            # with nothing more published.
            while len(received) < 40:
                with anyio_fail_after(20):
                    received.append(json.loads(await anext(frames))["seq"])
            assert web.backend.stats()["probe_failures"] >= 1
            assert received == list(range(1, 41))
            assert web.backend.stats()["healed"] >= 30
            conn.closed()
