"""Follow a user's agent events from Python, surviving disconnects.

    python examples/python_client.py ws://127.0.0.1:8000/ws --token TOKEN [--thread T] [--count N]

prints one JSON line per event. The client (:class:`EventStream`) is what a
Python consumer of the router needs:

- it remembers the last ``seq`` it saw of every thread, and after a disconnect
  reconnects (with backoff) with ``?thread_id=T&after_seq=N`` for each one, so
  what was published meanwhile is replayed from the thread's history, in order,
  before anything new;
- it drops an event whose ``event_id`` it has already seen (a replayed dead
  letter, say): delivery is at least once, processing is once;
- it reports a ``gap`` frame (history no longer holds what was missed) instead
  of hiding it.

Without ``--thread`` it follows every thread of the user.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

logger = logging.getLogger("examples.python_client")

#: Close codes after which reconnecting with the same token cannot help.
FATAL_CLOSE_CODES = {1008, 4401}


class EventStream:
    """Every event of a user, once, in order per thread, across reconnections::

        stream = EventStream("ws://127.0.0.1:8000/ws", token)
        async with contextlib.aclosing(stream.events()) as events:
            async for event in events:
                ...

    ``threads``: follow these threads only (default: every thread of the user).
    Raises ``InvalidStatus`` when the server refuses the token (HTTP 403), and
    ``ConnectionClosed`` for a close that retrying cannot fix (1008, 4401).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        threads: Sequence[str] = (),
        max_backoff: float = 5.0,
        remember: int = 10_000,
    ) -> None:
        self.url = url
        self.token = token
        self.all_threads = not threads
        self.last_seq: dict[str, int] = {thread: 0 for thread in threads}
        self.max_backoff = max_backoff
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.remember = remember
        self.connections = 0
        self.duplicates = 0
        self.gaps: list[dict[str, Any]] = []

    def _connect_url(self) -> str:
        query: list[tuple[str, str]] = [("token", self.token)]
        for thread, seq in self.last_seq.items():
            query += [("thread_id", thread), ("after_seq", str(seq))]
        return f"{self.url}?{urlencode(query)}"

    def _is_new(self, frame: dict[str, Any]) -> bool:
        event_id, thread, seq = frame["event_id"], frame["thread_id"], frame["seq"]
        last = self.last_seq.get(thread, 0)
        self.last_seq[thread] = max(last, seq)
        if event_id in self.seen or seq <= last:
            # Published twice (an agent retried) or delivered twice: process it once.
            self.duplicates += 1
            return False
        self.seen[event_id] = None
        if len(self.seen) > self.remember:
            self.seen.popitem(last=False)
        return True

    async def _session(self, ws: ClientConnection) -> AsyncIterator[dict[str, Any]]:
        async for raw in ws:
            frame = json.loads(raw)
            op = frame.get("op")
            if op == "welcome":
                self.connections += 1
                if self.all_threads and self.last_seq:
                    # The resume put the connection in thread mode; ask for every
                    # thread again so that new ones reach us too.
                    await ws.send(json.dumps({"op": "subscribe", "thread_id": "*"}))
            elif op == "gap":
                logger.warning(
                    "missed seq %s..%s of %s",
                    frame["from_seq"],
                    frame["to_seq"],
                    frame["thread_id"],
                )
                self.gaps.append(frame)
                thread = frame["thread_id"]
                self.last_seq[thread] = max(self.last_seq.get(thread, 0), frame["to_seq"])
            elif op == "error":
                logger.warning("server says %s: %s", frame["code"], frame["detail"])
            elif op is None and self._is_new(frame):
                yield frame

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every new event, forever. Close it (``contextlib.aclosing``) when done."""
        failures = 0
        while True:
            try:
                async with connect(self._connect_url(), open_timeout=10) as ws:
                    failures = 0
                    async for event in self._session(ws):
                        yield event
                    # A clean close (1000, 1001: the server is going away): resume.
                    logger.info("connection closed (%s); resuming", ws.close_code)
            except InvalidStatus:
                raise  # 403: the token is refused; retrying will not change that
            except (OSError, TimeoutError, ConnectionClosed) as exc:
                if (
                    isinstance(exc, ConnectionClosed)
                    and exc.rcvd
                    and exc.rcvd.code in (FATAL_CLOSE_CODES)
                ):
                    raise
                logger.info("disconnected (%s); reconnecting", exc)
            delay = min(self.max_backoff, 0.1 * 2**failures) * random.uniform(0.5, 1.0)
            failures += 1
            await asyncio.sleep(delay)


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url", help="the WebSocket endpoint, e.g. ws://127.0.0.1:8000/ws")
    parser.add_argument("--token", required=True)
    parser.add_argument("--thread", action="append", default=[], help="follow only this thread")
    parser.add_argument("--count", type=int, default=0, help="exit after this many events")
    args = parser.parse_args(argv)
    stream = EventStream(args.url, args.token, threads=args.thread)
    received = 0
    try:
        async with contextlib.aclosing(stream.events()) as events:
            async for event in events:
                print(json.dumps(event), flush=True)
                received += 1
                if args.count and received >= args.count:
                    break
    except InvalidStatus as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "summary": {
                    "events": received,
                    "connections": stream.connections,
                    "duplicates_dropped": stream.duplicates,
                    "gaps": len(stream.gaps),
                }
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
