"""Exceptions raised by agent-event-router.

Hierarchy::

    RouterError
     ├── IdError (also ValueError)          an id from outside is unusable
     │    ├── InvalidId                      outside the grammar of router.ids
     │    └── ThreadMismatch                 a run id embeds another thread
     ├── ThreadNotFound (also LookupError)   no such thread in the thread store
     ├── NotThreadOwner (also PermissionError)  the thread belongs to another user
     ├── RouterNotStarted (also RuntimeError)   publish() before start()
     ├── BackendDown                         internal: the backend (or the app's
     │                                       owner_of) did not answer; the router
     │                                       spools the event and retries
     └── BackendUnavailable                  an event could be neither routed,
                                             spooled nor stored (scale-out only)

Every exception carries the offending values as attributes and names them in its
message, so a log line alone is enough to find the event.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendDown",
    "BackendUnavailable",
    "IdError",
    "InvalidId",
    "NotThreadOwner",
    "OwnerLookupFailed",
    "RouterError",
    "RouterNotStarted",
    "ThreadMismatch",
    "ThreadNotFound",
]

_REPR_LIMIT = 80


def short_repr(value: Any) -> str:
    """repr() of a value from outside, cut to a readable length."""
    text = repr(value)
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 5] + "…" + text[-4:]
    return text


class RouterError(Exception):
    """Base class of every error this library raises on purpose."""


class IdError(RouterError, ValueError):
    """An id is unusable. Subclasses say why."""


class InvalidId(IdError):
    """A value is not a canonical id of the expected kind.

    Attributes: ``value`` (as given), ``kind`` (``"thread_id"``, ``"run_id"``,
    ``"user_id"``, ``"operation"``...), ``why`` (one short phrase).
    """

    def __init__(self, value: Any, kind: str, why: str = "") -> None:
        self.value = value
        self.kind = kind
        self.why = why
        message = f"invalid {kind} {short_repr(value)}"
        if why:
            message += f": {why}"
        super().__init__(message)


class ThreadMismatch(IdError):
    """A run id embeds one thread while the event names another.

    Attributes: ``run_id``, ``thread_id`` (the one the event names) and
    ``embedded`` (the text inside the run id).
    """

    def __init__(self, run_id: str, thread_id: str, embedded: str) -> None:
        self.run_id = run_id
        self.thread_id = thread_id
        self.embedded = embedded
        super().__init__(
            f"run_id {short_repr(run_id)} embeds thread {short_repr(embedded)}, "
            f"but the event names thread {short_repr(thread_id)}"
        )


class ThreadNotFound(RouterError, LookupError):
    """No thread with this id is known to the thread store."""

    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        super().__init__(f"thread {short_repr(thread_id)} not found")


class NotThreadOwner(RouterError, PermissionError):
    """The thread exists but belongs to another user."""

    def __init__(self, thread_id: str, user_id: str, owner: str) -> None:
        self.thread_id = thread_id
        self.user_id = user_id
        self.owner = owner
        super().__init__(
            f"user {short_repr(user_id)} does not own thread {short_repr(thread_id)} "
            f"(owner: {short_repr(owner)})"
        )


class RouterNotStarted(RouterError, RuntimeError):
    """The router was used before ``start()`` or after ``stop()``."""

    def __init__(self, action: str = "publish") -> None:
        super().__init__(
            f"cannot {action}: the router is not running "
            "(use 'async with router:' or mount EventRouterMiddleware)"
        )


class BackendDown(RouterError):
    """The backend's server (or the application's ``owner_of``) did not answer.

    Raised inside the router, never out of ``publish``: the event is spooled and
    sent through the pipeline again when the backend answers."""


class OwnerLookupFailed(RouterError):
    """The application's ``owner_of`` raised or answered something that is not a
    user id. Internal: the router dead-letters the event as ``backend_unavailable``
    (replayable once the application's thread store answers again)."""

    def __init__(self, thread_id: str, why: str) -> None:
        self.thread_id = thread_id
        super().__init__(f"owner_of({thread_id!r}) failed: {why}")


class BackendUnavailable(RouterError):
    """An event could be neither routed, spooled nor written to any store."""
