"""Per-thread history: the last ``size`` accepted frames of each thread, kept for ``ttl`` seconds.

History is what makes resume work: a browser that reconnects with ``after_seq``
gets what it missed from here. Each thread's ``seq`` counter lives beside its
history and is never reused, even after the frames themselves have expired.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import deque
from collections.abc import Sequence

__all__ = ["HistorySlice", "MemoryHistory"]


@dataclasses.dataclass(slots=True, frozen=True)
class HistorySlice:
    """What a thread's history holds after a given seq.

    ``last_seq``: the thread's newest seq (0 when it has none); ``first_seq``:
    the oldest seq still retained (None when nothing is retained); ``frames``:
    ``(seq, frame)`` pairs above the requested seq, in order.
    """

    last_seq: int
    first_seq: int | None
    frames: Sequence[tuple[int, str]]

    def gap(self, after_seq: int) -> tuple[int, int] | None:
        """The missing range (inclusive) between ``after_seq`` and what is retained."""
        if self.last_seq <= after_seq:
            return None
        start = self.frames[0][0] if self.frames else self.last_seq + 1
        if start > after_seq + 1:
            return after_seq + 1, start - 1
        return None


class _Thread:
    # Frames and their expiry times in two deques rather than one deque of tuples: a
    # tuple per accepted event would be one more object for the cyclic garbage
    # collector to count (gen0 collections, and in time a full one, a pause of tens
    # of ms). The seqs in a thread's history are consecutive and end at last_seq, so
    # they are not stored.
    __slots__ = ("expiries", "frames", "last_seq")

    def __init__(self, size: int) -> None:
        self.last_seq = 0
        self.frames: deque[str] = deque(maxlen=size)
        self.expiries: deque[float] = deque(maxlen=size)

    def expire(self, now: float) -> None:
        expiries = self.expiries
        while expiries and expiries[0] <= now:
            expiries.popleft()
            self.frames.popleft()


class MemoryHistory:
    """History of every thread in this process. Not thread-safe: one event loop."""

    def __init__(self, *, size: int = 1000, ttl: float = 900.0) -> None:
        if size < 1:
            raise ValueError("history_size must be at least 1")
        self.size = size
        self.ttl = ttl
        self._threads: dict[str, _Thread] = {}

    def append(self, thread_id: str, head: str, tail: str) -> tuple[int, str]:
        """Assign the thread's next seq, store the frame, return ``(seq, frame)``."""
        thread = self._threads.get(thread_id)
        if thread is None:
            thread = self._threads[thread_id] = _Thread(self.size)
        seq = thread.last_seq + 1
        thread.last_seq = seq
        frame = f"{head}{seq}{tail}"
        now = time.monotonic()
        expiries = thread.expiries
        if expiries and expiries[0] <= now:
            thread.expire(now)
        # Both deques have maxlen=size: a full history drops its oldest of each.
        thread.frames.append(frame)
        expiries.append(now + self.ttl)
        return seq, frame

    def last_seq(self, thread_id: str) -> int:
        thread = self._threads.get(thread_id)
        return 0 if thread is None else thread.last_seq

    def read(self, thread_id: str, after_seq: int) -> HistorySlice:
        thread = self._threads.get(thread_id)
        if thread is None:
            return HistorySlice(0, None, ())
        thread.expire(time.monotonic())
        retained = thread.frames
        if not retained:
            return HistorySlice(thread.last_seq, None, ())
        first = thread.last_seq - len(retained) + 1
        # seqs are consecutive, so the start index is arithmetic.
        start = max(0, after_seq + 1 - first)
        frames = [
            (first + index, frame)
            for index, frame in enumerate(itertools.islice(retained, start, None), start)
        ]
        return HistorySlice(thread.last_seq, first, frames)

    def find(self, thread_id: str, event_id: str) -> int | None:
        """The seq of a retained event, looked up by its event_id (for the event lookup)."""
        thread = self._threads.get(thread_id)
        if thread is None:
            return None
        needle = f'"event_id":"{event_id}"'
        first = thread.last_seq - len(thread.frames) + 1
        for index, frame in enumerate(thread.frames):
            if needle in frame:
                return first + index
        return None

    def sweep(self) -> None:
        """Drop expired frames of every thread (the seq counters stay)."""
        now = time.monotonic()
        for thread in self._threads.values():
            thread.expire(now)

    def forget(self, thread_id: str) -> None:
        self._threads.pop(thread_id, None)
