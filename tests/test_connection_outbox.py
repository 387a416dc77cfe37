"""A connection's outbox: batches in order, bounded, and closing wakes whoever waits."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from router.connections import CLOSE_SLOW_CONSUMER, Connection

pytestmark = pytest.mark.timeout(10)


def open_conn(size: int) -> Connection:
    conn = Connection("c1", "alice", outbox_size=size)
    conn.opened()
    return conn


async def test_the_writer_takes_a_long_queue_in_bounded_batches_in_order() -> None:
    conn = open_conn(500)
    for seq in range(1, 151):
        assert conn.offer("t", seq, f"f{seq}")
    sizes, frames = [], []
    while conn.backlog:
        batch = await conn.next_batch()
        assert batch is not None
        sizes.append(len(batch))
        frames.extend(batch)
    assert sizes == [64, 64, 22]
    assert frames == [f"f{seq}" for seq in range(1, 151)]
    conn.close(1000)
    assert await conn.next_batch() is None
    conn.closed()


async def test_live_traffic_into_a_full_outbox_closes_it_as_a_slow_consumer() -> None:
    conn = open_conn(3)
    assert all(conn.offer("t", seq, "f") for seq in (1, 2, 3))
    assert not conn.offer("t", 4, "f")
    assert conn.close_code == CLOSE_SLOW_CONSUMER
    conn.closed()


async def test_a_replay_waits_for_room_and_closing_releases_it() -> None:
    conn = open_conn(2)
    await conn.put("a")
    await conn.put("b")
    waiting = asyncio.ensure_future(conn.put("c"))
    await asyncio.sleep(0)
    assert not waiting.done()  # full: it waits for the writer
    assert list(await conn.next_batch() or ()) == ["a", "b"]
    await waiting  # the batch taken made room
    blocked = asyncio.ensure_future(conn.put_event("t", 1, "d"))
    await conn.put("e")
    await asyncio.sleep(0)
    assert not blocked.done()
    conn.close(1000)
    with pytest.raises(anyio.ClosedResourceError):
        await blocked
    conn.closed()
