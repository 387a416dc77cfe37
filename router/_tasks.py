"""Background tasks that belong to a router, not to whichever task started it.

``EventRouter.start()`` may be called from a request handler, a lifespan handler
or a test; the tasks it starts (spool flushing, history sweeping, Redis
subscription and probing) must neither run inside that caller's cancel scope
nor cancel it when they fail. They run as tasks of their own on the event loop
(the router runs on asyncio, as uvicorn and redis-py do) and are cancelled and
awaited by ``close()``. A task that fails is logged; it never fails silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Services"]

logger = logging.getLogger("router")


class Services:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, func: Callable[..., Awaitable[Any]], *args: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(func, args, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(func: Callable[..., Awaitable[Any]], args: tuple[Any, ...], name: str) -> None:
        try:
            await func(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("background task %s failed", name)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
