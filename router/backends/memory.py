"""The in-process backend (``memory://``): one process, nothing to run."""

from __future__ import annotations

from typing import Any

import anyio

from ..connections import Hub
from ..history import HistorySlice, MemoryHistory
from ..lifecycle import RunLifecycle
from ..threads import MemoryThreadStore
from .base import Committed

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Everything in this process's memory. ``commit`` never awaits, so every
    event is committed atomically with respect to every other."""

    def __init__(
        self,
        *,
        history_size: int = 1000,
        history_ttl: float = 900.0,
        run_ttl: float = 600.0,
        max_runs: int = 100_000,
    ) -> None:
        self.threads = MemoryThreadStore()
        self.history = MemoryHistory(size=history_size, ttl=history_ttl)
        self.lifecycle = RunLifecycle(finished_ttl=run_ttl, max_runs=max_runs)
        self._hub: Hub | None = None
        self._sweeper: anyio.CancelScope | None = None

    async def start(self, hub: Hub) -> None:
        self._hub = hub

    async def stop(self) -> None:
        self._hub = None

    async def commit(
        self,
        *,
        thread_id: str,
        user_id: str,
        run_id: str,
        event_type: str,
        payload: Any,
        head: str,
        tail: str,
    ) -> Committed | str:
        violation = self.lifecycle.advance(run_id, event_type, payload)
        if violation is not None:
            return violation
        seq, frame = self.history.append(thread_id, head, tail)
        hub = self._hub
        if hub is None:
            return Committed(seq, 0, False)
        return Committed(seq, hub.deliver(user_id, thread_id, seq, frame), hub.has_user(user_id))

    async def read_history(self, thread_id: str, after_seq: int) -> HistorySlice:
        return self.history.read(thread_id, after_seq)

    async def last_seq(self, thread_id: str) -> int:
        return self.history.last_seq(thread_id)

    async def find_event(self, thread_id: str, event_id: str) -> int | None:
        return self.history.find(thread_id, event_id)

    async def watch(self, user_id: str) -> None:
        return None

    def unwatch(self, user_id: str) -> None:
        return None

    async def ping(self) -> bool:
        return True

    def sweep(self) -> None:
        self.history.sweep()

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "memory",
            "threads": len(self.threads),
            "runs_tracked": len(self.lifecycle),
        }
