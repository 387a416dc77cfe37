"""Live WebSocket connections and the per-user hub that fans events out to them.

Each :class:`Connection` belongs to one user and owns a bounded outbox (a deque)
drained by its own writer task, so a slow browser never
delays the publisher or anyone else: when live traffic finds the outbox full,
the connection is closed with 1013 and the client resumes from history. While the
writer waits with nothing queued, a live frame may be sent at once by the
publisher instead (``direct_send``), saving the writer a wake-up; a send that
would have to wait is finished by the writer, before anything queued after it.

Ordering per thread is kept here: a connection remembers the last ``seq`` it
queued for each thread and never queues a frame at or below it, and while a
thread is being replayed from history, live frames of that thread wait in a
side buffer and follow the replay.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

import anyio

__all__ = ["Connection", "ConnectionState", "Hub"]

CLOSE_SLOW_CONSUMER = 1013
#: Most frames a writer takes from its outbox at once.
_BATCH = 64

#: Stands in the outbox for a frame whose direct send had to wait (see
#: :meth:`Connection.finish_first`): the writer finishes that send there. Compared by
#: identity; made at run time, so no frame (and no interned literal) is this object.
UNFINISHED_SEND = "".join(("<unfinished", " send>"))


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_TRANSITIONS = {
    ConnectionState.CONNECTING: {ConnectionState.OPEN, ConnectionState.CLOSING},
    ConnectionState.OPEN: {ConnectionState.CLOSING},
    ConnectionState.CLOSING: {ConnectionState.CLOSED},
    ConnectionState.CLOSED: set(),
}


class IllegalTransition(RuntimeError):
    def __init__(self, expected: set[ConnectionState], actual: ConnectionState) -> None:
        names = ", ".join(sorted(state.value for state in expected)) or "none"
        super().__init__(f"connection is {actual.value}; expected one of: {names}")


class Connection:
    """One WebSocket connection of one user.

    ``threads`` is None in ALL mode (every thread of the user) or the set of
    threads it subscribed to.
    """

    __slots__ = (
        "_accepting",
        "_canceller",
        "_high_water",
        "_on_close",
        "_queue",
        "_room",
        "_trickle",
        "_wakeup",
        "close_code",
        "close_reason",
        "connection_id",
        "delivered",
        "direct_send",
        "last_sent",
        "outbox_size",
        "pending",
        "state",
        "threads",
        "user_id",
    )

    def __init__(
        self,
        connection_id: str,
        user_id: str,
        *,
        outbox_size: int = 1000,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self.connection_id = connection_id
        self.user_id = user_id
        self.outbox_size = outbox_size
        # The outbox: frames queued and not yet taken by the writer. Plain deque and
        # asyncio events (the router runs on asyncio): the hand-off of a live frame is
        # an append (or a direct send, see direct_send), and the writer takes what is
        # queued in batches.
        self._queue: deque[str] = deque()
        #: False once the connection is closing: nothing more is queued
        self._accepting = True
        #: set when the writer takes frames (a replay waiting for room waits on it)
        self._room: asyncio.Event | None = None
        self.threads: set[str] | None = None
        self.last_sent: dict[str, int] = {}
        self.pending: dict[str, list[tuple[int, str]]] = {}
        self.state = ConnectionState.CONNECTING
        self.close_code: int | None = None
        self.close_reason = ""
        self.delivered = 0
        self._on_close = on_close
        self._canceller: Callable[[], None] | None = None
        #: the writer's wait for frames (a bare future: cheaper than an Event)
        self._wakeup: asyncio.Future[None] | None = None
        #: past this many queued frames the publisher yields (see Hub.pressure)
        self._high_water = max(1, outbox_size // 2)
        #: the writer's last batch was a single frame
        self._trickle = False
        #: Set by the writer's owner: sends a frame at once, without waiting. Used
        #: for a live frame while the writer waits with nothing queued. Returns True
        #: when the frame was sent (or its send was handed to the writer with
        #: :meth:`finish_first`), False when it could not be sent (the connection is
        #: then closing), None when it should be queued instead.
        self.direct_send: Callable[[str], bool | None] | None = None

    def _move(self, new: ConnectionState) -> None:
        allowed = _TRANSITIONS[self.state]
        if new not in allowed:
            raise IllegalTransition(allowed, self.state)
        self.state = new

    def opened(self) -> None:
        self._move(ConnectionState.OPEN)

    def wants(self, thread_id: str) -> bool:
        return self.threads is None or thread_id in self.threads

    def offer(self, thread_id: str, seq: int, frame: str) -> bool:
        """Queue a live frame without waiting (or send it at once, through
        ``direct_send``). Returns True when it was queued or sent.

        This is the hot path: no awaiting, no serialising. A full outbox closes
        the connection as a slow consumer.
        """
        if self.state is not ConnectionState.OPEN:
            return False
        threads = self.threads
        if threads is not None and thread_id not in threads:
            return False
        if self.pending:
            waiting = self.pending.get(thread_id)
            if waiting is not None:
                if len(waiting) >= self.outbox_size:
                    self.close(CLOSE_SLOW_CONSUMER, "slow consumer")
                    return False
                waiting.append((seq, frame))
                return True
        if seq <= self.last_sent.get(thread_id, 0):
            return False
        queue = self._queue
        if (
            (waiter := self._wakeup) is not None
            and not waiter.done()
            and self.direct_send is not None
            and not queue
        ):
            # The writer waits with nothing queued (and was neither woken nor
            # cancelled): nothing can come before this frame. None: not now, queue it.
            sent = self.direct_send(frame)
            if sent is not None:
                if not sent:
                    return False
                self.last_sent[thread_id] = seq
                self.delivered += 1
                return True
        if len(queue) >= self.outbox_size and not self._room_behind_marker():
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")
            return False
        queue.append(frame)
        self.last_sent[thread_id] = seq
        self.delivered += 1
        if self._wakeup is not None:
            self._wake()
        return True

    def _room_behind_marker(self) -> bool:
        """A full outbox whose first entry is :data:`UNFINISHED_SEND` still has room:
        the marker stands for a frame already taken out (as the writer's current
        send would be), not a queued one."""
        queue = self._queue
        return bool(queue) and queue[0] is UNFINISHED_SEND and len(queue) <= self.outbox_size

    def finish_first(self) -> None:
        """The frame just handed to ``direct_send`` is still being sent: the writer
        must finish that send (at :data:`UNFINISHED_SEND`) before anything queued."""
        self._queue.append(UNFINISHED_SEND)
        self._wake()

    @property
    def backlog(self) -> int:
        """Frames queued and not yet taken by the writer."""
        return len(self._queue)

    def reset_sequences(self) -> None:
        """The shared backend lost its data and every thread's seq restarts at 1.

        Tell the client, per thread it has seen, that the seqs it holds belong to a
        sequence that no longer exists (a ``gap`` frame with ``reset``), and forget
        them, so the new sequence is delivered instead of being taken for duplicates.
        """
        if self.state is not ConnectionState.OPEN:
            return
        for thread_id, last in list(self.last_sent.items()):
            frame = json.dumps(
                {"op": "gap", "thread_id": thread_id, "from_seq": 1, "to_seq": last, "reset": True}
            )
            if len(self._queue) >= self.outbox_size:
                self.close(CLOSE_SLOW_CONSUMER, "slow consumer")
                return
            self._queue.append(frame)
        self._wake()
        self.last_sent.clear()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None:
            self._wakeup = None
            if not waiter.done():
                waiter.set_result(None)

    async def next_batch(self) -> deque[str] | None:
        """Wait for queued frames and take them, in order: the writer's loop. None
        once the connection is closing and everything queued was taken.

        What is queued is taken at once (at most ``_BATCH`` frames, so a slow
        socket holds little beyond the outbox). A writer that has caught up looks
        again after one pass of the event loop (a publisher in full flow refills
        the outbox meanwhile), then waits on a future that the next queued frame
        resolves: one wake-up per batch rather than per frame.
        """
        # Frames trickling in one at a time (a paced stream): the extra pass would
        # find nothing, so wait at once.
        looked = self._trickle
        while True:
            queue = self._queue
            if queue:
                if len(queue) <= _BATCH:
                    self._queue = deque()
                    batch = queue
                else:
                    batch = deque(queue.popleft() for _ in range(_BATCH))
                self._free_room()
                self._trickle = len(batch) == 1
                return batch
            if not self._accepting:
                return None
            if looked:
                looked = False
                # Nothing awaited since the queue was found empty: no frame can have
                # been queued in between, so no wake-up is missed.
                waiter = self._wakeup = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    self._wakeup = None
            else:
                looked = True
                await asyncio.sleep(0)

    async def frames(self) -> AsyncIterator[str]:
        """The queued frames one by one, until the connection is closing and they
        were all taken (:meth:`next_batch`, flattened). For a connection without
        ``direct_send`` (so no :data:`UNFINISHED_SEND` is queued)."""
        while (batch := await self.next_batch()) is not None:
            for frame in batch:
                yield frame

    def take_queued(self) -> list[str]:
        """Take every frame queued right now, as the writer does.

        For code that drives a connection without a socket (tests, benchmarks),
        where ``direct_send`` is not set (so no :data:`UNFINISHED_SEND` is queued).
        """
        taken = list(self._queue)
        self._queue.clear()
        self._free_room()
        return taken

    def _free_room(self) -> None:
        """Wake what waits for room in the outbox (frames were taken, or it closed)."""
        room = self._room
        if room is not None:
            self._room = None
            room.set()

    async def _wait_for_room(self) -> None:
        while True:
            if not self._accepting:
                raise anyio.ClosedResourceError
            if len(self._queue) < self.outbox_size or self._room_behind_marker():
                return
            room = self._room
            if room is None:
                room = self._room = asyncio.Event()
            await room.wait()

    async def put(self, frame: str) -> None:
        """Queue a frame, waiting for room (control replies and history replays).

        Raises :class:`anyio.ClosedResourceError` once the connection is closing.
        """
        await self._wait_for_room()
        self._queue.append(frame)
        self._wake()

    async def put_event(self, thread_id: str, seq: int, frame: str) -> bool:
        """Queue a replayed event frame, waiting for room; skips what was already sent."""
        if seq <= self.last_sent.get(thread_id, 0):
            return False
        await self._wait_for_room()
        self._queue.append(frame)
        self.last_sent[thread_id] = seq
        self.delivered += 1
        self._wake()
        return True

    def hold(self, thread_id: str) -> None:
        """Start buffering live frames of a thread (a replay is about to run)."""
        self.pending.setdefault(thread_id, [])

    async def release(self, thread_id: str) -> None:
        """Send what was held for a thread (in order, without duplicates) and go live."""
        while True:
            waiting = self.pending.get(thread_id)
            if not waiting:
                self.pending.pop(thread_id, None)
                return
            self.pending[thread_id] = []
            for seq, frame in waiting:
                await self.put_event(thread_id, seq, frame)

    def set_canceller(self, cancel: Callable[[], None]) -> None:
        """What stops the connection's tasks at once (its task group's cancel)."""
        self._canceller = cancel

    def close(self, code: int, reason: str = "", *, drain: bool = False) -> None:
        """Ask the connection to close with ``code``; idempotent, never blocks.

        With ``drain`` the frames already queued are still sent first (an error
        frame before a 1008, say); without it the connection stops at once.
        """
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        self.close_code = code
        self.close_reason = reason
        self._move(ConnectionState.CLOSING)
        self._stop_accepting()
        if self._on_close is not None:
            self._on_close(self)
        if not drain and self._canceller is not None:
            self._canceller()

    def closed(self) -> None:
        """The connection is gone: release the outbox. Idempotent."""
        if self.state is ConnectionState.CLOSED:
            return
        if self.state is not ConnectionState.CLOSING:
            self.close(1000, drain=True)
        self._move(ConnectionState.CLOSED)
        self._stop_accepting()
        self._queue.clear()

    def _stop_accepting(self) -> None:
        # Wake the writer (it sends what is left, then ends) and any replay
        # waiting for room (it then fails with ClosedResourceError).
        self._accepting = False
        self._wake()
        self._free_room()


class Hub:
    """This process's live connections, by user."""

    def __init__(self) -> None:
        self._by_user: dict[str, set[Connection]] = {}
        self._count = 0
        #: frames queued to (or sent directly on) connections since start (the
        #: "delivered" figure)
        self.delivered = 0
        #: set when a connection's outbox passed half full: the publisher yields at
        #: once (a small outbox could fill before its periodic yield)
        self.pressure = False

    def add(self, connection: Connection) -> None:
        conns = self._by_user.get(connection.user_id)
        if conns is None:
            conns = self._by_user[connection.user_id] = set()
        if connection not in conns:
            conns.add(connection)
            self._count += 1

    def remove(self, connection: Connection) -> bool:
        """Forget a connection; False when it was not here."""
        conns = self._by_user.get(connection.user_id)
        if conns is None or connection not in conns:
            return False
        conns.discard(connection)
        self._count -= 1
        if not conns:
            del self._by_user[connection.user_id]
        return True

    def deliver(self, user_id: str, thread_id: str, seq: int, frame: str) -> int:
        """Offer a frame to every connection of a user; return how many took it
        (queued, or sent directly)."""
        conns = self._by_user.get(user_id)
        if not conns:
            return 0
        queued = 0
        # A slow consumer removes itself from the set while we iterate.
        for conn in tuple(conns):
            if conn.offer(thread_id, seq, frame):
                queued += 1
                if len(conn._queue) > conn._high_water:
                    self.pressure = True
        self.delivered += queued
        return queued

    def reset_sequences(self) -> None:
        """Every thread's seq restarted (see :meth:`Connection.reset_sequences`)."""
        for conn in self.connections():
            conn.reset_sequences()

    def has_user(self, user_id: str) -> bool:
        return user_id in self._by_user

    def users(self) -> Iterator[str]:
        return iter(tuple(self._by_user))

    def connections(self, user_id: str | None = None) -> list[Connection]:
        if user_id is not None:
            return list(self._by_user.get(user_id, ()))
        return [conn for conns in self._by_user.values() for conn in conns]

    def __len__(self) -> int:
        return self._count
