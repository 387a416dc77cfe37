"""bridge: the agent-side adapter of agent-event-router.

    from bridge import AgentWebSocketBridge

    bridge = AgentWebSocketBridge(router)
    async with bridge.run(thread_id=t, user_id=u, agent_name="researcher") as run:
        await run.thinking("looking up sources", step_number=1)
        async with run.tool("search", {"q": "..."}) as call:
            call.result = await search(...)
    # exit: agent_completed (or agent_error if the block raised, then re-raised)

Also: the ``notify_*`` methods for existing agent code, ``bridge.sync`` and
``run.sync`` for worker threads, and :class:`AgentBridgeMixin` for agent classes.
The errors and result type a bridge user meets are re-exported from ``router``.
"""

from __future__ import annotations

from router.errors import (
    IdError,
    InvalidId,
    NotThreadOwner,
    RouterError,
    RouterNotStarted,
    ThreadMismatch,
    ThreadNotFound,
)
from router.router import PublishResult

from ._bridge import AgentWebSocketBridge
from ._events import DEFAULT_AGENT_NAME
from ._json import NotJSON, to_jsonable
from ._mixin import AgentBridgeMixin
from ._run import Run, RunScope, ToolCall
from ._sync import SyncBridge, SyncRun, SyncToolCall

__all__ = [
    "AgentBridgeMixin",
    "AgentWebSocketBridge",
    "DEFAULT_AGENT_NAME",
    "IdError",
    "InvalidId",
    "NotJSON",
    "NotThreadOwner",
    "PublishResult",
    "RouterError",
    "RouterNotStarted",
    "Run",
    "RunScope",
    "SyncBridge",
    "SyncRun",
    "SyncToolCall",
    "ThreadMismatch",
    "ThreadNotFound",
    "ToolCall",
    "to_jsonable",
]
