"""AgentWebSocketBridge: how agent code publishes its events to an EventRouter.

Three ways in, one path out (``EventRouter.publish``):

- run-scoped: ``start_run`` / ``async with bridge.run(...)`` give a :class:`Run`
  whose run id was minted by :func:`router.ids.new_run_id`, so it cannot disagree
  with its thread;
- compatible: the ``notify_*`` methods of older agent code, addressed by run id
  alone (the router derives the thread from it, and the user from the thread);
- synchronous: ``bridge.sync`` and ``run.sync`` for code in worker threads.

The bridge never builds or slices an id string: ids come from :mod:`router.ids`
and are judged by the router. Payload values are made JSON-safe here
(:func:`bridge.to_jsonable`); what cannot be made so is left for the router to
reject as ``malformed_event``, with a dead letter saying where it was.
"""

from __future__ import annotations

from typing import Any

from router.errors import RouterNotStarted
from router.ids import new_run_id, parse_thread_id
from router.router import EventRouter, PublishResult

from ._events import build_event, error_text
from ._json import to_jsonable
from ._portal import LoopPortal
from ._run import Run, RunScope
from ._sync import SyncBridge

__all__ = ["AgentWebSocketBridge"]


class AgentWebSocketBridge:
    """Publishes agent events to an :class:`~router.router.EventRouter`.

    Every method that publishes returns the router's
    :class:`~router.router.PublishResult`: truthy when the event was accepted,
    falsy (with ``reason``, ``detail`` and ``dead_letter_id``) when it was
    rejected. A rejected event never raises; the only exception of a publishing
    method is :class:`~router.errors.RouterNotStarted` (the router is not
    running), a misuse.

    Threads: the async methods belong to the router's event loop. The bridge
    captures that loop's anyio token (``anyio.lowlevel.current_token()``) when it
    is created inside the loop, and again whenever one of its async methods runs
    there; ``bridge.sync`` and ``run.sync`` use it to publish from any other
    thread. Create the bridge inside the loop (e.g. in the application's
    lifespan) when plain threads may publish before any async code has; anyio
    worker threads (``anyio.to_thread``, Starlette's sync endpoints) need no
    token.
    """

    def __init__(self, router: EventRouter) -> None:
        self.router = router
        self._portal = LoopPortal()
        self._portal.capture()
        self._sync = SyncBridge(self)

    def __repr__(self) -> str:
        return f"<AgentWebSocketBridge router={self.router!r}>"

    @property
    def sync(self) -> SyncBridge:
        """The same ``notify_*`` methods (and ``start_run``), blocking, for worker threads."""
        return self._sync

    async def publish(self, event: dict[str, Any]) -> PublishResult:
        """Publish one event as is. Raises only ``RouterNotStarted``."""
        self._portal.capture()
        return await self.router.publish(event)

    # ------------------------------------------------------------------ runs

    async def start_run(
        self,
        *,
        thread_id: str,
        user_id: str,
        agent_name: str,
        context: Any = None,
    ) -> Run:
        """Start a run in a thread of ``user_id``: register the thread if it is new,
        mint the run id, publish ``agent_started``.

        Raises :class:`~router.errors.NotThreadOwner` when another user owns the
        thread, :class:`~router.errors.InvalidId` for a non-canonical thread id or
        a bad user id, :class:`~router.errors.RouterNotStarted` when the router is
        not running; in each case nothing is published. A rejected
        ``agent_started`` does not raise: it is ``run.started``.
        """
        self._portal.capture()
        if not self.router.running:
            raise RouterNotStarted("start a run")
        await self.router.threads.get_or_create(thread_id, user_id)
        thread = parse_thread_id(thread_id)
        run = Run(self, run_id=new_run_id(thread), thread_id=thread, agent_name=agent_name)
        await run.start(context)
        return run

    def run(
        self,
        *,
        thread_id: str,
        user_id: str,
        agent_name: str,
        context: Any = None,
    ) -> RunScope:
        """``async with bridge.run(...) as run:`` starts a run and always ends it.

        On entry, :meth:`start_run` (and its exceptions). On exit:
        ``agent_completed`` with ``run.result`` and the measured
        ``execution_time_ms``; or, when the block raised (cancellation included),
        ``agent_error`` naming the exception's type and message, after which the
        exception propagates. Nothing more is published when the block already
        ended the run with ``run.completed()`` or ``run.error()``.
        """
        return RunScope(
            self, thread_id=thread_id, user_id=user_id, agent_name=agent_name, context=context
        )

    # ------------------------------------------------------------------ compatible API
    #
    # The thread comes from the run id and the user from the thread's owner. Code that
    # also holds the thread id it believes the run belongs to may pass it as the
    # keyword ``thread_id``: the router then checks the pair, and a run id that embeds
    # another thread is refused as ``thread_mismatch`` (dead-lettered, sent to nobody).

    async def notify_agent_started(
        self,
        run_id: str,
        agent_name: str,
        context: Any = None,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        """Publish ``agent_started`` for an existing run id."""
        return await self.publish(
            build_event(
                "agent_started",
                run_id,
                agent_name,
                {"context": to_jsonable(context)},
                thread_id=thread_id,
            )
        )

    async def notify_agent_thinking(
        self,
        run_id: str,
        agent_name: str,
        reasoning: str,
        step_number: int | None = None,
        progress_percentage: float | None = None,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        """Publish ``agent_thinking``."""
        payload = {
            "reasoning": to_jsonable(reasoning),
            "step_number": step_number,
            "progress_percentage": progress_percentage,
        }
        return await self.publish(
            build_event("agent_thinking", run_id, agent_name, payload, thread_id=thread_id)
        )

    async def notify_tool_executing(
        self,
        run_id: str,
        tool_name: str,
        agent_name: str | None = None,
        parameters: Any = None,
        *,
        tool_call_id: str | None = None,
        thread_id: str | None = None,
    ) -> PublishResult:
        """Publish ``tool_executing``. Give a ``tool_call_id`` (and the same one to
        :meth:`notify_tool_completed`) when one tool may run several times at once."""
        payload = {
            "tool_name": tool_name,
            "tool_call_id": tool_call_id,
            "parameters": to_jsonable(parameters),
        }
        return await self.publish(
            build_event("tool_executing", run_id, agent_name, payload, thread_id=thread_id)
        )

    async def notify_tool_completed(
        self,
        run_id: str,
        tool_name: str,
        result: Any = None,
        agent_name: str | None = None,
        execution_time_ms: float | None = None,
        *,
        success: bool | None = None,
        tool_call_id: str | None = None,
        thread_id: str | None = None,
    ) -> PublishResult:
        """Publish ``tool_completed``; it needs an open ``tool_executing`` of the tool."""
        payload = {
            "tool_name": tool_name,
            "tool_call_id": tool_call_id,
            "result": to_jsonable(result),
            "execution_time_ms": execution_time_ms,
            "success": success,
        }
        return await self.publish(
            build_event("tool_completed", run_id, agent_name, payload, thread_id=thread_id)
        )

    async def notify_agent_completed(
        self,
        run_id: str,
        agent_name: str,
        result: Any = None,
        execution_time_ms: float | None = None,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        """Publish ``agent_completed``; nothing of the run may follow it."""
        payload = {"result": to_jsonable(result), "execution_time_ms": execution_time_ms}
        return await self.publish(
            build_event("agent_completed", run_id, agent_name, payload, thread_id=thread_id)
        )

    async def notify_agent_error(
        self,
        run_id: str,
        agent_name: str,
        error: str | BaseException,
        error_context: Any = None,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        """Publish ``agent_error``. An exception is written as ``"Type: message"``."""
        payload = {"error": error_text(error), "error_context": to_jsonable(error_context)}
        return await self.publish(
            build_event("agent_error", run_id, agent_name, payload, thread_id=thread_id)
        )

    async def notify_progress_update(
        self,
        run_id: str,
        agent_name: str,
        progress: Any,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        """Publish ``progress_update``; ``progress`` must be a mapping (a JSON object)."""
        payload = {"progress": to_jsonable(progress)}
        return await self.publish(
            build_event("progress_update", run_id, agent_name, payload, thread_id=thread_id)
        )

    async def notify_custom(
        self,
        run_id: str,
        agent_name: str,
        notification_type: str,
        data: Any = None,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        """Publish a ``custom`` event of the given ``notification_type``."""
        payload = {"notification_type": notification_type, "data": to_jsonable(data)}
        return await self.publish(
            build_event("custom", run_id, agent_name, payload, thread_id=thread_id)
        )
