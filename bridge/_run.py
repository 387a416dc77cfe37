"""Run and ToolCall: the run-scoped side of the bridge.

A :class:`Run` knows its run id, its thread and its agent name, so its methods
take only what the event is about. It publishes its events one at a time, in the
order its methods were called (an anyio lock, FIFO), whichever task or thread
(``run.sync``) calls them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from router.errors import RouterError
from router.ids import (
    RunId,
    ThreadId,
    extract_thread_id,
    new_event_id,
    parse_run_id,
    validate_id_pair,
)
from router.router import PublishResult

from ._events import build_event, describe_exception, error_text
from ._json import to_jsonable
from ._sync import SyncRun

if TYPE_CHECKING:
    from ._bridge import AgentWebSocketBridge

__all__ = ["Run", "RunScope", "ToolCall"]

logger = logging.getLogger("bridge")


def _elapsed_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 3)


class Run:
    """One agent run: ``run_id``, ``thread_id``, ``agent_name`` and its events.

    Normally obtained from :meth:`AgentWebSocketBridge.start_run` or
    ``bridge.run(...)``. Construct one directly to continue a run whose
    ``agent_started`` was published elsewhere (a run id handed to a worker):
    the ids are checked through :mod:`router.ids` (``validate_id_pair`` when a
    ``thread_id`` is given), raising :class:`~router.errors.InvalidId` or
    :class:`~router.errors.ThreadMismatch` for ids that do not belong together.

    Each event method returns the :class:`~router.router.PublishResult` and
    never raises for a rejected event (only ``RouterNotStarted``). Every event
    carries the thread id too, so the router cross-checks the pair.
    """

    def __init__(
        self,
        bridge: AgentWebSocketBridge,
        *,
        run_id: str,
        agent_name: str,
        thread_id: str | None = None,
    ) -> None:
        if thread_id is None:
            thread = extract_thread_id(run_id)
        else:
            thread = validate_id_pair(run_id, thread_id)
        self.bridge = bridge
        self.run_id: RunId = parse_run_id(run_id)
        self.thread_id: ThreadId = thread
        self.agent_name = agent_name
        #: The result ``bridge.run(...)`` publishes with ``agent_completed``.
        self.result: Any = None
        #: What became of ``agent_started`` (None when this Run did not publish it).
        self.started: PublishResult | None = None
        self._started_at = time.perf_counter()
        self._finished = False
        # FIFO; fast_acquire: no extra checkpoint when nobody else is publishing.
        self._lock = anyio.Lock(fast_acquire=True)
        self._sync = SyncRun(self)

    def __repr__(self) -> str:
        return (
            f"<Run run_id={self.run_id!r} thread_id={self.thread_id!r} "
            f"agent_name={self.agent_name!r}>"
        )

    @property
    def finished(self) -> bool:
        """True once an ``agent_completed`` or ``agent_error`` of this Run was accepted."""
        return self._finished

    @property
    def sync(self) -> SyncRun:
        """The same methods, blocking, for code in worker threads (see ``bridge.sync``)."""
        return self._sync

    async def _emit(self, kind: str, payload: dict[str, Any]) -> PublishResult:
        event = build_event(kind, self.run_id, self.agent_name, payload, thread_id=self.thread_id)
        async with self._lock:
            return await self.bridge.publish(event)

    async def start(self, context: Any = None) -> PublishResult:
        """Publish ``agent_started`` (done by ``start_run``; call it yourself only
        for a Run you constructed for a run nobody has started)."""
        self._started_at = time.perf_counter()
        self.started = await self._emit("agent_started", {"context": to_jsonable(context)})
        return self.started

    async def thinking(
        self,
        reasoning: str,
        step_number: int | None = None,
        progress_percentage: float | None = None,
    ) -> PublishResult:
        """Publish ``agent_thinking`` (``progress_percentage`` within 0..100)."""
        return await self._emit(
            "agent_thinking",
            {
                "reasoning": to_jsonable(reasoning),
                "step_number": step_number,
                "progress_percentage": progress_percentage,
            },
        )

    async def tool_executing(
        self, tool_name: str, parameters: Any = None, tool_call_id: str | None = None
    ) -> PublishResult:
        """Publish ``tool_executing``. Prefer :meth:`tool`, which pairs and times it."""
        return await self._emit(
            "tool_executing",
            {
                "tool_name": tool_name,
                "tool_call_id": tool_call_id,
                "parameters": to_jsonable(parameters),
            },
        )

    async def tool_completed(
        self,
        tool_name: str,
        result: Any = None,
        execution_time_ms: float | None = None,
        success: bool = True,
        tool_call_id: str | None = None,
    ) -> PublishResult:
        """Publish ``tool_completed``; it needs an open ``tool_executing`` of the tool
        (and of the ``tool_call_id`` when one is given)."""
        return await self._emit(
            "tool_completed",
            {
                "tool_name": tool_name,
                "tool_call_id": tool_call_id,
                "result": to_jsonable(result),
                "execution_time_ms": execution_time_ms,
                "success": success,
            },
        )

    async def progress(self, progress: Any) -> PublishResult:
        """Publish ``progress_update``; ``progress`` must be a mapping (a JSON object)."""
        return await self._emit("progress_update", {"progress": to_jsonable(progress)})

    async def custom(self, notification_type: str, data: Any = None) -> PublishResult:
        """Publish a ``custom`` event."""
        return await self._emit(
            "custom", {"notification_type": notification_type, "data": to_jsonable(data)}
        )

    async def completed(
        self, result: Any = None, execution_time_ms: float | None = None
    ) -> PublishResult:
        """Publish ``agent_completed``; ``execution_time_ms`` defaults to the time
        since the run started. Nothing of the run may follow it."""
        if execution_time_ms is None:
            execution_time_ms = _elapsed_ms(self._started_at)
        outcome = await self._emit(
            "agent_completed",
            {"result": to_jsonable(result), "execution_time_ms": execution_time_ms},
        )
        self._finished = self._finished or bool(outcome)
        return outcome

    async def error(self, error: str | BaseException, error_context: Any = None) -> PublishResult:
        """Publish ``agent_error``. For an exception, ``error`` is ``"Type: message"``
        and ``error_context`` defaults to ``{"type": ..., "message": ...}``."""
        if isinstance(error, BaseException) and error_context is None:
            error_context = describe_exception(error)
        outcome = await self._emit(
            "agent_error",
            {"error": error_text(error), "error_context": to_jsonable(error_context)},
        )
        self._finished = self._finished or bool(outcome)
        return outcome

    def tool(
        self, tool_name: str, parameters: Any = None, *, tool_call_id: str | None = None
    ) -> ToolCall:
        """``async with run.tool("search", {"q": ...}) as call:`` publishes
        ``tool_executing``, runs the block, then ``tool_completed`` with
        ``call.result``, the measured ``execution_time_ms`` and ``success``.

        When the block raises (cancellation included), ``tool_completed`` has
        ``success: false`` and ``result: {"error": {"type": ..., "message": ...}}``,
        and the exception propagates. Each call gets its own ``tool_call_id``
        (minted by :func:`router.ids.new_event_id` unless given), so concurrent
        calls of one tool pair correctly.
        """
        return ToolCall(self, tool_name, parameters, tool_call_id=tool_call_id)


class ToolCall:
    """One tool call of a :class:`Run`, as an async context manager (see :meth:`Run.tool`).

    Set ``result`` inside the block. After it: ``success``, ``execution_time_ms``,
    and the two publish results ``executing`` and ``completed``.
    """

    def __init__(
        self, run: Run, tool_name: str, parameters: Any, *, tool_call_id: str | None = None
    ) -> None:
        self.run = run
        self.tool_name = tool_name
        self.parameters = parameters
        self.tool_call_id = new_event_id() if tool_call_id is None else tool_call_id
        self.result: Any = None
        self.success: bool | None = None
        self.execution_time_ms: float | None = None
        self.executing: PublishResult | None = None
        self.completed: PublishResult | None = None
        self._started_at = 0.0

    def __repr__(self) -> str:
        return f"<ToolCall {self.tool_name!r} tool_call_id={self.tool_call_id!r}>"

    async def begin(self) -> ToolCall:
        """Publish ``tool_executing`` and start the clock."""
        if self.executing is not None:
            raise RuntimeError(f"{self!r} has already begun; use run.tool(...) once per call")
        self.executing = await self.run.tool_executing(
            self.tool_name, self.parameters, self.tool_call_id
        )
        self._started_at = time.perf_counter()
        return self

    async def end(self, exc: BaseException | None = None) -> PublishResult:
        """Stop the clock and publish ``tool_completed`` (failed when ``exc`` is given)."""
        self.execution_time_ms = _elapsed_ms(self._started_at)
        self.success = exc is None
        result = self.result if exc is None else {"error": describe_exception(exc)}
        self.completed = await self.run.tool_completed(
            self.tool_name, result, self.execution_time_ms, self.success, self.tool_call_id
        )
        return self.completed

    async def __aenter__(self) -> ToolCall:
        return await self.begin()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.end()
            return
        # Shielded: a cancelled block must still close its tool call.
        with anyio.CancelScope(shield=True):
            await _quietly(self.end(exc), f"tool_completed of {self!r}")


class RunScope:
    """``async with bridge.run(...) as run:`` (see :meth:`AgentWebSocketBridge.run`)."""

    def __init__(
        self,
        bridge: AgentWebSocketBridge,
        *,
        thread_id: str,
        user_id: str,
        agent_name: str,
        context: Any = None,
    ) -> None:
        self._bridge = bridge
        self._options: dict[str, Any] = dict(
            thread_id=thread_id, user_id=user_id, agent_name=agent_name, context=context
        )
        self.run: Run | None = None

    async def __aenter__(self) -> Run:
        if self.run is not None:
            raise RuntimeError("a bridge.run(...) scope can be entered only once")
        self.run = await self._bridge.start_run(**self._options)
        return self.run

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run = self.run
        if run is None or run.finished:
            return
        if exc is None:
            outcome = await run.completed(run.result)
            if not outcome and outcome.reason == "malformed_event":
                # The result could not be sent (it is in the dead letter); end the run
                # visibly rather than leave the browser waiting.
                await run.error(
                    f"agent_completed was rejected: {outcome.detail}",
                    {"dead_letter_id": outcome.dead_letter_id},
                )
            return
        with anyio.CancelScope(shield=True):
            await _quietly(run.error(exc), f"agent_error of {run!r}")


async def _quietly(publishing: Awaitable[PublishResult], what: str) -> None:
    """Await a publish on an error path without hiding the error being handled."""
    try:
        await publishing
    except RouterError as exc:  # the router stopped meanwhile (RouterNotStarted)
        logger.warning("could not publish %s while handling an exception: %s", what, exc)
