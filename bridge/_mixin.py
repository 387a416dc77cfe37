"""AgentBridgeMixin: event methods for agent classes that are handed a bridge later.

An agent object is often built before anyone knows where its events should go;
the application then calls ``agent.set_websocket_bridge(bridge, run_id)``. Until
it does, every ``emit_*`` is a no-op that returns a falsy result, and the first
one logs a single WARNING for that agent object (not one per event), so a
forgotten bridge is visible without flooding the log.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from router.router import PublishResult

if TYPE_CHECKING:
    from ._bridge import AgentWebSocketBridge

__all__ = ["AgentBridgeMixin"]

logger = logging.getLogger("bridge")

NO_BRIDGE = "no_bridge"


class AgentBridgeMixin:
    """Gives an agent class ``emit_*`` methods that publish through a bridge.

    The agent name is the object's ``agent_name`` attribute, else its ``name``,
    else its class name. The mixin has no ``__init__``; it keeps its state in
    three attributes named ``_websocket_*``.

    Each ``emit_*`` returns the :class:`~router.router.PublishResult` and never
    raises for a rejected event (only ``RouterNotStarted``); without a bridge it
    returns ``PublishResult(accepted=False, reason="no_bridge")``, publishing
    nothing.
    """

    _websocket_bridge: AgentWebSocketBridge | None = None
    _websocket_run_id: str | None = None
    _websocket_warned: bool = False

    def set_websocket_bridge(self, bridge: AgentWebSocketBridge | None, run_id: str | None) -> None:
        """Send this agent's events through ``bridge`` for the run ``run_id``
        (``None`` for either detaches it)."""
        self._websocket_bridge = bridge
        self._websocket_run_id = run_id

    @property
    def has_websocket_bridge(self) -> bool:
        return self._websocket_bridge is not None and self._websocket_run_id is not None

    def _websocket_agent_name(self) -> str:
        for attribute in ("agent_name", "name"):
            value = getattr(self, attribute, None)
            if isinstance(value, str) and value:
                return value
        return type(self).__name__

    def _websocket_target(self, what: str) -> tuple[AgentWebSocketBridge, str] | PublishResult:
        bridge, run_id = self._websocket_bridge, self._websocket_run_id
        if bridge is not None and run_id is not None:
            return bridge, run_id
        detail = (
            f"{what} of agent {self._websocket_agent_name()!r} was not sent: no bridge is set "
            "(call set_websocket_bridge(bridge, run_id) first)"
        )
        if not self._websocket_warned:
            self._websocket_warned = True
            logger.warning("%s; further events of this agent are dropped the same way", detail)
        return PublishResult(False, "", reason=NO_BRIDGE, detail=detail)

    async def emit_agent_started(self, context: Any = None) -> PublishResult:
        target = self._websocket_target("agent_started")
        if isinstance(target, PublishResult):
            return target
        bridge, run_id = target
        return await bridge.notify_agent_started(run_id, self._websocket_agent_name(), context)

    async def emit_thinking(
        self,
        reasoning: str,
        step_number: int | None = None,
        progress_percentage: float | None = None,
    ) -> PublishResult:
        target = self._websocket_target("agent_thinking")
        if isinstance(target, PublishResult):
            return target
        bridge, run_id = target
        return await bridge.notify_agent_thinking(
            run_id, self._websocket_agent_name(), reasoning, step_number, progress_percentage
        )

    async def emit_tool_executing(
        self, tool_name: str, parameters: Any = None, *, tool_call_id: str | None = None
    ) -> PublishResult:
        target = self._websocket_target("tool_executing")
        if isinstance(target, PublishResult):
            return target
        bridge, run_id = target
        return await bridge.notify_tool_executing(
            run_id, tool_name, self._websocket_agent_name(), parameters, tool_call_id=tool_call_id
        )

    async def emit_tool_completed(
        self,
        tool_name: str,
        result: Any = None,
        execution_time_ms: float | None = None,
        *,
        success: bool | None = None,
        tool_call_id: str | None = None,
    ) -> PublishResult:
        target = self._websocket_target("tool_completed")
        if isinstance(target, PublishResult):
            return target
        bridge, run_id = target
        return await bridge.notify_tool_completed(
            run_id,
            tool_name,
            result,
            self._websocket_agent_name(),
            execution_time_ms,
            success=success,
            tool_call_id=tool_call_id,
        )

    async def emit_agent_completed(
        self, result: Any = None, execution_time_ms: float | None = None
    ) -> PublishResult:
        target = self._websocket_target("agent_completed")
        if isinstance(target, PublishResult):
            return target
        bridge, run_id = target
        return await bridge.notify_agent_completed(
            run_id, self._websocket_agent_name(), result, execution_time_ms
        )

    async def emit_progress(self, progress: Any) -> PublishResult:
        target = self._websocket_target("progress_update")
        if isinstance(target, PublishResult):
            return target
        bridge, run_id = target
        return await bridge.notify_progress_update(run_id, self._websocket_agent_name(), progress)

    async def emit_error(
        self, error: str | BaseException, error_context: Any = None
    ) -> PublishResult:
        target = self._websocket_target("agent_error")
        if isinstance(target, PublishResult):
            return target
        bridge, run_id = target
        return await bridge.notify_agent_error(
            run_id, self._websocket_agent_name(), error, error_context
        )

    async def emit_custom(self, notification_type: str, data: Any = None) -> PublishResult:
        target = self._websocket_target("custom")
        if isinstance(target, PublishResult):
            return target
        bridge, run_id = target
        return await bridge.notify_custom(
            run_id, self._websocket_agent_name(), notification_type, data
        )
