"""Building inbound events as the router reads them (``router.events``)."""

from __future__ import annotations

from typing import Any

from ._json import exception_message, to_jsonable

__all__ = ["DEFAULT_AGENT_NAME", "build_event", "describe_exception", "error_text"]

#: The agent name used when the caller gives none.
DEFAULT_AGENT_NAME = "agent"


def build_event(
    kind: str,
    run_id: Any,
    agent_name: str | None,
    payload: dict[str, Any],
    *,
    thread_id: Any = None,
) -> dict[str, Any]:
    """An inbound event as a dict. ``None`` payload values are left out (unset).

    No user id: the router takes the thread's owner. ``thread_id`` is added only
    when given; the router then checks the pair with
    :func:`router.ids.validate_id_pair`, otherwise it derives the thread from the
    run id with :func:`router.ids.extract_thread_id`.
    """
    event: dict[str, Any] = dict(
        type=kind,
        run_id=run_id,
        agent_name=DEFAULT_AGENT_NAME if agent_name is None else agent_name,
        payload={key: value for key, value in payload.items() if value is not None},
    )
    if thread_id is not None:
        event.update(thread_id=thread_id)
    return event


def describe_exception(exc: BaseException) -> dict[str, str]:
    """``{"type": "ValueError", "message": "..."}``."""
    return {"type": type(exc).__name__, "message": exception_message(exc)}


def error_text(error: Any) -> Any:
    """An ``agent_error``'s ``error``: ``"Type: message"`` for an exception."""
    if isinstance(error, BaseException):
        message = exception_message(error)
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    return to_jsonable(error)
