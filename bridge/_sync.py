"""The synchronous twin of the bridge, for agent code in worker threads.

``bridge.sync`` has the ``notify_*`` methods (and ``start_run``); ``run.sync``
has the run methods and ``tool`` as a plain context manager. Each call runs the
async method on the router's event loop (:func:`anyio.from_thread.run` with the
token the bridge captured) and blocks until the event has been published, so the
calls of one thread are published in the order they were made. Calls for one run
from several threads are serialised by a lock (per run for ``run.sync``, per run
id stripe for ``bridge.sync``), so each is published whole before the next starts.

Calling any of them from inside a running event loop raises ``RuntimeError``
instead of blocking it (on the router's own loop it would deadlock): async code
awaits the async methods. If the loop is stopped while a thread waits, the call
waits too; stop worker threads before the router.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

from router.errors import RouterError
from router.router import PublishResult

if TYPE_CHECKING:
    from ._bridge import AgentWebSocketBridge
    from ._run import Run, ToolCall

__all__ = ["SyncBridge", "SyncRun", "SyncToolCall"]

logger = logging.getLogger("bridge")


class SyncBridge:
    """``bridge.sync``: the bridge's publishing methods, blocking, safe from any thread.

    Same arguments, results and exceptions as the async methods, plus
    ``RuntimeError`` when called from inside a running event loop or before the
    bridge has seen its loop.
    """

    def __init__(self, bridge: AgentWebSocketBridge) -> None:
        self._bridge = bridge

    def _call(
        self, run_id: Any, func: Callable[[], Awaitable[PublishResult]], what: str
    ) -> PublishResult:
        portal = self._bridge._portal
        return portal.call(func, portal.lock_for(run_id), f"bridge.sync.{what}")

    def start_run(
        self, *, thread_id: str, user_id: str, agent_name: str, context: Any = None
    ) -> Run:
        """:meth:`AgentWebSocketBridge.start_run`, blocking."""
        func = partial(
            self._bridge.start_run,
            thread_id=thread_id,
            user_id=user_id,
            agent_name=agent_name,
            context=context,
        )
        return self._bridge._portal.call(func, contextlib.nullcontext(), "bridge.sync.start_run")

    def notify_agent_started(
        self,
        run_id: str,
        agent_name: str,
        context: Any = None,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        return self._call(
            run_id,
            partial(
                self._bridge.notify_agent_started, run_id, agent_name, context, thread_id=thread_id
            ),
            "notify_agent_started",
        )

    def notify_agent_thinking(
        self,
        run_id: str,
        agent_name: str,
        reasoning: str,
        step_number: int | None = None,
        progress_percentage: float | None = None,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        return self._call(
            run_id,
            partial(
                self._bridge.notify_agent_thinking,
                run_id,
                agent_name,
                reasoning,
                step_number,
                progress_percentage,
                thread_id=thread_id,
            ),
            "notify_agent_thinking",
        )

    def notify_tool_executing(
        self,
        run_id: str,
        tool_name: str,
        agent_name: str | None = None,
        parameters: Any = None,
        *,
        tool_call_id: str | None = None,
        thread_id: str | None = None,
    ) -> PublishResult:
        return self._call(
            run_id,
            partial(
                self._bridge.notify_tool_executing,
                run_id,
                tool_name,
                agent_name,
                parameters,
                tool_call_id=tool_call_id,
                thread_id=thread_id,
            ),
            "notify_tool_executing",
        )

    def notify_tool_completed(
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
        return self._call(
            run_id,
            partial(
                self._bridge.notify_tool_completed,
                run_id,
                tool_name,
                result,
                agent_name,
                execution_time_ms,
                success=success,
                tool_call_id=tool_call_id,
                thread_id=thread_id,
            ),
            "notify_tool_completed",
        )

    def notify_agent_completed(
        self,
        run_id: str,
        agent_name: str,
        result: Any = None,
        execution_time_ms: float | None = None,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        return self._call(
            run_id,
            partial(
                self._bridge.notify_agent_completed,
                run_id,
                agent_name,
                result,
                execution_time_ms,
                thread_id=thread_id,
            ),
            "notify_agent_completed",
        )

    def notify_agent_error(
        self,
        run_id: str,
        agent_name: str,
        error: str | BaseException,
        error_context: Any = None,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        return self._call(
            run_id,
            partial(
                self._bridge.notify_agent_error,
                run_id,
                agent_name,
                error,
                error_context,
                thread_id=thread_id,
            ),
            "notify_agent_error",
        )

    def notify_progress_update(
        self,
        run_id: str,
        agent_name: str,
        progress: Any,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        return self._call(
            run_id,
            partial(
                self._bridge.notify_progress_update,
                run_id,
                agent_name,
                progress,
                thread_id=thread_id,
            ),
            "notify_progress_update",
        )

    def notify_custom(
        self,
        run_id: str,
        agent_name: str,
        notification_type: str,
        data: Any = None,
        *,
        thread_id: str | None = None,
    ) -> PublishResult:
        return self._call(
            run_id,
            partial(
                self._bridge.notify_custom,
                run_id,
                agent_name,
                notification_type,
                data,
                thread_id=thread_id,
            ),
            "notify_custom",
        )


class SyncRun:
    """``run.sync``: the :class:`~bridge.Run` methods, blocking, safe from any thread."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._lock = threading.Lock()

    def _call(self, func: Callable[[], Awaitable[PublishResult]], what: str) -> PublishResult:
        return self._run.bridge._portal.call(func, self._lock, f"run.sync.{what}")

    def thinking(
        self,
        reasoning: str,
        step_number: int | None = None,
        progress_percentage: float | None = None,
    ) -> PublishResult:
        return self._call(
            partial(self._run.thinking, reasoning, step_number, progress_percentage), "thinking"
        )

    def tool_executing(
        self, tool_name: str, parameters: Any = None, tool_call_id: str | None = None
    ) -> PublishResult:
        return self._call(
            partial(self._run.tool_executing, tool_name, parameters, tool_call_id), "tool_executing"
        )

    def tool_completed(
        self,
        tool_name: str,
        result: Any = None,
        execution_time_ms: float | None = None,
        success: bool = True,
        tool_call_id: str | None = None,
    ) -> PublishResult:
        return self._call(
            partial(
                self._run.tool_completed,
                tool_name,
                result,
                execution_time_ms,
                success,
                tool_call_id,
            ),
            "tool_completed",
        )

    def progress(self, progress: Any) -> PublishResult:
        return self._call(partial(self._run.progress, progress), "progress")

    def custom(self, notification_type: str, data: Any = None) -> PublishResult:
        return self._call(partial(self._run.custom, notification_type, data), "custom")

    def completed(
        self, result: Any = None, execution_time_ms: float | None = None
    ) -> PublishResult:
        return self._call(partial(self._run.completed, result, execution_time_ms), "completed")

    def error(self, error: str | BaseException, error_context: Any = None) -> PublishResult:
        return self._call(partial(self._run.error, error, error_context), "error")

    def tool(
        self, tool_name: str, parameters: Any = None, *, tool_call_id: str | None = None
    ) -> SyncToolCall:
        """``with run.sync.tool("search", {...}) as call:``, like :meth:`Run.tool`."""
        return SyncToolCall(self, self._run.tool(tool_name, parameters, tool_call_id=tool_call_id))


class SyncToolCall:
    """A :class:`~bridge.ToolCall` as a plain context manager; the call is ``.call``."""

    def __init__(self, sync_run: SyncRun, call: ToolCall) -> None:
        self._sync_run = sync_run
        self.call = call

    def __enter__(self) -> ToolCall:
        portal = self.call.run.bridge._portal
        portal.call(self.call.begin, self._sync_run._lock, "run.sync.tool")
        return self.call

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        portal = self.call.run.bridge._portal
        try:
            portal.call(partial(self.call.end, exc), self._sync_run._lock, "run.sync.tool")
        except RouterError as error:
            if exc is None:
                raise
            # Do not hide the exception being handled (the router stopped meanwhile).
            logger.warning("could not publish tool_completed of %r: %s", self.call, error)
