"""What every part of the suite shares: the scenarios, the event every system sends,
and the figures read from ``/proc`` about a process.

The event is the same for every system. The router receives it as an inbound event
(``router.publish``) and turns it into its outbound frame; the baselines build the
same outbound frame (the same keys, the same payload) and serialise it themselves.
Its payload carries the owner (``u``), a counter (``n``) and the send time (``t``,
``time.monotonic_ns()`` in the server process, read by the load generator on the
same host: ``CLOCK_MONOTONIC`` is one clock for every process of a machine).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SYSTEMS = ("bare", "socketio", "router")
#: The flood scenarios also run ``validated``: bare, with the frame made by the router's
#: stage 1 (validation) and frame code instead of by hand.
FLOOD_SYSTEMS = ("bare", "validated", "socketio", "router")
SYSTEM_TITLES = {
    "bare": "bare Starlette",
    "validated": "bare + validation",
    "socketio": "python-socketio",
    "router": "agent-event-router",
}
AGENT_NAME = "bench-agent"
#: About what an agent's "thinking" line weighs; every system sends the same text.
TEXT = (
    "Comparing the three retrieved passages against the question; the second one "
    "cites the 2019 figures, so I will check them with the calculator tool next."
)
SERVER_CPU = 0
CLIENT_CPU = 1


def bench_event(run_id: str, user: str, n: int, sent_ns: int) -> dict[str, Any]:
    """The inbound event an agent publishes (a ``custom`` event; its data is free JSON)."""
    return {
        "type": "custom",
        "run_id": run_id,
        "agent_name": AGENT_NAME,
        "payload": {
            "notification_type": "bench",
            "data": {"u": user, "n": n, "t": sent_ns, "text": TEXT},
        },
    }


def outbound_frame(
    event: dict[str, Any], *, event_id: str, seq: int, thread_id: str, timestamp: str
) -> dict[str, Any]:
    """The outbound frame of DESIGN.md section 2, as the baselines build it by hand."""
    return {
        "type": event["type"],
        "event_id": event_id,
        "seq": seq,
        "thread_id": thread_id,
        "run_id": event["run_id"],
        "agent_name": event["agent_name"],
        "timestamp": timestamp,
        "payload": event["payload"],
    }


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One scenario's sizes. ``per_thread`` is for flood runs, ``rate``/``duration``
    for paced ones; ``idle`` connections (one per extra user) receive nothing."""

    name: str
    #: "flood" (one loop publishes round after round to every thread), "agents" (one
    #: task per thread publishes its own events, as concurrent agents do), "paced",
    #: "inproc" (no sockets: one loop publishes), "inproc-agents" (no sockets: one task
    #: per thread)
    kind: str
    users: int
    conns_per_user: int
    reps: int
    per_thread: int = 0
    rate: float = 0.0
    duration: float = 0.0
    idle: int = 0
    systems: tuple[str, ...] = SYSTEMS
    warmup_per_thread: int = 20
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def scenarios(quick: bool) -> dict[str, Scenario]:
    """Every scenario, full size or ``--quick`` size."""
    reps = 3
    full = {
        "small": Scenario(
            "small",
            "flood",
            users=10,
            conns_per_user=1,
            reps=reps,
            per_thread=2000,
            warmup_per_thread=100,
            systems=FLOOD_SYSTEMS,
            description="10 users x 1 connection, 2,000 events each, as fast as possible",
        ),
        "fan": Scenario(
            "fan",
            "flood",
            users=100,
            conns_per_user=2,
            reps=reps,
            per_thread=200,
            systems=FLOOD_SYSTEMS,
            description="100 users x 2 connections, 200 events each, as fast as possible",
        ),
        "paced": Scenario(
            "paced",
            "paced",
            users=100,
            conns_per_user=2,
            reps=reps,
            rate=4000.0,
            duration=6.0,
            description="100 users x 2 connections, 4,000 events/s for 6 s",
        ),
        "many": Scenario(
            "many",
            "paced",
            users=100,
            conns_per_user=2,
            reps=reps,
            rate=4000.0,
            duration=3.0,
            idle=5000,
            systems=("bare", "router"),
            description="5,000 idle connections + 100 users x 2 connections at 4,000 events/s",
        ),
        "agents": Scenario(
            "agents",
            "agents",
            users=50,
            conns_per_user=1,
            reps=reps,
            per_thread=400,
            systems=("bare", "router"),
            description="50 users x 1 connection, one agent task per thread, 400 events each",
        ),
        "inproc": Scenario(
            "inproc",
            "inproc",
            users=100,
            conns_per_user=2,
            reps=reps,
            per_thread=1000,
            systems=("router",),
            description="publish to 100 users x 2 in-memory connections, no sockets",
        ),
        "inproc-agents": Scenario(
            "inproc-agents",
            "inproc-agents",
            users=50,
            conns_per_user=1,
            reps=reps,
            per_thread=400,
            systems=("router",),
            description=(
                "50 agent tasks publish to 50 in-memory connections, no sockets "
                "(in memory a publish never waits, so the tasks take turns)"
            ),
        ),
    }
    if not quick:
        return full
    # --quick: the same scenarios, smaller (and warmed up with the default 20 events).
    smaller: dict[str, dict[str, Any]] = {
        "small": {
            "per_thread": 300,
            "warmup_per_thread": 20,
            "description": "10 users x 1 connection, 300 events each, as fast as possible",
        },
        "fan": {
            "per_thread": 30,
            "description": "100 users x 2 connections, 30 events each, as fast as possible",
        },
        "paced": {
            "duration": 0.5,
            "description": "100 users x 2 connections, 4,000 events/s for 0.5 s",
        },
        "many": {
            "users": 50,
            "rate": 2000.0,
            "duration": 0.5,
            "idle": 600,
            "description": "600 idle connections + 50 users x 2 connections at 2,000 events/s",
        },
        "agents": {
            "per_thread": 40,
            "description": "50 users x 1 connection, one agent task per thread, 40 events each",
        },
        "inproc": {"per_thread": 100},
        "inproc-agents": {"per_thread": 40},
    }
    return {name: dataclasses.replace(full[name], **smaller[name]) for name in full}


# --------------------------------------------------------------------- processes


def pin_to(cpu: int) -> bool:
    """Pin this process to one CPU when the machine has it; True when pinned."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        available = os.sched_getaffinity(0)
        if len(available) < 2 or cpu not in available:
            return False
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return False
    return True


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (at most the hard limit); return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def cpu_ns(pid: int) -> int:
    """CPU time used so far by every thread of ``pid``, in nanoseconds.

    ``/proc/<pid>/task/*/schedstat`` counts in nanoseconds; ``/proc/<pid>/stat``
    (clock ticks, usually 10 ms) is the fallback.
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        total = 0
    if total:
        return total
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """Resident memory now (``rss``) and at its peak (``hwm``), in KiB."""
    found = {"rss": 0, "hwm": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                found["rss"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                found["hwm"] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return found


# --------------------------------------------------------------------- figures


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of sorted values, nearest rank; None when empty."""
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return float(ordered[index])


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
