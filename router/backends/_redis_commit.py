"""The commit path to Redis: every publisher of a process shares one pipelined connection.

Each accepted event costs one run of the commit script. A publisher that finds the
connection idle makes its round trip itself; publishers that commit while one is
in flight (agents run concurrently) queue, and the pipe's writer task sends them
together, in the order they called, and reads their replies back in that order:
N concurrent commits cost one write and one round trip. Redis runs the scripts
one after another in that order, so per-thread order is the order of the calls.

Cancelling a publisher is safe: Redis runs each script whole or not at all. A caller
cancelled while its entry waits in the queue commits nothing; once its entry was
taken for writing it may be committed (its reply is then dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

__all__ = ["CommitPipe"]

logger = logging.getLogger("router.redis")

_Entry = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


class CommitPipe:
    """Runs one Lua script for many callers over a dedicated, pipelined connection."""

    def __init__(self, client: Any, script: str, *, max_batch: int = 512) -> None:
        self._pool = client.connection_pool
        #: seconds a round trip may take (the client's socket timeout)
        self._timeout: float | None = self._pool.connection_kwargs.get("socket_timeout")
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._evalsha = [_bulk(b"EVALSHA"), _bulk(self._sha.encode())]
        self._max_batch = max_batch
        self._queue: list[_Entry] = []
        self._wakeup = asyncio.Event()
        self._conn: Any = None
        self._running = False
        #: a round trip is in flight (the connection is in use)
        self._busy = False
        #: round trips made and scripts run (batching shows as runs > round trips)
        self.round_trips = 0
        self.runs = 0

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        """Run the script; raises what redis-py raises when Redis does not answer."""
        if not self._running:
            raise ConnectionError("the commit pipe is not running (the backend is stopped)")
        argset = (len(keys), *keys, *args)
        if not self._busy and not self._queue:
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
        """The writer: the router's background task for as long as it runs."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                # While a caller makes its own round trip (busy), it wakes this
                # writer again when it is done.
                while self._queue and not self._busy:
                    taken = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                    # A caller cancelled before its turn: its event is not committed.
                    batch = [entry for entry in taken if not entry[1].done()]
                    if batch:
                        self._busy = True
                        try:
                            await self._send(batch)
                        finally:
                            self._busy = False
        finally:
            self._running = False
            for _, future in self._queue:
                if not future.done():
                    future.set_exception(ConnectionError("the router is stopping"))
            self._queue.clear()
            await self._drop()

    async def _drop(self) -> None:
        """Forget the connection; it may be mid-reply, so it is never reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def _send(self, batch: list[_Entry]) -> None:
        try:
            replies = await self._execute([args for args, _ in batch])
        except Exception as exc:
            # Unknown which of the batch ran: the connection is dropped and each
            # caller gets the error (Redis not answering: its event is spooled). Any
            # other fault fails this batch only, never every later commit.
            if not isinstance(exc, RedisError | OSError):
                logger.exception("commit batch failed")
            await self._drop()
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(ConnectionError(f"commit interrupted: {exc!r}"))
            raise
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

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
        return self._conn

    async def _execute(self, argsets: list[tuple[Any, ...]]) -> list[Any]:
        replies = await self._round_trip(argsets)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # Redis's script cache was flushed while connected: load it and run those
            # again, in their order. (Should another process load it between two of
            # this batch's commands, the later ones ran first: only after a flush.)
            conn = await self._connection()
            async with asyncio.timeout(self._timeout):
                await conn.send_command("SCRIPT", "LOAD", self._script, check_health=False)
                await conn.read_response()
            again = await self._round_trip([argsets[i] for i in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies

    async def _round_trip(self, argsets: list[tuple[Any, ...]]) -> list[Any]:
        conn = await self._connection()
        prefix = self._evalsha
        replies: list[Any] = []
        # One deadline for the write and all the replies (asyncio's TimeoutError is
        # an OSError: the caller treats it as Redis not answering).
        async with asyncio.timeout(self._timeout):
            await conn.send_packed_command(
                b"".join([_pack(prefix, args) for args in argsets]), check_health=False
            )
            for _ in argsets:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    # An error reply is read in full: the next reply follows intact.
                    replies.append(exc)
        self.round_trips += 1
        self.runs += len(argsets)
        return replies


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
