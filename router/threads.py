"""Thread ownership: which user a thread belongs to.

A thread is owned by exactly one user for its whole life. The store behind
:class:`ThreadRegistry` is pluggable (:class:`ThreadStore`, a few async methods);
the backend supplies one (in memory, or in Redis so that every process agrees).
An application that keeps threads in its own database passes an async
``owner_of(thread_id)`` callable instead or as well: it is asked when the store
does not know the thread.

Lookups that leave the process (Redis, ``owner_of``) are cached for
``cache_ttl`` seconds; ``create`` and ``delete`` through this registry
invalidate the entry at once. Unknown threads are not cached, so a thread
created elsewhere becomes visible on the next lookup.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .errors import NotThreadOwner, OwnerLookupFailed
from .ids import ThreadId, UserId, is_user_id, parse_thread_id, parse_user_id

__all__ = ["MemoryThreadStore", "OwnerOf", "ThreadRegistry", "ThreadStore"]

#: ``owner_of(thread_id) -> user_id | None``, sync or async.
OwnerOf = Callable[[str], "Awaitable[str | None] | str | None"]


class ThreadStore(Protocol):
    """Storage of thread ownership. Implementations must make ``claim`` atomic."""

    #: True when lookups are as cheap as a dict access (no cache needed).
    local: bool

    async def claim(self, thread_id: ThreadId, user_id: UserId) -> UserId:
        """Give the thread to ``user_id`` unless it has an owner; return the owner."""
        ...

    async def owner(self, thread_id: str) -> UserId | None: ...

    async def delete(self, thread_id: str) -> bool: ...


class MemoryThreadStore:
    """Thread ownership in this process's memory."""

    local = True

    def __init__(self) -> None:
        self._owners: dict[str, UserId] = {}

    async def claim(self, thread_id: ThreadId, user_id: UserId) -> UserId:
        return self._owners.setdefault(thread_id, user_id)

    async def owner(self, thread_id: str) -> UserId | None:
        return self._owners.get(thread_id)

    async def delete(self, thread_id: str) -> bool:
        return self._owners.pop(thread_id, None) is not None

    def __len__(self) -> int:
        return len(self._owners)


class ThreadRegistry:
    """``router.threads``: create threads for users and look up their owners.

    Concurrent ``create`` calls for one thread agree: the first one wins and
    every other user gets :class:`~router.errors.NotThreadOwner`.
    """

    def __init__(
        self,
        store: ThreadStore,
        *,
        owner_of: OwnerOf | None = None,
        cache_ttl: float = 5.0,
        cache_size: int = 100_000,
    ) -> None:
        self.store = store
        self._owner_of = owner_of
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._cache: dict[str, tuple[UserId, float]] = {}
        self._use_cache = owner_of is not None or not getattr(store, "local", False)

    async def create(self, thread_id: Any, user_id: Any) -> ThreadId:
        """Register a new thread for ``user_id``; a no-op if that user owns it already.

        Raises :class:`~router.errors.InvalidId` for a non-canonical thread id or a
        bad user id, :class:`~router.errors.NotThreadOwner` if another user owns it.
        """
        await self.get_or_create(thread_id, user_id)
        return parse_thread_id(thread_id)

    async def get_or_create(self, thread_id: Any, user_id: Any) -> UserId:
        """Return the thread's owner, creating the thread for ``user_id`` if new.

        Raises :class:`~router.errors.NotThreadOwner` when another user owns it.
        """
        thread = parse_thread_id(thread_id)
        user = parse_user_id(user_id)
        owner = await self.owner(thread)
        if owner is None:
            owner = await self.store.claim(thread, user)
            self._cache.pop(thread, None)
        if owner != user:
            raise NotThreadOwner(thread, user, owner)
        return owner

    async def owner(self, thread_id: str) -> UserId | None:
        """The owner of a canonical thread id, or None when the thread is unknown."""
        if self._use_cache:
            hit = self._cache.get(thread_id)
            if hit is not None:
                if hit[1] > time.monotonic():
                    return hit[0]
                del self._cache[thread_id]
        owner = await self.store.owner(thread_id)
        if owner is None and self._owner_of is not None:
            try:
                answer = self._owner_of(thread_id)
                if inspect.isawaitable(answer):
                    answer = await answer
            except Exception as exc:
                # The application's thread database did not answer. This one event
                # is dead-lettered (replayable); other threads are not held up.
                raise OwnerLookupFailed(thread_id, repr(exc)[:300]) from exc
            if answer is None:
                owner = None
            elif is_user_id(answer):
                owner = UserId(answer)
            else:
                raise OwnerLookupFailed(thread_id, f"it returned {answer!r:.80}, not a user id")
        if owner is not None and self._use_cache:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[thread_id] = (owner, time.monotonic() + self._cache_ttl)
        return owner

    async def delete(self, thread_id: Any) -> bool:
        """Forget a thread. Its history and seq counter go with it on the next start."""
        thread = parse_thread_id(thread_id)
        self._cache.pop(thread, None)
        return await self.store.delete(thread)

    def invalidate(self, thread_id: str | None = None) -> None:
        """Drop cached owners (one thread, or all)."""
        if thread_id is None:
            self._cache.clear()
        else:
            self._cache.pop(thread_id, None)
