"""``GET /_router/metrics``: the router's figures in Prometheus text format.

prometheus-client is imported when the endpoint is called, not when this module
is, so importing the router stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .router import EventRouter
from .stats import LATENCY_BUCKETS

__all__ = ["render_metrics"]


def render_metrics(router: EventRouter, stored: dict[str, int] | None) -> bytes:
    """The router's figures in Prometheus text format.

    A collector over this router's own counters, in a registry of its own made per
    request: nothing is registered globally, so several routers in one process
    never clash.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector

    figures = router.snapshot()
    stats = router.stats

    def by_reason(
        family: CounterMetricFamily | GaugeMetricFamily, counts: Mapping[str, int]
    ) -> CounterMetricFamily | GaugeMetricFamily:
        for reason, count in sorted(counts.items()):
            family.add_metric([reason], count)
        return family

    class Figures(Collector):
        def collect(self) -> Iterator[Metric]:
            info = GaugeMetricFamily(
                "agent_router_info", "This router process.", labels=["process_id"]
            )
            info.add_metric([figures["process_id"]], 1)
            yield info
            for name, doc in (
                ("published", "Events handed to publish (replays included)."),
                ("accepted", "Events accepted: they have a seq and are in history."),
                ("delivered", "Frames queued to connections."),
                ("slow_consumer_closes", "Connections closed for a full outbox (1013)."),
                ("spooled", "Events spooled while the scale-out backend was unreachable."),
                ("dead_letter_retention_removed", "Dead letters dropped by retention."),
            ):
                yield CounterMetricFamily(f"agent_router_{name}", doc, value=figures[name])
            yield by_reason(
                CounterMetricFamily(
                    "agent_router_rejected",
                    "Events rejected, by reason; each has a dead letter.",
                    labels=["reason"],
                ),
                figures["rejected"],
            )
            yield by_reason(
                CounterMetricFamily(
                    "agent_router_dead_letters",
                    "Dead letters written by this process, by reason.",
                    labels=["reason"],
                ),
                figures["dead_letters"],
            )
            if stored is not None:
                yield by_reason(
                    GaugeMetricFamily(
                        "agent_router_dead_letters_stored",
                        "Dead letters in the stores now, by reason.",
                        labels=["reason"],
                    ),
                    stored,
                )
            yield GaugeMetricFamily(
                "agent_router_connections", "Open WebSocket connections.", figures["connections"]
            )
            yield GaugeMetricFamily(
                "agent_router_spool_pending",
                "Events waiting in the spool for the backend.",
                figures["spool_pending"],
            )
            backend = figures.get("backend") or {}
            up = GaugeMetricFamily(
                "agent_router_backend_up",
                "1 when the backend answers (always 1 for memory://).",
                labels=["backend"],
            )
            up.add_metric([str(backend.get("backend", "?"))], int(backend.get("connected", True)))
            yield up
            if "subscribed" in backend:
                yield GaugeMetricFamily(
                    "agent_router_backend_subscribed",
                    "1 while the scale-out subscription is established.",
                    int(backend["subscribed"]),
                )
            for name, doc in (
                ("resubscribes", "Times the subscription was lost and re-established."),
                ("healed", "Events delivered from history to heal a subscription gap."),
                ("probe_failures", "Round-trip probes that did not come back in time."),
                ("epoch_changes", "Times the backend turned out to have lost its data."),
            ):
                if name in backend:
                    yield CounterMetricFamily(
                        f"agent_router_backend_{name}", doc, value=backend[name]
                    )
            buckets: list[tuple[str, float]] = []
            total = 0
            for bound, count in zip(LATENCY_BUCKETS, stats.latency_buckets, strict=False):
                total += count
                buckets.append((str(bound), total))
            buckets.append(("+Inf", stats.latency_count))
            yield HistogramMetricFamily(
                "agent_router_publish_latency_seconds",
                "Time publish took, validation to fan-out.",
                buckets=buckets,
                sum_value=stats.latency_sum,
            )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Figures())
    return generate_latest(registry)
