"""The commit path to Redis: every publisher of a process shares one pipelined connection.

Each accepted event costs one run of the commit script. A publisher that finds the
pipe idle makes its round trip itself. Publishers that commit while anything is in
flight (agents run concurrently) queue, and the pipe's writer sends what queued as
one write, in the order they called. The writer does not wait for the replies of
what it sent before it sends more (up to ``max_in_flight`` commands unanswered):
Redis always has the next commands to run while the router works on the replies
of the last. A reader takes the replies back as they arrive and hands each to its
caller, in the order written. Redis runs one connection's commands one after
another in that order, so per-thread order is the order of the calls.

Only one of these uses the connection at a time for writing: a lone caller's round
trip (``_busy``), the writer (``_writing``), or the re-run after a flushed script
cache; the reader reads while commands are in flight.

Cancelling a publisher is safe: Redis runs each script whole or not at all. A caller
cancelled while its entry waits in the queue commits nothing; once its entry was
written it may be committed (its reply is then dropped).

When Redis does not answer, or the connection fails, every command in flight fails
(it is unknown which of them ran) and the connection is dropped; what is still
queued goes out on a new one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
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
        self._load = _pack([_bulk(b"SCRIPT"), _bulk(b"LOAD")], (script,))
        self._max_batch = max_batch
        #: commands written and not answered yet, at most
        self._max_in_flight = max_in_flight
        self._queue: list[_Entry] = []
        #: commands written whose replies are not read yet, oldest first
        self._in_flight: collections.deque[_Entry] = collections.deque()
        #: commands that met NOSCRIPT, run again once nothing is in flight (while
        #: there are any, the writer holds back)
        self._rerun: list[_Entry] = []
        self._wakeup = asyncio.Event()  # the writer's
        self._replied = asyncio.Event()  # the reader's: something was written
        self._conn: Any = None
        #: the connection's replies, many per socket read (None: through redis-py)
        self._replies: ReplyReader | None = None
        #: bumped when the connection is dropped: a reader of the old one stands down
        self._generation = 0
        self._running = False
        #: a lone caller makes its own round trip
        self._busy = False
        #: the writer is connecting or sending
        self._writing = False
        #: writes made (each a round trip when nothing else is in flight) and scripts
        #: run (batching shows as runs > round_trips)
        self.round_trips = 0
        self.runs = 0

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        """Run the script; raises what redis-py raises when Redis does not answer."""
        if not self._running:
            raise ConnectionError("the commit pipe is not running (the backend is stopped)")
        argset = (len(keys), *keys, *args)
        if not (self._busy or self._writing or self._queue or self._in_flight or self._rerun):
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
        reader = asyncio.ensure_future(self._reader())
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                # A lone caller's round trip or a re-run wakes the writer again when
                # done; the reader does as replies come in.
                while self._queue and not self._busy and not self._rerun:
                    room = self._max_in_flight - len(self._in_flight)
                    if room <= 0:
                        break
                    taken = self._queue[: min(self._max_batch, room)]
                    del self._queue[: len(taken)]
                    # A caller cancelled before its turn: its event is not committed.
                    batch = [entry for entry in taken if not entry[1].done()]
                    if batch:
                        await self._write(batch)
        finally:
            self._running = False
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            stopping = ConnectionError("the router is stopping")
            _fail_entries([*self._in_flight, *self._rerun, *self._queue], stopping)
            self._in_flight.clear()
            self._rerun = []
            self._queue.clear()
            await self._drop()

    async def _write(self, batch: list[_Entry]) -> None:
        """Send one batch; its replies are the reader's."""
        try:
            payload = b"".join([_pack(self._evalsha, args) for args, _ in batch])
        except Exception as exc:
            # A fault of ours, before anything was written: this batch fails alone.
            logger.exception("commit batch could not be packed")
            _fail_entries(batch, exc)
            return
        self._writing = True
        written = False
        try:
            conn, _ = await self._connection()
            # In flight before the first byte goes out: its replies may come back
            # before this task runs again.
            self._in_flight.extend(batch)
            written = True
            self._replied.set()
            async with asyncio.timeout(self._timeout):
                await conn.send_packed_command(payload, check_health=False)
            self.round_trips += 1
            self.runs += len(batch)
        except Exception as exc:
            # Not connected (nothing written), or written in part: the connection is
            # dropped and what is in flight fails (unknown which of it ran).
            if not isinstance(exc, RedisError | OSError):
                logger.exception("writing commits failed")
            if not written:
                _fail_entries(batch, exc)
            await self._fail(exc)
        except BaseException:
            if not written:
                _fail_entries(batch, ConnectionError("the router is stopping"))
            raise  # run() fails what is in flight
        finally:
            self._writing = False
            self._replied.set()

    async def _reader(self) -> None:
        """Hand replies to their callers for as long as the pipe runs. A fault here
        fails what is in flight and the reader goes on: no caller is left waiting."""
        while True:
            try:
                await self._read_some()
            except Exception as exc:
                logger.exception("commit reader failed")
                await self._fail(exc)

    async def _read_some(self) -> None:
        in_flight = self._in_flight
        if not in_flight:
            if self._rerun and not self._writing:
                await self._run_again()
                return
            self._replied.clear()
            await self._replied.wait()
            return
        generation = self._generation
        conn, replies_of = self._conn, self._replies
        try:
            async with asyncio.timeout(self._timeout):
                replies = await _some_replies(conn, replies_of)
        except Exception as exc:
            if generation == self._generation:
                if not isinstance(exc, RedisError | OSError):
                    logger.exception("reading commit replies failed")
                await self._fail(exc)
            return
        if generation != self._generation:
            return  # failed meanwhile (a write failed and dropped the connection)
        if len(replies) > len(in_flight):
            await self._fail(
                RedisConnectionError("more replies than commands sent: connection out of step")
            )
            return
        for reply in replies:
            entry = in_flight.popleft()
            future = entry[1]
            if future.done():
                continue
            if isinstance(reply, NoScriptError):
                # Redis's script cache was flushed while connected: run it again
                # once the rest is back (the writer holds back meanwhile).
                self._rerun.append(entry)
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        if self._queue:
            self._wakeup.set()  # room in flight again (the writer may be at the cap)

    async def _run_again(self) -> None:
        """Load the script and run the commands that met NOSCRIPT, in their order.
        (Should another process load it meanwhile, commands written after them ran
        first: only after a SCRIPT FLUSH.)"""
        rerun = self._rerun
        try:
            replies = await self._execute([args for args, _ in rerun], load=True)
        except Exception as exc:
            await self._drop()
            replies = [exc] * len(rerun)
        except BaseException:
            _fail_entries(rerun, ConnectionError("the router is stopping"))
            self._rerun = []
            raise
        self._rerun = []
        self._wakeup.set()
        _resolve(rerun, replies)

    async def _fail(self, exc: BaseException) -> None:
        """The connection failed: what is in flight fails with ``exc``; it is dropped."""
        failed = [*self._in_flight, *self._rerun]
        self._in_flight.clear()
        self._rerun = []
        _fail_entries(failed, exc)
        await self._drop()
        self._wakeup.set()  # what is queued goes out on a new connection

    async def _drop(self) -> None:
        """Forget the connection; it may be mid-reply, so it is never reused."""
        conn, self._conn = self._conn, None
        self._replies = None
        self._generation += 1
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def _connection(self) -> tuple[Any, ReplyReader | None]:
        if self._conn is None:
            # Without a socket timeout of its own: each round trip (write and
            # replies) runs under one deadline instead. redis-py enforces a socket
            # timeout on writes with asyncio.wait_for, which on Python 3.11 can
            # swallow a cancellation that arrives as the write completes. RESP2:
            # no pushes between the replies.
            kwargs = {**self._pool.connection_kwargs, "socket_timeout": None, "protocol": 2}
            conn = self._pool.connection_class(**kwargs)
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.connect()
                    # Loaded on every new connection (a restarted Redis has an empty
                    # script cache): a command meets NOSCRIPT only after a SCRIPT FLUSH.
                    await conn.send_command("SCRIPT", "LOAD", self._script, check_health=False)
                    await conn.read_response()
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                raise
            if not self._running or self._conn is not None:
                # Stopped meanwhile, or another path connected first: not this one.
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                if not self._running:
                    raise ConnectionError("the commit pipe stopped")
            else:
                self._conn = conn
                self._replies = reply_reader(conn)
        return self._conn, self._replies

    async def _execute(self, argsets: list[tuple[Any, ...]], *, load: bool = False) -> list[Any]:
        """One round trip with nothing else in flight (a lone caller, or a re-run,
        which ``load`` s the script first in the same write)."""
        conn, replies_of = await self._connection()
        payload = b"".join([_pack(self._evalsha, args) for args in argsets])
        expected = len(argsets) + (1 if load else 0)
        # One deadline for the write and all the replies (asyncio's TimeoutError is
        # an OSError: the caller treats it as Redis not answering).
        async with asyncio.timeout(self._timeout):
            await conn.send_packed_command(
                self._load + payload if load else payload, check_health=False
            )
            replies = await _read(conn, replies_of, expected)
        self.round_trips += 1
        self.runs += len(argsets)
        if load:
            loaded = replies.pop(0)
            if isinstance(loaded, Exception):
                raise loaded
            return replies
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            again = await self._execute([argsets[i] for i in missing], load=True)
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies


async def _read(conn: Any, replies_of: ReplyReader | None, count: int) -> list[Any]:
    """``count`` replies off the connection, error replies as values."""
    if replies_of is not None:
        return await replies_of.read(count)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            # An error reply is read in full: the next reply follows intact.
            replies.append(exc)
    return replies


async def _some_replies(conn: Any, replies_of: ReplyReader | None) -> list[Any]:
    """At least one reply: all that one read of the socket brought."""
    if replies_of is not None:
        return await replies_of.replies()
    return await _read(conn, None, 1)


def _fail_entries(entries: list[_Entry], exc: BaseException) -> None:
    for _, future in entries:
        if not future.done():
            future.set_exception(exc)


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
