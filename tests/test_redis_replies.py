"""Redis replies read many per socket read (``router.backends._resp``), and the
subscription that reads them, with hiredis and through redis-py alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from router import EventRouter, new_run_id, new_thread_id
from router.backends import redis as redis_backend
from router.backends._resp import ReplyReader
from router.connections import Connection

from .conftest import wait_for
from .helpers import close_connection, open_connection

pytestmark = pytest.mark.timeout(60)


def feed(chunks: list[bytes], *, eof: bool = False) -> asyncio.StreamReader:
    stream = asyncio.StreamReader()
    for chunk in chunks:
        stream.feed_data(chunk)
    if eof:
        stream.feed_eof()
    return stream


async def test_every_complete_reply_of_one_read_comes_back_at_once() -> None:
    stream = feed([b"+OK\r\n:7\r\n*2\r\n$2\r\nab\r\n:1\r\n$4\r\nhal"])
    reader = ReplyReader(stream, encoding="utf-8")
    assert await reader.replies() == ["OK", 7, ["ab", 1]]
    # The cut reply waits for the rest.
    waiting = asyncio.ensure_future(reader.replies())
    await asyncio.sleep(0)
    assert not waiting.done()
    stream.feed_data(b"f\r\n")
    assert await waiting == ["half"]


async def test_error_replies_come_back_in_their_place() -> None:
    stream = feed([b"-NOSCRIPT No matching script.\r\n:1\r\n-ERR wrong\r\n:2\r\n"])
    replies = await ReplyReader(stream, encoding="utf-8").read(4)
    assert isinstance(replies[0], NoScriptError)
    assert str(replies[0]) == "No matching script."
    assert replies[1] == 1
    # As redis-py would raise them: its classes, its wording.
    assert type(replies[2]) is ResponseError and str(replies[2]) == "wrong"
    assert replies[3] == 2


async def test_a_reply_that_means_the_connection_is_unusable_raises() -> None:
    # LOADING: redis-py drops the connection for it; so does every reader of it.
    reader = ReplyReader(feed([b":1\r\n-LOADING Redis is loading\r\n:2\r\n"]), encoding=None)
    with pytest.raises(BusyLoadingError):
        await reader.read(3)


async def test_a_resp3_false_is_a_reply_and_pushes_are_not() -> None:
    stream = feed([b"#f\r\n>2\r\n$10\r\ninvalidate\r\n_\r\n:1\r\n"])
    reader = ReplyReader(stream, encoding="utf-8")
    assert await reader.read(2) == [False, 1]


async def test_read_waits_for_exactly_its_count_across_reads() -> None:
    stream = feed([b":1\r\n:2"])
    reader = ReplyReader(stream, encoding=None)
    task = asyncio.ensure_future(reader.read(3))
    await asyncio.sleep(0)
    stream.feed_data(b"\r\n$1\r\nx\r\n:4\r\n")
    assert await task == [1, 2, b"x"]
    assert await reader.read(1) == [4]


async def test_a_closed_connection_is_a_connection_error() -> None:
    reader = ReplyReader(feed([b":1\r\n"], eof=True), encoding="utf-8")
    assert await reader.read(1) == [1]
    with pytest.raises(RedisConnectionError):
        await reader.read(1)


@pytest.fixture(params=["hiredis", "redis-py"])
def replies_via(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The subscription read many messages per socket read (hiredis), or one by one
    through redis-py (where hiredis is missing)."""
    if request.param == "redis-py":
        monkeypatch.setattr(redis_backend, "reply_reader", lambda conn: None)
    return str(request.param)


@contextlib.asynccontextmanager
async def alice_on_redis(
    redis_url: str, prefix: str
) -> AsyncIterator[tuple[EventRouter, Connection, str, str]]:
    """A router on Redis; alice's connection, watched; her thread with a started run."""
    async with EventRouter(
        backend=redis_url, dead_letters="memory://", backend_options={"prefix": prefix}
    ) as router:
        thread = new_thread_id("replies")
        await router.threads.create(thread, "alice")
        conn = open_connection(router, "alice")
        await router.backend.watch("alice")
        run_id = new_run_id(thread)
        assert await router.publish({"type": "agent_started", "run_id": run_id, "agent_name": "w"})
        try:
            yield router, conn, thread, run_id
        finally:
            close_connection(conn)


async def test_the_subscription_delivers_in_order_either_way(
    redis_url: str, prefix: str, replies_via: str
) -> None:
    async with alice_on_redis(redis_url, prefix) as (router, conn, _, run_id):
        results = await asyncio.gather(
            *(
                router.publish(
                    {
                        "type": "agent_thinking",
                        "run_id": run_id,
                        "agent_name": "w",
                        "payload": {"reasoning": f"step {n}"},
                    }
                )
                for n in range(200)
            )
        )
        assert [r.seq for r in results] == list(range(2, 202))
        frames: list[dict[str, Any]] = []

        def arrived() -> bool:
            frames.extend(json.loads(raw) for raw in conn.take_queued())
            return len(frames) >= 201

        await wait_for(arrived, 20, "every frame through the subscription")
        assert [f["seq"] for f in frames] == list(range(1, 202))
        assert [f["payload"]["reasoning"] for f in frames[1:]] == [f"step {n}" for n in range(200)]


async def test_a_gap_a_repeat_and_a_step_back_in_one_read(
    redis_url: str, prefix: str, replies_via: str
) -> None:
    # Messages handled in order within one read of the subscription: the in-order
    # ones at once, a gap healed from history, a repeat and a seq that went back
    # dropped.
    async with alice_on_redis(redis_url, prefix) as (router, conn, thread, _):
        backend: Any = router.backend
        frames: list[dict[str, Any]] = []

        def arrived(count: int) -> Any:
            def check() -> bool:
                frames.extend(json.loads(raw) for raw in conn.take_queued())
                return len(frames) >= count

            return check

        await wait_for(arrived(1), 10, "agent_started")

        def frame(seq: int, text: str) -> str:
            body = {"type": "custom", "seq": seq, "thread_id": thread, "payload": {"t": text}}
            return json.dumps(body)

        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        healed = backend.healed
        try:
            # Seq 3 is in history but its message never came: 4 arrives after 2.
            now_ms = int(time.time() * 1000)
            await client.xadd(
                prefix + "h:" + thread, {"f": frame(3, "three"), "t": now_ms}, id="3-1"
            )
            async with client.pipeline(transaction=False) as pipe:
                channel = prefix + "u:alice"
                for seq, text in ((2, "two"), (4, "four"), (4, "again"), (3, "late"), (5, "five")):
                    pipe.publish(channel, f"{seq} {thread} {frame(seq, text)}")
                await pipe.execute()
        finally:
            await client.aclose()
        await wait_for(arrived(5), 10, "the injected frames")
        frames.extend(json.loads(raw) for raw in conn.take_queued())
        assert [(f["seq"], f["payload"].get("t")) for f in frames] == [
            (1, None),
            (2, "two"),
            (3, "three"),  # from history
            (4, "four"),
            (5, "five"),
        ]
        assert backend.healed == healed + 1


async def test_an_unwatched_user_is_forgotten_by_the_subscription(
    redis_url: str, prefix: str
) -> None:
    async with EventRouter(
        backend=redis_url, dead_letters="memory://", backend_options={"prefix": prefix}
    ) as router:
        backend: Any = router.backend
        await wait_for(lambda: backend.subscribed, 10, "the subscription up")
        await backend.watch("alice")
        channel = prefix + "u:alice"
        assert channel in backend._pubsub.channels
        backend.unwatch("alice")
        await wait_for(
            lambda: (
                channel not in backend._pubsub.channels
                and channel not in backend._pubsub.pending_unsubscribe_channels
            ),
            10,
            "the unsubscribe confirmed",
        )
