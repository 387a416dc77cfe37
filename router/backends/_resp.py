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
from redis.exceptions import InvalidResponse, ResponseError

hiredis: Any
try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    hiredis = None

__all__ = ["ReplyReader", "reply_reader"]

_READ_SIZE = 65536
#: What the parser returns while a reply is incomplete (``False`` is a RESP3 reply).
_MISSING = object()


def _parse_error(message: str) -> ResponseError:
    """An error reply as a value, of the class redis-py would raise for it."""
    return ResponseError(message) if _redis_errors is None else _redis_errors(message)


try:  # redis-py's own mapping (NOSCRIPT, LOADING, READONLY, ...): the same classes
    from redis._parsers import BaseParser

    _redis_errors: Any = BaseParser.parse_error
except ImportError:  # pragma: no cover - a redis-py without it
    _redis_errors = None


class ReplyReader:
    """Every complete reply available after one read of the socket."""

    __slots__ = ("_gets", "_parser", "_push", "_stream")

    def __init__(
        self, stream: asyncio.StreamReader, *, encoding: str | None, errors: str = "strict"
    ) -> None:
        self._stream = stream
        assert hiredis is not None
        # Error replies come back as values (of redis-py's classes), not raised: a
        # batch of replies is read whole, whatever some of them say.
        options: dict[str, Any] = {
            "protocolError": InvalidResponse,
            "replyError": _parse_error,
            "notEnoughData": _MISSING,
        }
        if encoding is not None:
            options.update(encoding=encoding, errors=errors)
        self._parser = hiredis.Reader(**options)
        self._gets = self._parser.gets
        # RESP3 pushes (client tracking, maintenance notices) are not replies.
        self._push: Any = getattr(hiredis, "PushNotification", None)

    async def replies(self) -> list[Any]:
        """At least one reply: all those complete in the buffer, reading once more
        from the socket when there are none."""
        found: list[Any] = []
        while not found:
            self._take(found, None)
            if not found:
                await self._fill()
        return found

    async def read(self, count: int) -> list[Any]:
        """Exactly ``count`` replies, in order."""
        found: list[Any] = []
        self._take(found, count)
        while len(found) < count:
            await self._fill()
            self._take(found, count)
        return found

    def _take(self, found: list[Any], limit: int | None) -> None:
        gets = self._gets
        push = self._push
        while limit is None or len(found) < limit:
            reply = gets()
            if reply is _MISSING:
                return
            if push is not None and type(reply) is push:
                continue
            if isinstance(reply, RedisConnectionError):
                # LOADING and the like: redis-py drops the connection for these.
                raise reply
            found.append(reply)

    async def _fill(self) -> None:
        data = await self._stream.read(_READ_SIZE)
        if not data:
            raise RedisConnectionError("Connection closed by server.")
        self._parser.feed(data)


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
