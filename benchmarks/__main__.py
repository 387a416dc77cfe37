"""``python -m benchmarks``: run the scenarios, print a table, write JSON.

Each socket scenario starts one server process per system (pinned to CPU 0) and one
load-generator process (pinned to CPU 1), then stops them; ``inproc`` runs in one
process pinned to CPU 0. Exit status: 0 when every run completed and was verified
(nothing lost, leaked, duplicated or reordered), 1 otherwise. Targets never change
the exit status: timings on a shared machine are figures, not a build gate.

``main(argv)`` is the entry point for ``agent-router bench`` as well.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .common import (
    CLIENT_CPU,
    SERVER_CPU,
    SYSTEM_TITLES,
    Scenario,
    median,
    memory_kib,
    ratio,
    scenarios,
)
from .report import evaluate_targets, render

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"
#: Medians taken over the repetitions of each system.
METRICS = (
    "delivered_per_s",
    "published_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "server_cpu_us_per_event",
    "client_cpu_us_per_event",
    "redis_cpu_us_per_event",
    "server_rss_kib",
    "us_per_publish",
    "cpu_us_per_publish",
    "emit_lag_p99_ms",
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _env(first: Path | None = None) -> dict[str, str]:
    """The children's environment: ``benchmarks`` (and ``router``) importable from ROOT,
    or ``router`` from ``first`` when a variant is measured. Children run with ``-P``
    (Python 3.11+), so the working directory does not come first on ``sys.path``."""
    env = dict(os.environ)
    paths = [str(_router_only(first))] if first is not None else []
    paths.append(str(ROOT))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


_ROUTER_ONLY: dict[Path, Path] = {}


def _router_only(tree: Path) -> Path:
    """A directory holding only a link to ``tree/router``: the variant's router, with
    everything else (``benchmarks`` included) still imported from ROOT."""
    if tree not in _ROUTER_ONLY:
        holder = Path(tempfile.mkdtemp(prefix="bench-variant-"))
        (holder / "router").symlink_to(tree / "router", target_is_directory=True)
        _ROUTER_ONLY[tree] = holder
    return _ROUTER_ONLY[tree]


def _split_system(system: str, variants: dict[str, Path]) -> tuple[str, Path | None]:
    """``router:LABEL`` is the router imported from the variant LABEL's source tree."""
    kind, _, label = system.partition(":")
    if label == REDIS_LABEL:
        return kind, None
    return kind, (variants[label] if label else None)


#: ``router:redis``: this tree's router on the Redis backend given with ``--redis``.
REDIS_LABEL = "redis"
#: The scenarios that get a router:redis row when --redis is given.
REDIS_SCENARIOS = ("small", "fan", "paced", "agents", "inproc-agents")
_REDIS: dict[str, str] = {}


class ServerProcess:
    """One system's server: started, asked for its port, stopped."""

    def __init__(
        self, system: str, cpu: int, profile_dir: Path | None, variants: dict[str, Path]
    ) -> None:
        self.system = system
        self.log = tempfile.TemporaryFile(mode="w+")
        kind, tree = _split_system(system, variants)
        command = [
            sys.executable,
            "-P",
            "-m",
            "benchmarks.servers",
            "--system",
            kind,
            "--cpu",
            str(cpu),
        ]
        if profile_dir is not None and shutil.which("py-spy"):
            name = system.replace(":", "-")
            out = profile_dir / f"{name}-{time.strftime('%H%M%S')}.folded.txt"
            command = [
                "py-spy",
                "record",
                "-r",
                "1000",
                "-f",
                "raw",
                "-o",
                str(out),
                "--",
                *command,
            ]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=_redis_env(system, _env(tree)),
            text=True,
            start_new_session=True,
        )
        self.port = 0
        self.pid = 0

    def wait_ready(self, timeout: float = 60.0) -> None:
        # A thread reads the child's stdout: select() on a buffered pipe can miss a line
        # that is already in the buffer (py-spy prints a line of its own first).
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("READY "):
                _, port, pid = line.split()
                self.port, self.pid = int(port), int(pid)
                return
        raise RuntimeError(f"{self.system} server did not start: {self.log_tail()}")

    def log_tail(self, size: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read()[-size:]

    def stop(self) -> dict[str, int]:
        """SIGTERM (uvicorn shuts down gracefully), then SIGKILL after 20 s. The server
        runs in a process group of its own, which holds py-spy too when profiling."""
        memory = memory_kib(self.pid) if self.pid else {"rss": 0, "hwm": 0}
        group = self.proc.pid  # start_new_session: the group id is the child's pid
        if self.pid:
            self._signal(self.pid, signal.SIGTERM)
        else:
            self._signal(-group, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self._signal(-group, signal.SIGKILL)
            self.proc.wait(10)
        if self.pid:
            # The python under py-spy may outlive py-spy by a moment.
            deadline = time.monotonic() + 20
            while Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            self._signal(-group, signal.SIGKILL)
        return memory

    @staticmethod
    def _signal(target: int, signum: int) -> None:
        try:
            if target < 0:
                os.killpg(-target, signum)
            else:
                os.kill(target, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _child(
    module: str, config: dict[str, Any], timeout: float, tree: Path | None = None
) -> dict[str, Any]:
    """Run ``python -m module`` with ``config`` on stdin; its ``RESULT`` line, parsed."""
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        cwd=ROOT,
        env=_env(tree),
        text=True,
    )
    try:
        out, _ = proc.communicate(json.dumps(config), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"{module} timed out after {timeout:.0f} s", "systems": {}}
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    return {"error": f"{module} exited {proc.returncode} without a result", "systems": {}}


def run_socket_scenario(
    scenario: Scenario,
    *,
    pin: bool,
    profile_dir: Path | None,
    timeout: float,
    variants: dict[str, Path],
) -> dict[str, Any]:
    servers = {
        system: ServerProcess(system, SERVER_CPU if pin else -1, profile_dir, variants)
        for system in scenario.systems
    }
    memory: dict[str, dict[str, int]] = {}
    logs: dict[str, str] = {}
    try:
        for server in servers.values():
            server.wait_ready()
        config = {
            "scenario": scenario.to_dict(),
            "servers": {
                name: {"port": s.port, "pid": s.pid, "redis_pid": _redis_pid_of(name)}
                for name, s in servers.items()
            },
            "cpu": CLIENT_CPU if pin else -1,
            "timeout": timeout,
        }
        result = _child("benchmarks.loadgen", config, timeout + 60)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "systems": {}}
    finally:
        for name, server in servers.items():
            try:
                memory[name] = server.stop()
            finally:
                logs[name] = server.log_tail()
                server.log.close()
    for name, data in result.get("systems", {}).items():
        data["server_peak_rss_kib"] = memory.get(name, {}).get("hwm")
        if not all(rep.get("verified") for rep in data.get("reps", [])) or data.get("errors"):
            data["server_log_tail"] = logs.get(name, "")
    return result


def run_inproc(
    scenario: Scenario, *, pin: bool, timeout: float, variants: dict[str, Path]
) -> dict[str, Any]:
    """One process per repetition and system, the systems rotated between repetitions."""
    if len(scenario.systems) == 1:
        config = {"scenario": scenario.to_dict(), "cpu": SERVER_CPU if pin else -1}
        return _child("benchmarks.inproc", config, timeout)
    raw: dict[str, Any] = {"systems": {}}
    single = {**scenario.to_dict(), "reps": 1, "systems": ["router"]}
    systems = list(scenario.systems)
    for index in range(scenario.reps):
        shift = index % len(systems)
        for system in systems[shift:] + systems[:shift]:
            _, tree = _split_system(system, variants)
            config = {"scenario": single, "cpu": SERVER_CPU if pin else -1}
            if system == f"router:{REDIS_LABEL}":
                config.update(
                    backend=_REDIS["url"], prefix=_REDIS["prefix"], redis_pid=_redis_pid_of(system)
                )
            result = _child("benchmarks.inproc", config, timeout, tree)
            data = raw["systems"].setdefault(system, {"reps": [], "setup": {}, "errors": []})
            if result.get("error"):
                data["errors"].append(result["error"])
            produced = result.get("systems", {}).get("router", {})
            data["reps"].extend(produced.get("reps", []))
            data["setup"].setdefault(
                "router_package", produced.get("setup", {}).get("router_package")
            )
            if system == "router" and "floors" in result:
                raw["floors"] = result["floors"]
    return raw


def summarise(scenario: Scenario, raw: dict[str, Any]) -> dict[str, Any]:
    """Medians per system, paired ratios, ok/verified."""
    systems: dict[str, Any] = {}
    errors = [raw["error"]] if raw.get("error") else []
    for name in scenario.systems:
        data = raw.get("systems", {}).get(name)
        if data is None:
            systems[name] = {"ok": False, "verified": False, "reps": [], "median": {}}
            errors.append(f"{name}: no result")
            continue
        reps = data.get("reps", [])
        ok = len(reps) == scenario.reps and not data.get("errors")
        verified = ok and all(rep.get("verified") for rep in reps)
        medians = {m: median(rep.get(m) for rep in reps) for m in METRICS}
        kind, _, label = name.partition(":")
        systems[name] = {
            **data,
            "title": SYSTEM_TITLES[kind] if not label else f"router ({label})",
            "ok": ok,
            "verified": verified,
            "median": {k: v for k, v in medians.items() if v is not None},
        }
        errors.extend(f"{name}: {e}" for e in data.get("errors", []))
    summary: dict[str, Any] = {
        "description": scenario.description,
        "params": scenario.to_dict(),
        "systems": systems,
        "ratios": _ratios(systems),
        "variant_ratios": {
            name: _ratios(systems, name)
            for name in systems
            if name.startswith("router:") or name == "validated"
        },
        "ok": not errors and all(s["ok"] for s in systems.values()),
        "verified": all(s["verified"] for s in systems.values()),
        "errors": errors,
    }
    for key in ("floors", "pinned", "nofile", "notes"):
        if key in raw:
            summary[key] = raw[key]
    return summary


def _cpu_budget(redis_row: dict[str, Any], memory_row: dict[str, Any]) -> dict[str, Any] | None:
    """What the machine's CPUs allow the Redis row: server, load generator and Redis
    all run here, so at most (CPUs / their CPU time per event) events/s."""
    parts = [
        redis_row.get(key)
        for key in ("server_cpu_us_per_event", "client_cpu_us_per_event", "redis_cpu_us_per_event")
    ]
    memory_rate = memory_row.get("delivered_per_s")
    if any(part is None for part in parts) or not memory_rate:
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_event = sum(parts)
    # All three share the CPUs; the server and the load generator are one thread
    # each, so neither can go faster than one CPU allows either.
    ceiling = min((cpus or 1) * 1e6 / per_event, 1e6 / max(parts[0], parts[1]))
    return {
        "cpus": cpus,
        "server_us": parts[0],
        "client_us": parts[1],
        "redis_us": parts[2],
        "all_us": per_event,
        "ceiling_per_s": ceiling,
        "ceiling_vs_memory": ceiling / memory_rate,
    }


def _paired(router: dict[str, Any], other: dict[str, Any], metric: str) -> float | None:
    """Median over repetitions of router/other, each pair measured back to back."""
    pairs = zip(router.get("reps", []), other.get("reps", []), strict=False)
    return median(ratio(a.get(metric), b.get(metric)) for a, b in pairs)


def _ratios(systems: dict[str, Any], name: str = "router") -> dict[str, Any]:
    """Ratios of one router system (``router`` or a variant) to the baselines."""
    router = systems.get(name)
    if not router or not router.get("reps"):
        return {}
    found: dict[str, Any] = {}
    for base in ("bare", "validated", "socketio"):
        other = systems.get(base)
        if base == name or not other or not other.get("reps"):
            continue
        for metric in (
            "delivered_per_s",
            "server_cpu_us_per_event",
            "latency_p99_ms",
            "latency_p50_ms",
        ):
            found[f"{metric}_vs_{base}"] = _paired(router, other, metric)
            found[f"{metric}_vs_{base}_of_medians"] = ratio(
                router["median"].get(metric), other["median"].get(metric)
            )
        idle_r = router.get("setup", {}).get("idle", {}).get("kib_per_connection")
        idle_b = other.get("setup", {}).get("idle", {}).get("kib_per_connection")
        if idle_r is not None and idle_b is not None:
            found[f"idle_kib_per_connection_above_{base}"] = idle_r - idle_b
    return found


def _meta(args: argparse.Namespace, pinned: bool) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in (
        "agent-event-router",
        "uvicorn",
        "websockets",
        "starlette",
        "python-socketio",
        "python-engineio",
        "aiohttp",
        "pydantic",
        "pydantic-core",
        "anyio",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    commit = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "pinned": pinned,
        "server_cpu": SERVER_CPU if pinned else None,
        "client_cpu": CLIENT_CPU if pinned else None,
        "commit": commit,
        "versions": versions,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; return the exit status (0: every run completed and verified)."""
    table = scenarios(False)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Throughput, latency, CPU and memory of the router against a bare "
        "Starlette WebSocket and python-socketio, measured in one invocation.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes; under a minute")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file ({DEFAULT_OUT})")
    parser.add_argument(
        "--scenarios",
        default=",".join(table),
        help=f"comma-separated subset of {','.join(table)}",
    )
    parser.add_argument("--reps", type=int, default=0, help="repetitions (at least 3 is advised)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record each server with py-spy (collapsed stacks, one file per server, in DIR)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="also measure the router imported from another source tree (PATH holds a "
        "router/ package), as system router:LABEL in the same interleaved runs",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per scenario, seconds")
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="also measure the router on this Redis (system router:redis) in "
        + ", ".join(REDIS_SCENARIOS),
    )
    args = parser.parse_args(argv)
    if args.redis:
        _REDIS.update(url=args.redis, prefix=f"bench:{os.getpid()}:{int(time.time())}:")
        pid = _redis_pid(args.redis)
        if pid is not None:
            _REDIS["pid"] = str(pid)  # (the dict holds strs: URL, prefix, pid)
    variants: dict[str, Path] = {}
    for item in args.variant:
        label, _, path = item.partition("=")
        tree = Path(path).resolve()
        if not label or not (tree / "router" / "__init__.py").is_file():
            parser.error(f"--variant {item!r}: expected LABEL=PATH with PATH/router/__init__.py")
        variants[label] = tree

    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    available = scenarios(args.quick)
    unknown = [name for name in chosen if name not in available]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    pin = not args.no_pin and {SERVER_CPU, CLIENT_CPU} <= affinity
    if args.profile is not None:
        if shutil.which("py-spy") is None:
            parser.error("--profile needs py-spy on PATH (pip install py-spy)")
        args.profile.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {"meta": _meta(args, pin), "scenarios": {}}
    started = time.monotonic()
    for name in chosen:
        scenario = available[name]
        if args.reps:
            scenario = Scenario(**{**scenario.to_dict(), "reps": args.reps})
        if "socketio" in scenario.systems and importlib.util.find_spec("socketio") is None:
            log(f"{name}: python-socketio is not installed; measuring without it")
            kept = tuple(s for s in scenario.systems if s != "socketio")
            scenario = Scenario(**{**scenario.to_dict(), "systems": kept})
        if variants:
            extra = tuple(f"router:{label}" for label in variants)
            scenario = Scenario(**{**scenario.to_dict(), "systems": scenario.systems + extra})
        if _REDIS and name in REDIS_SCENARIOS:
            extra = (f"router:{REDIS_LABEL}",)
            scenario = Scenario(**{**scenario.to_dict(), "systems": scenario.systems + extra})
        log(f"{name}: {scenario.description} ({scenario.reps} reps)")
        begun = time.monotonic()
        if scenario.kind.startswith("inproc"):
            raw = run_inproc(scenario, pin=pin, timeout=args.timeout, variants=variants)
        else:
            raw = run_socket_scenario(
                scenario,
                pin=pin,
                profile_dir=args.profile,
                timeout=args.timeout,
                variants=variants,
            )
        summary = summarise(scenario, raw)
        summary["seconds"] = time.monotonic() - begun
        redis_row = summary["systems"].get(f"router:{REDIS_LABEL}")
        if redis_row and redis_row.get("reps") and summary["systems"].get("router"):
            memory_row = summary["systems"]["router"]
            metrics = (
                ("published_per_s", "cpu_us_per_publish")
                if scenario.kind == "inproc-agents"
                else ("delivered_per_s", "latency_p99_ms", "server_cpu_us_per_event")
            )
            summary["redis_vs_memory"] = {
                metric: _paired(redis_row, memory_row, metric) for metric in metrics
            }
            summary["redis_vs_memory"]["redis_cpu_us_per_event"] = redis_row["median"].get(
                "redis_cpu_us_per_event"
            )
            # What the CPUs allow, for socket runs as fast as they go (a paced run
            # keeps pace).
            budget = (
                _cpu_budget(redis_row["median"], memory_row["median"])
                if scenario.kind in ("flood", "agents")
                else None
            )
            if budget:
                summary["redis_vs_memory"]["cpu_budget"] = budget
            log(f"{name}: router on Redis vs memory: {summary['redis_vs_memory']}")
        results["scenarios"][name] = summary
    results["meta"]["seconds"] = time.monotonic() - started
    results["targets"] = evaluate_targets(results["scenarios"])
    results["ok"] = all(s["ok"] for s in results["scenarios"].values())
    results["verified"] = all(s["verified"] for s in results["scenarios"].values())

    for holder in _ROUTER_ONLY.values():
        shutil.rmtree(holder, ignore_errors=True)
    _redis_cleanup()
    _write(args.out, results)
    render(results, sys.stdout)
    print(f"\nJSON written to {args.out}")
    return 0 if results["ok"] and results["verified"] else 1


def _redis_env(system: str, env: dict[str, str]) -> dict[str, str]:
    if system == f"router:{REDIS_LABEL}":
        env["BENCH_ROUTER_BACKEND"] = _REDIS["url"]
        env["BENCH_ROUTER_PREFIX"] = _REDIS["prefix"]
    return env


def _redis_pid(url: str) -> int | None:
    """The Redis server's process id, when it runs on this host (its CPU time is
    then read like the servers', from /proc)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    except Exception as exc:
        log(f"redis: no server CPU figures ({exc})")
        return None
    finally:
        client.close()
    host = client.connection_pool.connection_kwargs.get("host", "")
    if host not in ("127.0.0.1", "localhost", "::1") or not Path(f"/proc/{pid}").is_dir():
        return None
    return pid


def _redis_pid_of(system: str) -> int | None:
    if system == f"router:{REDIS_LABEL}" and "pid" in _REDIS:
        return int(_REDIS["pid"])
    return None


def _redis_cleanup() -> None:
    if not _REDIS:
        return
    import redis

    client = redis.Redis.from_url(_REDIS["url"])
    try:
        keys = list(client.scan_iter(match=_REDIS["prefix"] + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def _write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(results, handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
