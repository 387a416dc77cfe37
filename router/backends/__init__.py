"""Backends: where seq, history, thread ownership and run state live, and how
events fan out to connections. Chosen by URL: ``memory://`` (one process) or
``redis://host:port/db`` (many processes; needs the ``redis`` extra)."""

from __future__ import annotations

from typing import Any

from ..deadletters import REDIS_SCHEMES
from .base import Backend, Committed
from .memory import MemoryBackend

__all__ = ["Backend", "Committed", "MemoryBackend", "open_backend"]


def open_backend(url: str, **options: Any) -> Backend:
    """A backend for ``url``. Raises ``ValueError`` for an unknown scheme."""
    if url.startswith("memory://"):
        return MemoryBackend(**options)
    if url.startswith(REDIS_SCHEMES):
        try:
            from .redis import RedisBackend  # type: ignore[import-not-found,unused-ignore]
        except ModuleNotFoundError as exc:
            if exc.name not in ("redis", "hiredis"):
                raise
            raise ImportError(
                "the Redis backend needs redis-py: pip install 'agent-event-router[redis]'"
            ) from exc

        backend: Backend = RedisBackend(url, **options)
        return backend
    raise ValueError(f"unknown backend URL {url!r}: use memory:// or redis://host:port/db")
