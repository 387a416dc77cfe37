"""Run lifecycle: the order of events within one run (pipeline stage 5).

A run starts with ``agent_started``; nothing follows ``agent_completed`` or
``agent_error``; ``tool_completed`` needs an open ``tool_executing`` of the same
tool (and the same ``tool_call_id`` when one is given).

:class:`RunLifecycle` is the in-process state machine. Its memory is bounded:
finished runs are forgotten ``finished_ttl`` seconds after they finish, and at
most ``max_runs`` unfinished runs are tracked (the least recently active one is
forgotten first; an event for a forgotten unfinished run is then a violation,
which an operator can see and replay).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

__all__ = ["RunLifecycle", "RunState"]


class RunState:
    __slots__ = ("finished", "open_tools")

    def __init__(self) -> None:
        self.finished: str | None = None
        self.open_tools: list[tuple[str, str | None]] = []


def _tool_key(payload: Any) -> tuple[str, str | None]:
    return payload.tool_name, payload.tool_call_id


class RunLifecycle:
    """Checks and records the lifecycle of every run. Not thread-safe: one event loop."""

    def __init__(self, *, finished_ttl: float = 600.0, max_runs: int = 100_000) -> None:
        self.finished_ttl = finished_ttl
        self.max_runs = max_runs
        self._active: OrderedDict[str, RunState] = OrderedDict()
        self._finished: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._active) + len(self._finished)

    def _sweep(self, now: float) -> None:
        finished = self._finished
        while finished:
            _, (_, expires) = next(iter(finished.items()))
            if expires > now:
                break
            finished.popitem(last=False)

    def advance(self, run_id: str, event_type: str, payload: Any) -> str | None:
        """Apply one event; return None when it is legal, else a sentence saying why not.

        State changes only when the event is legal.
        """
        done = self._finished.get(run_id)
        if done is not None:
            if done[1] > time.monotonic():
                return f"run {run_id!r} already ended with {done[0]}; no {event_type} may follow"
            del self._finished[run_id]
        state = self._active.get(run_id)
        if event_type == "agent_started":
            if state is not None:
                return f"run {run_id!r} has already started"
            state = self._active[run_id] = RunState()
            if len(self._active) > self.max_runs:
                self._active.popitem(last=False)
            return None
        if state is None:
            return f"run {run_id!r} has not started: its first event must be agent_started"
        self._active.move_to_end(run_id)
        if event_type == "tool_executing":
            key = _tool_key(payload)
            if key[1] is not None and key in state.open_tools:
                return f"tool call {key[1]!r} of run {run_id!r} is already executing"
            state.open_tools.append(key)
        elif event_type == "tool_completed":
            name, call_id = _tool_key(payload)
            match: tuple[str, str | None] | None = None
            for open_key in state.open_tools:
                if open_key[0] == name and (call_id is None or open_key[1] == call_id):
                    match = open_key
                    break
            if match is None:
                which = f"{name!r}" + (f" (tool_call_id {call_id!r})" if call_id else "")
                return (
                    f"tool_completed for {which} without an open tool_executing in run {run_id!r}"
                )
            state.open_tools.remove(match)
        elif event_type in ("agent_completed", "agent_error"):
            del self._active[run_id]
            now = time.monotonic()
            self._finished[run_id] = (event_type, now + self.finished_ttl)
            self._sweep(now)
        return None

    def forget(self, run_id: str) -> None:
        self._active.pop(run_id, None)
        self._finished.pop(run_id, None)
