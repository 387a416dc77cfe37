"""Reading many Redis replies per socket read, off a connection redis-py opened.

redis-py reads one reply per ``await`` (``read_response``), with a layer of checks
around each. On the two paths that carry every event, the commit pipe's replies and
the subscription's messages, that is most of what reading costs. ``ReplyReader``
parses whatever one read of the socket brought, with hiredis, and hands back every
complete reply at once.

It takes over the connection's stream once redis-py has connected it (handshake,
AUTH, SELECT done, its replies read): from then on only this reader reads it.
:func:`reply_reader` returns None when that is not possible (hiredis missing, or a
redis-py whose connection does not expose its ``asyncio.StreamReader``); callers
then read with ``read_response`` as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

hiredis: Any
try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    hiredis = None

__all__ = ["ReplyReader", "reply_reader"]

_READ_SIZE = 65536


class ReplyReader:
    """Every complete reply available after one read of the socket."""

    __slots__ = ("_gets", "_parser", "_stream")

    def __init__(
        self, stream: asyncio.StreamReader, *, encoding: str | None, errors: str = "strict"
    ) -> None:
        self._stream = stream
        assert hiredis is not None
        # Error replies come back as values (ResponseError), not raised: a batch
        # of replies is read whole, whatever some of them say.
        self._parser = hiredis.Reader(replyError=ResponseError, encoding=encoding, errors=errors)
        self._gets = self._parser.gets

    async def replies(self) -> list[Any]:
        """At least one reply: all those complete in the buffer, reading once more
        from the socket when there are none."""
        gets = self._gets
        reply = gets()
        while reply is False:
            await self._fill()
            reply = gets()
        found = [_checked(reply)]
        reply = gets()
        while reply is not False:
            found.append(_checked(reply))
            reply = gets()
        return found

    async def read(self, count: int) -> list[Any]:
        """Exactly ``count`` replies, in order."""
        gets = self._gets
        found: list[Any] = []
        while len(found) < count:
            reply = gets()
            if reply is False:
                await self._fill()
                continue
            found.append(_checked(reply))
        return found

    async def _fill(self) -> None:
        data = await self._stream.read(_READ_SIZE)
        if not data:
            raise RedisConnectionError("Connection closed by server.")
        self._parser.feed(data)


def _checked(reply: Any) -> Any:
    if type(reply) is ResponseError and str(reply).startswith("NOSCRIPT"):
        # As redis-py words it: the script cache was flushed.
        return NoScriptError(str(reply).removeprefix("NOSCRIPT "))
    return reply


def reply_reader(conn: Any) -> ReplyReader | None:
    """A reader over redis-py connection ``conn`` (connected, nothing pending),
    decoding as the connection does, or None when replies must be read through
    redis-py."""
    stream = getattr(conn, "_reader", None)
    encoder = getattr(conn, "encoder", None)
    if hiredis is None or not isinstance(stream, asyncio.StreamReader) or encoder is None:
        return None
    if not encoder.decode_responses:
        return ReplyReader(stream, encoding=None)
    return ReplyReader(stream, encoding=encoder.encoding, errors=encoder.encoding_errors)
