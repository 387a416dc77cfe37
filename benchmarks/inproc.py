"""The ``inproc`` scenario: ``EventRouter.publish`` to in-memory connections, no sockets.

Run as ``python -m benchmarks.inproc`` (JSON config on stdin, ``RESULT <json>`` on
stdout), pinned to one CPU. Connections are made the way the middleware makes them
(``router.connect``, ``opened``, ``hub.add``) and their outboxes are drained between
rounds, outside the timed part; every drained frame is then checked for isolation,
order and completeness, as the socket scenarios do.

Only ``publish`` is timed: validation (schema, ids, owner, lifecycle), the frame
serialised once, history, and the hand-off to each connection's outbox. Each event
dict is built before its round starts, as an agent would have it ready.

It also times the stages alone on the same event (``floors``), which bounds what any
change to the pipeline around them could reach.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import router
from router import EventRouter, new_connection_id, new_run_id, new_thread_id
from router.connections import Connection
from router.events import prepare_frame, read_event

from .common import AGENT_NAME, SERVER_CPU, bench_event, cpu_ns, median, pin_to


async def _setup(
    router: EventRouter, users: int, per_user: int, *, attach: bool = False
) -> tuple[list[tuple[str, str, str]], list[Connection]]:
    """One thread per user with a started run, and ``per_user`` connections each,
    past the run's agent_started. ``attach``: connected the way the middleware does
    (subscribed before the run starts, its frame taken), as a backend that delivers
    through a subscription needs; otherwise added to the hub after it."""
    targets: list[tuple[str, str, str]] = []
    conns: list[Connection] = []
    for index in range(users):
        user = f"user{index:04d}"
        thread_id = str(await router.threads.create(new_thread_id("bench"), user))
        run_id = new_run_id(thread_id)
        mine = [router.connect(user, new_connection_id()) for _ in range(per_user)]
        for conn in mine:
            conn.opened()
            conn.threads = {thread_id}
            if attach:
                await router.attach(conn)
        started = await router.publish(
            {"type": "agent_started", "run_id": run_id, "agent_name": AGENT_NAME}
        )
        if not started.accepted:
            raise RuntimeError(f"agent_started rejected: {started.reason}")
        targets.append((user, thread_id, run_id))
        if not attach:
            for conn in mine:
                conn.last_sent[thread_id] = started.seq or 0
                router.hub.add(conn)
        conns.extend(mine)
    for conn in conns if attach else ():
        while not await asyncio.wait_for(conn.next_batch(), 30):  # its agent_started
            pass
    return targets, conns


def _drain(conn: Connection, into: list[str]) -> None:
    # As the connection's writer takes them (a full outbox would close it).
    into.extend(conn.take_queued())


async def _rep(per_thread: int, users: int, per_user: int) -> dict[str, Any]:
    router = EventRouter(dead_letters="memory://")
    await router.start()
    try:
        targets, conns = await _setup(router, users, per_user)
        received: dict[Connection, list[str]] = {conn: [] for conn in conns}
        publish = router.publish
        rejected = 0
        elapsed = 0.0
        cpu = 0.0
        for n in range(per_thread):
            events = [bench_event(run_id, user, n, 0) for user, _, run_id in targets]
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for event in events:
                if not (await publish(event)).accepted:
                    rejected += 1
            elapsed += time.perf_counter() - wall0
            cpu += time.process_time() - cpu0
            for conn in conns:
                _drain(conn, received[conn])
        return _figures(targets, received, per_thread, per_user, rejected, elapsed, cpu)
    finally:
        await router.stop()


def _figures(
    targets: list[tuple[str, str, str]],
    received: dict[Connection, list[str]],
    per_thread: int,
    per_user: int,
    rejected: int,
    elapsed: float,
    cpu: float,
) -> dict[str, Any]:
    """A repetition's figures, every frame checked for isolation, order and
    completeness (seq 1 of each thread is its run's agent_started, not counted)."""
    published = per_thread * len(targets)
    owner = {thread_id: user for user, thread_id, _ in targets}
    delivered = lost = leaks = order_errors = 0
    for conn, frames in received.items():
        next_seq = 2
        for raw in frames:
            frame = json.loads(raw)
            if owner.get(frame["thread_id"]) != conn.user_id or (
                frame["payload"]["data"]["u"] != conn.user_id
            ):
                leaks += 1
                continue
            if frame["seq"] != next_seq:
                order_errors += 1
            next_seq = frame["seq"] + 1
            delivered += 1
        lost += max(0, per_thread - len(frames))
    return {
        "verified": rejected == 0
        and lost == 0
        and leaks == 0
        and order_errors == 0
        and delivered == published * per_user,
        "published": published,
        "delivered": delivered,
        "rejected": rejected,
        "lost": lost,
        "leaks": leaks,
        "order_errors": order_errors,
        "seconds": elapsed,
        "published_per_s": published / elapsed,
        "delivered_per_s": delivered / elapsed,
        "us_per_publish": elapsed / published * 1e6,
        "cpu_us_per_publish": cpu / published * 1e6,
    }


def _floors(repeat: int = 20000) -> dict[str, float]:
    """Microseconds per call of each stage alone, on the benchmark's event: stage 1
    (validation, with the payload serialised), the frame, and the hand-off of the
    frame to one connection."""
    thread_id = new_thread_id("bench")
    run_id = new_run_id(thread_id)
    event = bench_event(run_id, "user0000", 1, time.monotonic_ns())
    read = read_event(event)
    assert not isinstance(read, Exception)
    parsed, payload_json = read

    def timed(fn: Any) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(repeat):
                fn()
            best = min(best, time.perf_counter() - start)
        return best / repeat * 1e6

    conn = Connection(new_connection_id(), "user0000", outbox_size=repeat + 1)
    conn.opened()
    seq = iter(range(1, 10 * repeat))

    def hand_off() -> None:
        conn.offer(thread_id, next(seq), "frame")
        if conn.backlog >= repeat:
            conn.take_queued()

    figures = {
        "read_event_us": timed(lambda: read_event(event)),
        "prepare_frame_us": timed(
            lambda: prepare_frame(
                parsed,
                event_id="0" * 32,
                thread_id=thread_id,
                timestamp="2026-01-01T00:00:00.000Z",
                payload_json=payload_json,
            )
        ),
        "connection_offer_us": timed(hand_off),
    }
    conn.close(1000)
    conn.closed()
    return figures


async def _agents_rep(
    per_thread: int, users: int, per_user: int, options: dict[str, Any], redis_pid: int | None
) -> dict[str, Any]:
    """One task per thread publishes its own events, as concurrent agents do; each
    connection's frames are taken as its writer would take them. Timed from the first
    publish to the last frame taken (on Redis, frames arrive through the subscription)."""
    router = EventRouter(dead_letters="memory://", **options)
    await router.start()
    try:
        targets, conns = await _setup(router, users, per_user, attach=True)
        received: dict[Connection, list[str]] = {conn: [] for conn in conns}
        rejected = 0

        async def agent(user: str, run_id: str) -> None:
            nonlocal rejected
            for n in range(per_thread):
                if not (await router.publish(bench_event(run_id, user, n, 0))).accepted:
                    rejected += 1

        async def drain(conn: Connection) -> None:
            frames = received[conn]
            while len(frames) < per_thread:
                batch = await conn.next_batch()
                if batch is None:
                    return
                frames.extend(batch)

        redis0 = cpu_ns(redis_pid) if redis_pid else 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.wait_for(
            asyncio.gather(
                *(agent(user, run_id) for user, _, run_id in targets),
                *(drain(conn) for conn in conns),
            ),
            120,
        )
        elapsed = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        redis_cpu = (cpu_ns(redis_pid) - redis0) / 1e9 if redis_pid else None
        figures = _figures(targets, received, per_thread, per_user, rejected, elapsed, cpu)
        figures["redis_cpu_us_per_event"] = (
            redis_cpu / figures["published"] * 1e6 if redis_cpu is not None else None
        )
        return figures
    finally:
        await router.stop()


async def run(config: dict[str, Any]) -> dict[str, Any]:
    scenario = config["scenario"]
    if scenario["kind"] == "inproc-agents":
        options: dict[str, Any] = {}
        if config.get("backend"):
            options = {
                "backend": config["backend"],
                "backend_options": {"prefix": config["prefix"]},
            }
        reps = []
        for index in range(scenario["reps"]):
            rep = await _agents_rep(
                scenario["per_thread"],
                scenario["users"],
                scenario["conns_per_user"],
                options,
                config.get("redis_pid"),
            )
            print(
                f"[inproc-agents] rep {index + 1}: {rep['published_per_s']:,.0f} published/s, "
                f"{rep['cpu_us_per_publish']:.1f} us CPU/publish, "
                f"{'verified' if rep['verified'] else 'FAILED'}",
                file=sys.stderr,
                flush=True,
            )
            reps.append(rep)
        setup = {"router_package": os.path.dirname(router.__file__)}
        return {"systems": {"router": {"reps": reps, "setup": setup, "errors": []}}}
    reps = []
    for index in range(scenario["reps"]):
        rep = await _rep(scenario["per_thread"], scenario["users"], scenario["conns_per_user"])
        print(
            f"[inproc] rep {index + 1}: {rep['published_per_s']:,.0f} published/s, "
            f"{rep['us_per_publish']:.1f} us/publish, "
            f"{'verified' if rep['verified'] else 'FAILED'}",
            file=sys.stderr,
            flush=True,
        )
        reps.append(rep)
    floors = _floors()
    setup = {"floors": floors, "router_package": os.path.dirname(router.__file__)}
    return {
        "systems": {"router": {"reps": reps, "setup": setup, "errors": []}},
        "floors": floors,
        "median_us_per_publish": median(rep["us_per_publish"] for rep in reps),
    }


def main() -> int:
    config = json.loads(sys.stdin.read())
    pinned = pin_to(config.get("cpu", SERVER_CPU)) if config.get("cpu", 0) >= 0 else False
    try:
        result = asyncio.run(run(config))
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "systems": {}}
    result["pinned"] = pinned
    result["scenario"] = config["scenario"]
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
