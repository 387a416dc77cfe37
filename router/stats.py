"""Counters for ``GET /_router/stats`` and ``/metrics``.

Invariant (section 10 of the design): ``published == accepted + sum(rejected)``;
replays count as publishes. ``no_recipient`` records are extra records for
accepted events and are counted in ``dead_letters`` only.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any

__all__ = ["LATENCY_BUCKETS", "Stats"]

#: Publish latency histogram bucket bounds, in seconds.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)


class Stats:
    __slots__ = (
        "accepted",
        "dead_letters",
        "latency_buckets",
        "latency_count",
        "latency_sum",
        "process_id",
        "published",
        "rejected",
        "slow_consumer_closes",
        "spooled",
    )

    def __init__(self) -> None:
        self.published = 0
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.dead_letters: dict[str, int] = {}
        self.slow_consumer_closes = 0
        self.spooled = 0
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.process_id = f"{os.uname().nodename}:{os.getpid()}"

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def dead_letter(self, reason: str) -> None:
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1

    def observe(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_count += 1
        self.latency_buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def snapshot(self, *, connections: int, delivered: int) -> dict[str, Any]:
        return {
            "process_id": self.process_id,
            "published": self.published,
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "dead_letters": dict(self.dead_letters),
            "delivered": delivered,
            "connections": connections,
            "slow_consumer_closes": self.slow_consumer_closes,
            "spooled": self.spooled,
        }
