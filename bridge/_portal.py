"""Getting from a worker thread back to the bridge's event loop.

The router lives on one event loop. Agent code running in a worker thread
reaches it through :func:`anyio.from_thread.run`, which needs the loop's token:
:class:`LoopPortal` captures it (``anyio.lowlevel.current_token()``) whenever the
bridge is created or used inside the loop, and every synchronous call blocks
until its event has been published there.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

__all__ = ["LoopPortal"]

T = TypeVar("T")

# Sync calls for one run are serialised by a lock chosen by the run id's hash:
# bounded memory whatever the number of runs, and different runs rarely share one.
_STRIPES = 64


def _running_token() -> anyio.lowlevel.EventLoopToken | None:
    """The token of the event loop running in this thread, or None."""
    try:
        return anyio.lowlevel.current_token()
    except RuntimeError:  # NoEventLoopError (and sniffio's AsyncLibraryNotFoundError)
        return None


class LoopPortal:
    """Runs coroutine functions on the captured event loop from any other thread."""

    def __init__(self) -> None:
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._stripes = tuple(threading.Lock() for _ in range(_STRIPES))

    def capture(self) -> None:
        """Remember the loop running in this thread, if any. Cheap; never raises."""
        token = _running_token()
        if token is not None:
            self._token = token

    def lock_for(self, key: Any) -> threading.Lock:
        """The lock that orders sync calls about ``key`` (a run id) across threads."""
        try:
            index = hash(key) % _STRIPES
        except TypeError:  # an unhashable "run id": it is rejected anyway
            index = 0
        return self._stripes[index]

    def call(
        self, func: Callable[[], Awaitable[T]], lock: AbstractContextManager[object], what: str
    ) -> T:
        """Run ``func()`` on the loop and wait for its result, holding ``lock``.

        Raises ``RuntimeError`` when called from inside a running event loop
        (that would block it; from the bridge's own loop it would deadlock), or
        when no loop is known; ``anyio.RunFinishedError`` when the loop has
        closed. Exceptions raised by ``func`` propagate.
        """
        if _running_token() is not None:
            raise RuntimeError(
                f"{what} was called from inside a running event loop, where it would block "
                "the loop (and deadlock on the bridge's own loop); from async code, await "
                "the async method of the same name instead"
            )
        token = self._token

        async def runner() -> T:
            return await func()

        with lock:
            try:
                # Without a token this works in an anyio worker thread (anyio.to_thread,
                # Starlette's sync endpoints), which knows its loop.
                return anyio.from_thread.run(runner, token=token)
            except anyio.NoEventLoopError:
                if token is not None:
                    raise
                raise RuntimeError(
                    f"{what} needs the event loop the router runs on, and the bridge has not "
                    "seen it yet: create the bridge inside the running loop (e.g. in the app's "
                    "lifespan) or use any of its async methods there once before calling its "
                    "sync API from other threads"
                ) from None
