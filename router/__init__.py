"""agent-event-router: validated, per-user isolated routing of AI-agent events to
WebSocket clients, with per-thread history, resume and dead letters.

    from router import EventRouter, EventRouterMiddleware
"""

from __future__ import annotations

from .auth import JWTAuthenticator, Principal
from .deadletters import DeadLetterFilter, DeadLetterRecord, DeadLetterStore
from .errors import (
    BackendUnavailable,
    IdError,
    InvalidId,
    NotThreadOwner,
    RouterError,
    RouterNotStarted,
    ThreadMismatch,
    ThreadNotFound,
)
from .events import InboundEvent, OutboundFrame
from .ids import (
    RunId,
    ThreadId,
    UserId,
    explain,
    extract_thread_id,
    is_run_id,
    is_thread_id,
    is_user_id,
    new_connection_id,
    new_dead_letter_id,
    new_event_id,
    new_run_id,
    new_thread_id,
    validate_id_pair,
)
from .middleware import EventRouterMiddleware
from .router import EventRouter, PublishResult, ReplayReport

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "DeadLetterFilter",
    "DeadLetterRecord",
    "DeadLetterStore",
    "EventRouter",
    "EventRouterMiddleware",
    "IdError",
    "InboundEvent",
    "InvalidId",
    "JWTAuthenticator",
    "NotThreadOwner",
    "OutboundFrame",
    "Principal",
    "PublishResult",
    "ReplayReport",
    "RouterError",
    "RouterNotStarted",
    "RunId",
    "ThreadId",
    "ThreadMismatch",
    "ThreadNotFound",
    "UserId",
    "__version__",
    "explain",
    "extract_thread_id",
    "is_run_id",
    "is_thread_id",
    "is_user_id",
    "new_connection_id",
    "new_dead_letter_id",
    "new_event_id",
    "new_run_id",
    "new_thread_id",
    "validate_id_pair",
]
