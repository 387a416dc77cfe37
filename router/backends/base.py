"""The backend interface: everything the pipeline needs that must agree across
processes on a scale-out deployment."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from ..connections import Hub
from ..errors import BackendDown
from ..history import HistorySlice
from ..threads import ThreadStore

__all__ = ["Backend", "BackendDown", "Committed"]


class Committed(NamedTuple):
    """An event the backend accepted: its ``seq``, how many connections this
    process queued it for, and whether the owner had any live connection anywhere.

    (A NamedTuple: one is made per accepted event, at a fraction of a frozen
    dataclass's cost.)"""

    seq: int
    queued: int
    listeners: bool


class Backend(Protocol):
    """Fan-out, ``seq`` assignment, history, thread ownership and run lifecycle.

    ``commit`` is the one call on the hot path: it checks and advances the run's
    lifecycle, assigns the thread's next seq, appends the frame to history and
    fans it out to the owner's connections, as one atomic step.
    """

    @property
    def threads(self) -> ThreadStore: ...

    async def start(self, hub: Hub) -> None: ...

    async def stop(self) -> None: ...

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
        """Commit an accepted event, or return the lifecycle violation (a sentence)."""
        ...

    async def read_history(self, thread_id: str, after_seq: int) -> HistorySlice: ...

    async def last_seq(self, thread_id: str) -> int: ...

    async def find_event(self, thread_id: str, event_id: str) -> int | None:
        """The seq of an event still in history, or None."""
        ...

    async def watch(self, user_id: str) -> None:
        """This process has a connection of ``user_id``: receive its events from now on.

        Returns once the subscription is active, so nothing published after the
        call returns is missed."""
        ...

    def unwatch(self, user_id: str) -> None:
        """One connection of ``user_id`` left this process (calls pair with ``watch``)."""
        ...

    async def ping(self) -> bool:
        """True when the backend's server answers."""
        ...

    def stats(self) -> dict[str, Any]:
        """Backend health and figures for /stats."""
        ...
