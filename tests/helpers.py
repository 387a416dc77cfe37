"""Helpers for the router-core tests: events, in-process connections, frame checks.

Everything here drives the real router; nothing of ours is mocked. In-process
connections are made the way the middleware makes them (``router.connect``,
``opened``, ``hub.add``) and read by draining their outbox.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from router import EventRouter, new_connection_id, new_run_id, new_thread_id
from router.connections import Connection
from router.deadletters import DeadLetterRecord, DeadLetterStore

from .conftest import recv_json

AGENT = "tester"

DEFAULT_PAYLOADS: dict[str, dict[str, Any]] = {
    "agent_started": {},
    "agent_thinking": {"reasoning": "thinking"},
    "tool_executing": {"tool_name": "search"},
    "tool_completed": {"tool_name": "search"},
    "agent_completed": {"result": "done"},
    "agent_error": {"error": "boom"},
    "progress_update": {"progress": {"done": 1}},
    "custom": {"notification_type": "note"},
}


def ev(
    kind: str, run_id: Any, payload: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """An inbound event as an agent would publish it (a plain dict)."""
    event: dict[str, Any] = {"type": kind, "run_id": run_id, "agent_name": AGENT}
    event["payload"] = dict(DEFAULT_PAYLOADS[kind]) if payload is None else payload
    event.update(fields)
    return event


def thinking(run_id: str, text: str = "thinking", **fields: Any) -> dict[str, Any]:
    return ev("agent_thinking", run_id, {"reasoning": text}, **fields)


async def new_thread(router: EventRouter, user: str, operation: str = "test") -> str:
    """A fresh canonical thread owned by ``user``."""
    return str(await router.threads.create(new_thread_id(operation), user))


async def start_run(router: EventRouter, thread_id: str) -> str:
    """A new run of ``thread_id`` with its ``agent_started`` accepted."""
    run_id = new_run_id(thread_id)
    result = await router.publish(ev("agent_started", run_id))
    assert result.accepted, result
    return run_id


# ---------------------------------------------------------------- in-process connections


def open_connection(
    router: EventRouter, user: str, threads: Iterable[str] | None = None
) -> Connection:
    """A live connection of ``user``, registered the way the middleware does it.

    ``threads`` None is ALL mode; otherwise the set of threads it subscribed to.
    """
    conn = router.connect(user, new_connection_id())
    conn.opened()
    conn.threads = None if threads is None else set(threads)
    router.hub.add(conn)
    return conn


def drain(conn: Connection) -> list[dict[str, Any]]:
    """Every frame queued in the connection's outbox right now, parsed."""
    return [json.loads(raw) for raw in conn.take_queued()]


def close_connection(conn: Connection) -> None:
    """Close an in-process connection (and both ends of its outbox)."""
    conn.close(1000)
    conn.closed()


# ---------------------------------------------------------------- dead letters


async def all_dead_letters(store: DeadLetterStore) -> list[DeadLetterRecord]:
    records: list[DeadLetterRecord] = []
    cursor = None
    while True:
        page = await store.list(limit=1000, cursor=cursor)
        records.extend(page.items)
        if page.next_cursor is None:
            return records
        cursor = page.next_cursor


def count_by_reason(records: Iterable[DeadLetterRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.reason] = counts.get(record.reason, 0) + 1
    return counts


# ---------------------------------------------------------------- frame checks


def is_event(frame: dict[str, Any]) -> bool:
    return "op" not in frame and "seq" in frame


def seqs_by_thread(frames: Iterable[dict[str, Any]]) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = {}
    for frame in frames:
        if is_event(frame):
            seqs.setdefault(frame["thread_id"], []).append(frame["seq"])
    return seqs


async def frames_before_pong(ws: ClientConnection, within: float = 10.0) -> list[dict[str, Any]]:
    """Send a ping and return every frame that arrived before its pong.

    The server answers in order, so this is a barrier: whatever was queued for
    this connection before the ping is in the result.
    """
    await ws.send(json.dumps({"op": "ping"}))
    frames = []
    deadline = time.monotonic() + within
    while True:
        frame = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if frame.get("op") == "pong":
            return frames
        frames.append(frame)


async def frames_until_closed(
    ws: ClientConnection, within: float = 10.0
) -> tuple[list[dict[str, Any]], int | None]:
    """Read until the server closes; return the frames and the close code."""
    frames = []
    async with asyncio.timeout(within):
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed:
                break
            frames.append(json.loads(raw))
    return frames, ws.close_code


async def send_json(ws: ClientConnection, data: Any) -> None:
    await ws.send(json.dumps(data))
