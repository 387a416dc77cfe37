"""The commit path to Redis: every publisher of a process shares one pipelined connection.

Each accepted event costs one run of the commit script. Publishers that commit at
the same time (agents run concurrently) are written to Redis together, in the
order they called, and their replies read back in that order: N concurrent
commits cost one write and one round trip, and a lone publisher waits for its
own round trip only. Redis runs the scripts one after another in that order, so
per-thread order is the order of the calls.

Cancelling a publisher is safe: an entry not yet written is skipped (nothing is
committed), an entry already written is committed in full (its reply is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

__all__ = ["CommitPipe"]

_Entry = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


class CommitPipe:
    """Runs one Lua script for many callers over a dedicated, pipelined connection."""

    def __init__(self, client: Any, script: str, *, max_batch: int = 512) -> None:
        self._pool = client.connection_pool
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._evalsha = [_bulk(b"EVALSHA"), _bulk(self._sha.encode())]
        self._max_batch = max_batch
        self._queue: list[_Entry] = []
        self._wakeup = asyncio.Event()
        self._conn: Any = None
        self._running = False
        #: round trips made and scripts run (batching shows as runs > round trips)
        self.round_trips = 0
        self.runs = 0

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        """Run the script; raises what redis-py raises when Redis does not answer."""
        if not self._running:
            raise ConnectionError("the commit pipe is not running (the backend is stopped)")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(((len(keys), *keys, *args), future))
        self._wakeup.set()
        return await future

    async def run(self) -> None:
        """The writer: the router's background task for as long as it runs."""
        self._running = True
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    taken = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                    # A caller cancelled before its turn: its event is not committed.
                    batch = [entry for entry in taken if not entry[1].done()]
                    if batch:
                        await self._send(batch)
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
        except (RedisError, OSError) as exc:
            # Unknown which of the batch ran: the connection is dropped and each
            # caller told that Redis did not answer (its event is spooled).
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
            conn = self._pool.make_connection()
            await conn.connect()
            self._conn = conn
        return self._conn

    async def _execute(self, argsets: list[tuple[Any, ...]]) -> list[Any]:
        replies = await self._round_trip(argsets)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # Redis restarted (or its script cache was flushed): load it and run
            # those again, in their order. All of a batch miss it together, so
            # none of them ran.
            conn = await self._connection()
            await conn.send_command("SCRIPT", "LOAD", self._script, check_health=False)
            await conn.read_response()
            again = await self._round_trip([argsets[i] for i in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies

    async def _round_trip(self, argsets: list[tuple[Any, ...]]) -> list[Any]:
        conn = await self._connection()
        prefix = self._evalsha
        await conn.send_packed_command(
            b"".join([_pack(prefix, args) for args in argsets]), check_health=False
        )
        replies: list[Any] = []
        # One deadline for the batch's replies, not one timeout context per reply.
        async with asyncio.timeout(conn.socket_timeout):
            for _ in argsets:
                try:
                    replies.append(await conn.read_response(timeout=math.inf))
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
