"""The targets of the benchmark issue, and the table printed at the end of a run."""

from __future__ import annotations

from typing import IO, Any

#: (scenario, ratio key or special, comparison, limit, what it says)
TARGETS: tuple[tuple[str, str, str, float, str], ...] = (
    ("small", "delivered_per_s_vs_bare", ">=", 0.80, "router events/s vs bare Starlette"),
    ("small", "server_cpu_us_per_event_vs_bare", "<=", 1.25, "router server CPU/event vs bare"),
    ("small", "delivered_per_s_vs_socketio", ">=", 4.0, "router events/s vs python-socketio"),
    ("fan", "delivered_per_s_vs_bare", ">=", 0.80, "router events/s vs bare Starlette"),
    ("fan", "server_cpu_us_per_event_vs_bare", "<=", 1.25, "router server CPU/event vs bare"),
    ("fan", "delivered_per_s_vs_socketio", ">=", 4.0, "router events/s vs python-socketio"),
    ("paced", "latency_p99_ms_vs_bare", "<=", 1.5, "router p99 latency vs bare Starlette"),
    ("inproc", "published_per_s", ">=", 200_000.0, "router events/s on one core, no sockets"),
    (
        "many",
        "idle_kib_per_connection_above_bare",
        "<=",
        10.0,
        "router KiB per idle connection above bare",
    ),
)


def evaluate_targets(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and pass/miss (None when not measured)."""
    found = []
    for name, key, comparison, limit, what in TARGETS:
        scenario = scenarios.get(name)
        if scenario is None:
            continue
        if key == "published_per_s":
            value = scenario["systems"].get("router", {}).get("median", {}).get(key)
        else:
            value = scenario.get("ratios", {}).get(key)
        passed: bool | None = None
        if value is not None:
            passed = value >= limit if comparison == ">=" else value <= limit
            if not scenario.get("verified"):
                passed = False
        found.append(
            {
                "scenario": name,
                "target": what,
                "key": key,
                "measured": value,
                "comparison": comparison,
                "limit": limit,
                "pass": passed,
                "verified": bool(scenario.get("verified")),
                "margin": None if value is None else (value / limit if limit else None),
            }
        )
    return found


def _n(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ratio_lines(name: str, ratios: dict[str, Any]) -> list[str]:
    lines = []
    for base in ("bare", "validated", "socketio"):
        if f"delivered_per_s_vs_{base}" in ratios:
            lines.append(
                f"{name} vs {base}: events/s {_x(ratios[f'delivered_per_s_vs_{base}'])}, "
                f"CPU/ev {_x(ratios[f'server_cpu_us_per_event_vs_{base}'])}, "
                f"p99 {_x(ratios[f'latency_p99_ms_vs_{base}'])}"
            )
    if "idle_kib_per_connection_above_bare" in ratios:
        above = ratios["idle_kib_per_connection_above_bare"]
        lines.append(f"{name} idle memory {above:+.1f} KiB/conn vs bare")
    return lines


def render(results: dict[str, Any], out: IO[str]) -> None:
    meta = results["meta"]
    out.write(
        f"\nagent-event-router benchmarks ({'quick' if meta['quick'] else 'full'}; "
        f"python {meta['python']}; {meta['cpus']} CPUs; "
        f"{'server on CPU 0, load generator on CPU 1' if meta['pinned'] else 'not pinned'})\n"
        "Medians over the repetitions; ratios are router/baseline, paired per repetition.\n\n"
    )
    header = (
        f"{'scenario':<13} {'system':<20} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU us/ev':>10} {'peak RSS MiB':>12} {'KiB/idle':>9} {'verified':>9}\n"
    )
    out.write(header)
    out.write("-" * (len(header) - 1) + "\n")
    for name, scenario in results["scenarios"].items():
        for system, data in scenario["systems"].items():
            med = data.get("median", {})
            title = data.get("title", system)
            if name.startswith("inproc"):
                out.write(
                    f"{name:<13} {title:<20} {_n(med.get('published_per_s')):>10} "
                    f"{'':>8} {'':>8} {_n(med.get('cpu_us_per_publish')):>10} {'':>12} "
                    f"{'':>9} {'yes' if data.get('verified') else 'NO':>9}\n"
                )
                continue
            idle = data.get("setup", {}).get("idle", {}).get("kib_per_connection")
            peak = data.get("server_peak_rss_kib")
            out.write(
                f"{name:<13} {title:<20} {_n(med.get('delivered_per_s')):>10} "
                f"{_n(med.get('latency_p50_ms'), 2):>8} {_n(med.get('latency_p99_ms'), 2):>8} "
                f"{_n(med.get('server_cpu_us_per_event')):>10} "
                f"{_n(peak / 1024 if peak else None):>12} {_n(idle):>9} "
                f"{'yes' if data.get('verified') else 'NO':>9}\n"
            )
        parts = _ratio_lines("router", scenario.get("ratios", {}))
        for variant, ratios in scenario.get("variant_ratios", {}).items():
            parts.extend(_ratio_lines(variant, ratios))
        versus = scenario.get("redis_vs_memory")
        if versus and "published_per_s" in versus:
            parts.append(
                f"router:redis vs router (memory): publishes/s {_x(versus['published_per_s'])}, "
                f"router CPU/publish {_x(versus.get('cpu_us_per_publish'))}, "
                f"Redis CPU {_n(versus.get('redis_cpu_us_per_event'), 1)} us/publish"
            )
        elif versus:
            parts.append(
                f"router:redis vs router (memory): events/s {_x(versus.get('delivered_per_s'))}, "
                f"CPU/ev {_x(versus.get('server_cpu_us_per_event'))}, "
                f"p99 {_x(versus.get('latency_p99_ms'))}"
            )
            budget = versus.get("cpu_budget")
            if budget:
                parts.append(
                    f"router:redis CPU us/ev: server {budget['server_us']:.1f} + load generator "
                    f"{budget['client_us']:.1f} + Redis {budget['redis_us']:.1f} = "
                    f"{budget['all_us']:.1f}: {budget['cpus']} CPUs allow at most "
                    f"{_n(budget['ceiling_per_s'])} ev/s "
                    f"({_x(budget['ceiling_vs_memory'])} of the memory row)"
                )
        if name == "inproc" and scenario.get("floors"):
            floors = scenario["floors"]
            parts.append(
                "router stages alone: "
                + ", ".join(
                    f"{key.removesuffix('_us')} {value:.2f} us" for key, value in floors.items()
                )
            )
        for part in parts:
            out.write(f"{'':<13} {part}\n")
        for error in scenario.get("errors", []):
            out.write(f"{'':<13} ERROR {error}\n")
        out.write("\n")
    out.write(f"{'target':<52} {'measured':>12} {'limit':>12}  status\n")
    for target in results.get("targets", []):
        value = target["measured"]
        key = target["key"]
        if key == "published_per_s":
            shown, limit = _n(value), f"{target['comparison']} {target['limit']:,.0f}"
        elif key.startswith("idle_kib"):
            shown = "-" if value is None else f"{value:+.1f} KiB"
            limit = f"{target['comparison']} {target['limit']:.0f} KiB"
        else:
            shown, limit = _x(value), f"{target['comparison']} {target['limit']:.2f}x"
        status = {True: "pass", False: "MISS", None: "n/a"}[target["pass"]]
        if not target["verified"]:
            status += " (unverified run)"
        label = f"{target['scenario']}: {target['target']}"
        out.write(f"{label:<52} {shown:>12} {limit:>12}  {status}\n")
