"""The commit path to Redis: every publisher of a process shares one pipelined connection.

Each accepted event costs one run of the commit script. A publisher that finds the
connection idle makes its round trip itself; publishers that commit while one is
in flight (agents run concurrently) queue, and the pipe's writer sends what queued
as one batch, in the order they called. The writer does not wait for a batch's
replies before it sends the next (up to ``max_in_flight`` batches are out at
once): Redis always has the next batch to run while the router works on the
replies of the last, and N concurrent commits cost one write. A reader takes the
replies back, batch after batch, in the order written. Redis runs the scripts of
one connection one after another in that order, so per-thread order is the order
of the calls.

Cancelling a publisher is safe: Redis runs each script whole or not at all. A caller
cancelled while its entry waits in the queue commits nothing; once its entry was
written it may be committed (its reply is then dropped).

When Redis does not answer, or the connection fails, every batch in flight fails
(it is unknown which of them ran) and the connection is dropped; the next batch
opens a new one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from ._resp import ReplyReader, reply_reader

__all__ = ["CommitPipe"]

logger = logging.getLogger("router.redis")

_Entry = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


class CommitPipe:
    """Runs one Lua script for many callers over a dedicated, pipelined connection."""

    def __init__(
        self, client: Any, script: str, *, max_batch: int = 512, max_in_flight: int = 2048
    ) -> None:
        self._pool = client.connection_pool
        #: seconds a round trip may take (the client's socket timeout)
        self._timeout: float | None = self._pool.connection_kwargs.get("socket_timeout")
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._evalsha = [_bulk(b"EVALSHA"), _bulk(self._sha.encode())]
        self._max_batch = max_batch
        #: commits written and not answered yet, at most
        self._max_in_flight = max_in_flight
        self._queue: list[_Entry] = []
        #: commits written whose replies are not read yet, oldest first
        self._in_flight: collections.deque[_Entry] = collections.deque()
        #: commits that met NOSCRIPT, to run again once nothing is in flight
        self._rerun: list[_Entry] = []
        self._wakeup = asyncio.Event()
        self._replied = asyncio.Event()
        self._conn: Any = None
        #: the connection's replies, many per socket read (None: through redis-py)
        self._replies: ReplyReader | None = None
        #: bumped when the connection is dropped: a reader of the old one stands down
        self._generation = 0
        self._running = False
        #: a caller makes its own round trip (the connection is in use)
        self._busy = False
        #: round trips made (batches written) and scripts run (batching shows as
        #: runs > round trips)
        self.round_trips = 0
        self.runs = 0

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        """Run the script; raises what redis-py raises when Redis does not answer."""
        if not self._running:
            raise ConnectionError("the commit pipe is not running (the backend is stopped)")
        argset = (len(keys), *keys, *args)
        if not self._busy and not self._queue and not self._in_flight:
            return await self._call_directly(argset)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((argset, future))
        self._wakeup.set()
        return await future

    async def _call_directly(self, argset: tuple[Any, ...]) -> Any:
        """Nobody else is committing: make the round trip in the caller's task,
        saving the hand-off to the writer and back (two passes of the event loop,
        most of a lone publisher's wait)."""
        self._busy = True
        try:
            (reply,) = await self._execute([argset])
        except BaseException:
            # Failed or cancelled mid-reply: the connection is not reused.
            await self._drop()
            raise
        finally:
            self._busy = False
            if self._queue:
                self._wakeup.set()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def open(self) -> None:
        """Accept calls; :meth:`run` (started right after) writes what queues."""
        self._running = True

    async def run(self) -> None:
        """The writer (and, beside it, the reader): the router's background task for
        as long as it runs."""
        reader = asyncio.ensure_future(self._read_replies())
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                # While a caller makes its own round trip (busy), it wakes this
                # writer again when it is done; the reader does when a batch is in.
                while self._queue and not self._busy and len(self._in_flight) < self._max_in_flight:
                    taken = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                    # A caller cancelled before its turn: its event is not committed.
                    batch = [entry for entry in taken if not entry[1].done()]
                    if batch:
                        await self._write(batch)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            self._running = False
            self._fail_in_flight(ConnectionError("the router is stopping"))
            for _, future in self._queue:
                if not future.done():
                    future.set_exception(ConnectionError("the router is stopping"))
            self._queue.clear()
            await self._drop()

    async def _write(self, batch: list[_Entry]) -> None:
        """Send one batch; its replies are the reader's."""
        try:
            conn = await self._connection()
            payload = b"".join([_pack(self._evalsha, args) for args, _ in batch])
            async with asyncio.timeout(self._timeout):
                await conn.send_packed_command(payload, check_health=False)
        except Exception as exc:
            # Not written, or written in part: the connection is dropped; this batch
            # and those in flight before it fail (unknown which of them ran).
            self._in_flight.extend(batch)
            await self._fail(exc)
            return
        self._in_flight.extend(batch)
        self.round_trips += 1
        self.runs += len(batch)
        self._replied.set()

    async def _read_replies(self) -> None:
        """Resolve the commits in flight with their replies, in the order written,
        as the replies arrive (Redis answers a long batch in parts: the first
        callers go on while it runs the rest)."""
        in_flight = self._in_flight
        while True:
            if not in_flight:
                if self._rerun:
                    await self._run_again()
                    continue
                self._replied.clear()
                await self._replied.wait()
                continue
            generation = self._generation
            try:
                async with asyncio.timeout(self._timeout):
                    replies = await self._some_replies()
            except Exception as exc:
                if generation == self._generation:
                    await self._fail(exc)
                continue
            if generation != self._generation:
                continue  # failed meanwhile (a write failed and dropped the connection)
            for reply in replies:
                entry = in_flight.popleft()
                future = entry[1]
                if future.done():
                    continue
                if isinstance(reply, Exception):
                    if isinstance(reply, NoScriptError):
                        # Redis's script cache was flushed while connected: run it
                        # again once the rest is back (the writer holds back).
                        self._rerun.append(entry)
                        self._busy = True
                    else:
                        future.set_exception(reply)
                else:
                    future.set_result(reply)
            self._wakeup.set()

    async def _some_replies(self) -> list[Any]:
        if self._replies is not None:
            return await self._replies.replies()
        try:
            return [await self._conn.read_response()]
        except ResponseError as exc:
            return [exc]

    async def _run_again(self) -> None:
        """Load the script and run the commits that met NOSCRIPT, in their order.
        (Should another process load it meanwhile, later commands of this pipe ran
        before them: only after a SCRIPT FLUSH.)"""
        rerun, self._rerun = self._rerun, []
        try:
            replies = await self._execute([args for args, _ in rerun])
        except Exception as exc:
            await self._drop()
            replies = [exc] * len(rerun)
        finally:
            self._busy = False
            self._wakeup.set()
        _resolve(rerun, replies)

    async def _fail(self, exc: BaseException) -> None:
        if not isinstance(exc, RedisError | OSError):
            logger.exception("commit batch failed", exc_info=exc)
        self._fail_in_flight(exc)
        await self._drop()

    def _fail_in_flight(self, exc: BaseException) -> None:
        failed = [*self._in_flight, *self._rerun]
        self._in_flight.clear()
        if self._rerun:
            self._rerun = []
            self._busy = False
            self._wakeup.set()
        for _, future in failed:
            if not future.done():
                future.set_exception(exc)

    async def _drop(self) -> None:
        """Forget the connection; it may be mid-reply, so it is never reused."""
        conn, self._conn = self._conn, None
        self._replies = None
        self._generation += 1
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def _connection(self) -> Any:
        if self._conn is None:
            # Without a socket timeout of its own: each round trip (write and
            # replies) runs under one deadline instead. redis-py enforces a socket
            # timeout on writes with asyncio.wait_for, which on Python 3.11 can
            # swallow a cancellation that arrives as the write completes.
            kwargs = {**self._pool.connection_kwargs, "socket_timeout": None}
            conn = self._pool.connection_class(**kwargs)
            async with asyncio.timeout(self._timeout):
                await conn.connect()
                # Loaded on every new connection (a restarted Redis has an empty
                # script cache), so a batch meets NOSCRIPT only after a SCRIPT FLUSH.
                await conn.send_command("SCRIPT", "LOAD", self._script, check_health=False)
                await conn.read_response()
            self._conn = conn
            self._replies = reply_reader(conn)
        return self._conn

    async def _read(self, count: int) -> list[Any]:
        """``count`` replies off the connection, error replies as values."""
        if self._replies is not None:
            return await self._replies.read(count)
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(await self._conn.read_response())
            except ResponseError as exc:
                # An error reply is read in full: the next reply follows intact.
                replies.append(exc)
        return replies

    async def _execute(self, argsets: list[tuple[Any, ...]]) -> list[Any]:
        """One round trip with nothing else in flight (a lone caller, or a re-run)."""
        replies = await self._round_trip(argsets)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            conn = await self._connection()
            async with asyncio.timeout(self._timeout):
                await conn.send_command("SCRIPT", "LOAD", self._script, check_health=False)
                (loaded,) = await self._read(1)
                if isinstance(loaded, Exception):
                    raise loaded
            again = await self._round_trip([argsets[i] for i in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies

    async def _round_trip(self, argsets: list[tuple[Any, ...]]) -> list[Any]:
        conn = await self._connection()
        prefix = self._evalsha
        # One deadline for the write and all the replies (asyncio's TimeoutError is
        # an OSError: the caller treats it as Redis not answering).
        async with asyncio.timeout(self._timeout):
            await conn.send_packed_command(
                b"".join([_pack(prefix, args) for args in argsets]), check_health=False
            )
            replies = await self._read(len(argsets))
        self.round_trips += 1
        self.runs += len(argsets)
        return replies


def _resolve(batch: list[_Entry], replies: list[Any]) -> None:
    for (_, future), reply in zip(batch, replies, strict=True):
        if future.done():
            continue
        if isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _pack(prefix: list[bytes], args: tuple[Any, ...]) -> bytes:
    """One command in RESP: ``prefix`` (already encoded) followed by ``args``.

    redis-py's general packer costs tens of microseconds for the commit's 19
    arguments; these are only ``str`` and ``int``.
    """
    parts = [b"*%d\r\n" % (len(prefix) + len(args)), *prefix]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)
