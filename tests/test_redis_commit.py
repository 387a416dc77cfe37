"""The Redis commit path: concurrent publishers share round trips, in call order,
through a restart of Redis's script cache and through cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from router import EventRouter, new_run_id, new_thread_id
from router.backends import _redis_commit
from router.backends._redis_commit import CommitPipe

from .conftest import wait_for
from .helpers import close_connection, open_connection
from .redis_support import PrivateRedis

pytestmark = pytest.mark.timeout(60)


def thinking(run_id: str, n: int) -> dict[str, Any]:
    return {
        "type": "agent_thinking",
        "run_id": run_id,
        "agent_name": "w",
        "payload": {"reasoning": f"step {n}"},
    }


async def started_router(redis_url: str, prefix: str) -> EventRouter:
    router = EventRouter(
        backend=redis_url, dead_letters="memory://", backend_options={"prefix": prefix}
    )
    await router.start()
    return router


async def test_concurrent_publishers_share_round_trips_and_get_contiguous_seqs(
    redis_url: str, prefix: str
) -> None:
    router = await started_router(redis_url, prefix)
    try:
        runs = []
        for index in range(20):
            thread = new_thread_id("pipe")
            await router.threads.create(thread, f"user{index}")
            run_id = new_run_id(thread)
            assert await router.publish(
                {"type": "agent_started", "run_id": run_id, "agent_name": "w"}
            )
            runs.append(run_id)
        pipe: CommitPipe = router.backend._commits  # type: ignore[attr-defined]
        trips, runs_before = pipe.round_trips, pipe.runs

        async def agent(run_id: str) -> list[int]:
            seqs = []
            for n in range(30):
                result = await router.publish(thinking(run_id, n))
                assert result.accepted, result
                seqs.append(result.seq)
            return seqs

        every = await asyncio.gather(*(agent(run_id) for run_id in runs))
        for seqs in every:
            assert seqs == list(range(2, 32))  # agent_started was 1
        made = pipe.runs - runs_before
        assert made == 20 * 30
        # Twenty agents at once: far fewer round trips than scripts run.
        assert pipe.round_trips - trips < made / 4
    finally:
        await router.stop()


async def test_commit_reloads_the_script_after_redis_forgot_it(redis_url: str, prefix: str) -> None:
    router = await started_router(redis_url, prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        thread = new_thread_id("flush")
        await router.threads.create(thread, "alice")
        run_id = new_run_id(thread)
        assert await router.publish({"type": "agent_started", "run_id": run_id, "agent_name": "w"})
        await client.script_flush()
        # Several at once, all missing the script: reloaded once, run in order.
        results = await asyncio.gather(*(router.publish(thinking(run_id, n)) for n in range(5)))
        assert [r.seq for r in results] == [2, 3, 4, 5, 6]
        assert router.stats.spooled == 0
    finally:
        await client.aclose()
        await router.stop()


async def test_a_publisher_cancelled_before_its_turn_commits_nothing(
    redis_url: str, prefix: str
) -> None:
    router = await started_router(redis_url, prefix)
    try:
        thread = new_thread_id("cancel")
        await router.threads.create(thread, "alice")
        run_id = new_run_id(thread)
        assert await router.publish({"type": "agent_started", "run_id": run_id, "agent_name": "w"})
        conn = open_connection(router, "alice")
        await router.backend.watch("alice")
        # Within one pass of the loop (nothing before the pipe waits) the first
        # makes its round trip and the second queues behind it; the second is
        # cancelled before the pipe's writer takes the queue.
        pipe: CommitPipe = router.backend._commits  # type: ignore[attr-defined]
        first = asyncio.ensure_future(router.publish(thinking(run_id, 1)))
        doomed = asyncio.ensure_future(router.publish(thinking(run_id, 2)))
        await asyncio.sleep(0)
        assert pipe._busy and len(pipe._queue) == 1
        doomed.cancel()
        assert (await first).seq == 2
        with pytest.raises(asyncio.CancelledError):
            await doomed
        after = await router.publish(thinking(run_id, 3))
        assert after.seq == 3  # the cancelled event took no seq
        frames: list[dict[str, Any]] = []

        def arrived() -> bool:
            frames.extend(json.loads(raw) for raw in conn.take_queued())
            return len(frames) >= 2

        await wait_for(arrived, 10, "both frames through the subscription")
        assert [f["payload"]["reasoning"] for f in frames] == ["step 1", "step 3"]
        close_connection(conn)
    finally:
        await router.stop()


async def test_publish_after_stop_fails_fast_instead_of_hanging(
    redis_url: str, prefix: str
) -> None:
    router = await started_router(redis_url, prefix)
    pipe: CommitPipe = router.backend._commits  # type: ignore[attr-defined]
    await router.stop()
    with pytest.raises(ConnectionError):
        await pipe.call(["k"], [1])


async def test_lifecycle_rules_and_settings_hold_in_the_script(redis_url: str, prefix: str) -> None:
    router = EventRouter(
        backend=redis_url,
        dead_letters="memory://",
        backend_options={"prefix": prefix, "history_size": 5, "run_ttl": 42},
    )
    async with router:
        thread = new_thread_id("rules")
        await router.threads.create(thread, "alice")
        run_id = new_run_id(thread)
        early = await router.publish(thinking(run_id, 0))
        assert early.reason == "lifecycle_violation"
        assert early.detail == (
            f"run {run_id!r} has not started: its first event must be agent_started"
        )
        started = {"type": "agent_started", "run_id": run_id, "agent_name": "w"}
        assert await router.publish(started)
        again = await router.publish(started)
        assert again.detail == f"run {run_id!r} has already started"
        orphan = await router.publish(
            {
                "type": "tool_completed",
                "run_id": run_id,
                "agent_name": "w",
                "payload": {"tool_name": "search"},
            }
        )
        assert orphan.detail == (
            f"tool_completed for search without an open tool_executing in run {run_id!r}"
        )
        for n in range(8):
            assert await router.publish(thinking(run_id, n))
        done = {"type": "agent_completed", "run_id": run_id, "agent_name": "w"}
        assert await router.publish(done)
        late = await router.publish(thinking(run_id, 99))
        assert late.detail == (
            f"run {run_id!r} already ended with agent_completed; no agent_thinking may follow"
        )
        client = aioredis.Redis.from_url(redis_url)
        try:
            # The settings written into the script: a history of 5, the finished run's TTL.
            assert await client.xlen(prefix + "h:" + thread) == 5
            assert 0 < await client.ttl(prefix + "r:" + run_id) <= 42
        finally:
            await client.aclose()


async def test_a_publisher_cancelled_mid_round_trip_leaves_the_pipe_usable(
    redis_url: str, prefix: str
) -> None:
    async with EventRouter(
        backend=redis_url, dead_letters="memory://", backend_options={"prefix": prefix}
    ) as router:
        thread = new_thread_id("midway")
        await router.threads.create(thread, "alice")
        run_id = new_run_id(thread)
        assert await router.publish({"type": "agent_started", "run_id": run_id, "agent_name": "w"})
        pipe: CommitPipe = router.backend._commits  # type: ignore[attr-defined]
        cut = asyncio.ensure_future(router.publish(thinking(run_id, 1)))
        await asyncio.sleep(0)
        assert pipe._busy  # written, its reply not read yet
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        # Redis ran it or not, atomically; the connection with the unread reply is
        # dropped and the next commit gets the next seq either way.
        after = await router.publish(thinking(run_id, 2))
        assert after.accepted and after.seq in (2, 3)
        history = await router.backend.read_history(thread, 0)
        seqs = [seq for seq, _ in history.frames]
        assert seqs == list(range(1, after.seq + 1))


async def test_a_batch_that_meets_a_flushed_script_cache_runs_again_in_order(
    redis_url: str, prefix: str
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pipe = CommitPipe(client, "return redis.call('INCR', KEYS[1])")
    pipe.open()
    key = prefix + "counter"
    try:
        assert await pipe.call([key], []) == 1  # connects and loads the script
        await client.script_flush()
        trips = pipe.round_trips
        # Three in one batch: all meet NOSCRIPT, none ran; loaded once, run again.
        assert await pipe._execute([(1, key), (1, key), (1, key)]) == [2, 3, 4]
        assert pipe.round_trips - trips == 2
    finally:
        await pipe._drop()
        await client.aclose()


async def test_a_fault_that_is_not_redis_fails_one_batch_and_the_pipe_goes_on(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pipe = CommitPipe(client, "return redis.call('INCR', KEYS[1])")
    pipe.open()
    writer = asyncio.ensure_future(pipe.run())
    key = prefix + "counter"
    real = _redis_commit._pack
    calls = 0

    def flaky(prefix: list[bytes], args: tuple[Any, ...]) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:  # the writer's first batch
            raise ValueError("a bug")
        return real(prefix, args)

    monkeypatch.setattr(_redis_commit, "_pack", flaky)
    try:
        # The first call goes directly; the next three queue behind it and go to
        # the writer as one batch, which fails; then both paths work again.
        results = await asyncio.gather(
            *(pipe.call([key], []) for _ in range(4)), return_exceptions=True
        )
        assert results[0] == 1
        assert all(isinstance(r, ValueError) for r in results[1:])
        more = await asyncio.gather(*(pipe.call([key], []) for _ in range(4)))
        assert more == [2, 3, 4, 5]
        assert not writer.done()
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await client.aclose()


@pytest.fixture(params=["hiredis", "redis-py"])
def replies_via(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Replies read many per socket read (hiredis), or one by one through redis-py
    (where hiredis is missing)."""
    if request.param == "redis-py":
        monkeypatch.setattr(_redis_commit, "reply_reader", lambda conn: None)
    return str(request.param)


class Gate:
    """Holds one of the pipe's steps until the test opens it."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.reached = asyncio.Event()

    def hold(self, step: Any) -> Any:
        async def held(*args: Any, **kwargs: Any) -> Any:
            self.reached.set()
            await self.open.wait()
            return await step(*args, **kwargs)

        return held


def hold_replies(monkeypatch: pytest.MonkeyPatch) -> Gate:
    """The reader's reads wait at the gate (the direct path reads on its own)."""
    gate = Gate()
    monkeypatch.setattr(_redis_commit, "_some_replies", gate.hold(_redis_commit._some_replies))
    return gate


def hold_second_write(pipe: CommitPipe) -> Gate:
    """The connection's next write goes through; the one after (the writer's batch,
    once a lone caller has gone first) waits at the gate."""
    conn = pipe._conn
    real = conn.send_packed_command
    gate = Gate()
    writes = 0

    async def second_write_held(*args: Any, **kwargs: Any) -> Any:
        nonlocal writes
        writes += 1
        if writes == 2:
            gate.reached.set()
            await gate.open.wait()
        return await real(*args, **kwargs)

    conn.send_packed_command = second_write_held
    return gate


@contextlib.asynccontextmanager
async def running_pipe(
    url: str, script: str = "return redis.call('INCR', KEYS[1])", **options: Any
) -> AsyncIterator[tuple[CommitPipe, aioredis.Redis, asyncio.Future[None]]]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    pipe = CommitPipe(client, script, **options)
    pipe.open()
    writer = asyncio.ensure_future(pipe.run())
    try:
        yield pipe, client, writer
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await client.aclose()


async def test_the_writer_sends_the_next_batch_before_the_last_is_answered(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, replies_via: str
) -> None:
    key = prefix + "counter"
    async with running_pipe(redis_url) as (pipe, _, _):
        gate = hold_replies(monkeypatch)
        assert await pipe.call([key], []) == 1  # alone: directly, not through the reader
        trips = pipe.round_trips
        # The first of these finds the pipe idle and goes directly; the other two
        # queue behind it and are the writer's first batch.
        first = [asyncio.ensure_future(pipe.call([key], [])) for _ in range(3)]
        await wait_for(lambda: len(pipe._in_flight) == 2, 5, "the first batch written")
        assert first[0].done() and first[0].result() == 2
        second = [asyncio.ensure_future(pipe.call([key], [])) for _ in range(2)]
        # Written while the first batch's replies are still unread.
        await wait_for(lambda: len(pipe._in_flight) == 4, 5, "the second batch written")
        await wait_for(lambda: pipe.round_trips - trips == 3, 5, "three writes")
        assert not any(f.done() for f in first[1:] + second)
        gate.open.set()
        assert await asyncio.gather(*first, *second) == [2, 3, 4, 5, 6]


async def test_a_lone_caller_arriving_while_a_batch_is_written_queues_behind_it(
    redis_url: str, prefix: str, replies_via: str
) -> None:
    key = prefix + "counter"
    async with running_pipe(redis_url) as (pipe, _, _):
        assert await pipe.call([key], []) == 1  # connects
        gate = hold_second_write(pipe)
        # The first goes directly; the second is the writer's batch, held mid-write.
        calls = [asyncio.ensure_future(pipe.call([key], [])) for _ in range(2)]
        await asyncio.wait_for(gate.reached.wait(), 5)
        assert await calls[0] == 2
        assert pipe._writing
        # Nothing queued, nothing busy, yet the connection is being written: a
        # caller arriving now must queue, not make a round trip of its own (its
        # reply would be taken for the batch's).
        late = asyncio.ensure_future(pipe.call([key], []))
        await asyncio.sleep(0)
        assert len(pipe._queue) == 1 and not pipe._busy
        gate.open.set()
        assert await asyncio.gather(calls[1], late) == [3, 4]


async def test_flushed_script_cache_with_batches_in_flight_runs_them_again_in_order(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, replies_via: str
) -> None:
    key = prefix + "list"
    script = "redis.call('RPUSH', KEYS[1], ARGV[1]); return redis.call('LLEN', KEYS[1])"
    async with running_pipe(redis_url, script) as (pipe, client, _):
        gate = hold_replies(monkeypatch)
        assert await pipe.call([key], ["a0"]) == 1  # directly; loads the script
        # a1 goes directly; a2, a3 are batch A, run before the flush.
        calls = [asyncio.ensure_future(pipe.call([key], [f"a{n}"])) for n in (1, 2, 3)]
        await wait_for(lambda: len(pipe._in_flight) == 2, 5, "batch A written")
        await client.script_flush()
        # Batches B and C meet the empty cache; D arrives while they wait to run again.
        calls += [asyncio.ensure_future(pipe.call([key], [f"b{n}"])) for n in range(2)]
        await wait_for(lambda: len(pipe._in_flight) == 4, 5, "batch B written")
        calls += [asyncio.ensure_future(pipe.call([key], [f"c{n}"])) for n in range(2)]
        await wait_for(lambda: len(pipe._in_flight) == 6, 5, "batch C written")
        gate.open.set()
        # D queues behind B and C (written after them: it meets NOSCRIPT too, or
        # waits while they run again).
        calls += [asyncio.ensure_future(pipe.call([key], [f"d{n}"])) for n in range(2)]
        results = await asyncio.gather(*calls)
        assert results == list(range(2, 11))
        assert await client.lrange(key, 0, -1) == [
            "a0",
            "a1",
            "a2",
            "a3",
            "b0",
            "b1",
            "c0",
            "c1",
            "d0",
            "d1",
        ]
        assert await pipe.call([key], ["e"]) == 11
        await client.delete(key)


async def test_a_connection_lost_with_batches_in_flight_fails_them_all_and_reconnects(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch, replies_via: str
) -> None:
    key = "counter"
    async with running_pipe(private_redis.url) as (pipe, _, _):
        gate = hold_replies(monkeypatch)  # the reader's reads wait
        assert await pipe.call([key], []) == 1
        # One directly; then batch A, which Redis answers (the replies wait unread).
        answered = [asyncio.ensure_future(pipe.call([key], [])) for _ in range(3)]
        await wait_for(lambda: len(pipe._in_flight) == 2, 5, "batch A written")
        assert await answered[0] == 2
        assert private_redis.process is not None
        private_redis.process.send_signal(signal.SIGSTOP)  # Redis stops answering
        lost = [asyncio.ensure_future(pipe.call([key], [])) for _ in range(2)]
        await wait_for(lambda: len(pipe._in_flight) == 4, 5, "batch B written")
        first_connection = pipe._conn
        private_redis.kill()  # the connection ends with B unanswered
        gate.open.set()
        results = await asyncio.wait_for(asyncio.gather(*lost, return_exceptions=True), 10)
        assert all(isinstance(r, ConnectionError | OSError | RedisError) for r in results), results
        # A's replies reached this host before the end: each was read, or (when the
        # reset discarded them) failed with the connection. Nobody waits.
        early = await asyncio.gather(*answered[1:], return_exceptions=True)
        assert all(r in (3, 4) or isinstance(r, ConnectionError | OSError) for r in early), early
        assert not pipe._in_flight and not pipe._busy and pipe._conn is not first_connection
        private_redis.start()  # empty: the pipe reconnects and loads its script
        assert await pipe.call([key], []) == 1
        more = await asyncio.gather(*(pipe.call([key], []) for _ in range(5)))
        assert more == [2, 3, 4, 5, 6]


async def test_a_read_failure_with_the_pipe_full_lets_the_queue_go_out(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, replies_via: str
) -> None:
    key = prefix + "counter"
    async with running_pipe(redis_url, max_in_flight=2) as (pipe, _, _):
        real = _redis_commit._some_replies
        gate = Gate()
        failed = False

        async def fail_once(*args: Any) -> list[Any]:
            nonlocal failed
            gate.reached.set()
            await gate.open.wait()
            if not failed:
                failed = True
                raise RedisConnectionError("Connection closed by server.")
            return await real(*args)

        monkeypatch.setattr(_redis_commit, "_some_replies", fail_once)
        assert await pipe.call([key], []) == 1
        calls = [asyncio.ensure_future(pipe.call([key], [])) for _ in range(5)]
        # One directly, two in flight (the cap), two queued with no room.
        await wait_for(lambda: len(pipe._in_flight) == 2, 5, "the pipe full")
        assert await calls[0] == 2
        assert len(pipe._queue) == 2
        gate.open.set()
        results = await asyncio.gather(*calls[1:], return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results[:2])
        # The queued two went out on a new connection, after the failure.
        assert all(isinstance(r, int) for r in results[2:]), results


async def test_stopping_mid_write_or_mid_rerun_leaves_no_caller_waiting(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = prefix + "counter"
    async with running_pipe(redis_url) as (pipe, _, writer):
        assert await pipe.call([key], []) == 1
        gate = hold_second_write(pipe)
        calls = [asyncio.ensure_future(pipe.call([key], [])) for _ in range(3)]
        await asyncio.wait_for(gate.reached.wait(), 5)  # the writer's batch, held
        assert await calls[0] == 2
        writer.cancel()
        results = await asyncio.wait_for(asyncio.gather(*calls[1:], return_exceptions=True), 5)
        assert all(isinstance(r, ConnectionError) for r in results), results
    script = "redis.call('RPUSH', KEYS[1], ARGV[1]); return redis.call('LLEN', KEYS[1])"
    async with running_pipe(redis_url, script) as (pipe, client, writer):
        replies = hold_replies(monkeypatch)
        assert await pipe.call([key + "l"], ["x"]) == 1
        calls = [asyncio.ensure_future(pipe.call([key + "l"], [n])) for n in range(3)]
        await wait_for(lambda: len(pipe._in_flight) == 2, 5, "a batch in flight")
        await client.script_flush()
        calls += [asyncio.ensure_future(pipe.call([key + "l"], [n])) for n in range(2)]
        await wait_for(lambda: len(pipe._in_flight) == 4, 5, "a batch meeting NOSCRIPT")
        rerun = Gate()
        monkeypatch.setattr(pipe, "_execute", rerun.hold(pipe._execute))
        replies.open.set()
        await asyncio.wait_for(rerun.reached.wait(), 5)  # the re-run, held
        writer.cancel()
        results = await asyncio.wait_for(asyncio.gather(*calls[3:], return_exceptions=True), 5)
        assert all(isinstance(r, ConnectionError) for r in results), results
        await client.delete(key + "l")
