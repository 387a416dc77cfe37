"""The load generator: ``python -m benchmarks.loadgen`` reads a JSON config on stdin and
prints ``RESULT <json>`` on stdout (progress goes to stderr).

For each system of a scenario it creates the threads (``POST /bench/setup``), opens
the connections with bounded concurrency and waits until every one is subscribed,
then runs the repetitions, interleaving the systems (rep 1: A B C, rep 2: B C A, ...)
so that the noise of a shared machine falls on all of them alike. In each repetition
it triggers the emission (``POST /bench/emit``), waits until every connection has
what it should have, and reads the server's CPU time from ``/proc``.

Every event is checked as it arrives, in every run:

* isolation: it belongs to one of the connection's own threads and names its user;
* order: per thread, ``seq`` is exactly the next one (no gap, no duplicate);
* completeness: each connection gets exactly the events of its user, no more.

A run that loses, leaks, duplicates or reorders is a failed run, however fast.
The bare baseline and the router are read with the same ``websockets`` client;
python-socketio with its own client (``socketio.AsyncClient``, websocket transport).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .common import (
    CLIENT_CPU,
    cpu_ns,
    memory_kib,
    percentile,
    pin_to,
    raise_nofile,
)

OPEN_CONCURRENCY = 100


def log(message: str) -> None:
    print(f"[loadgen] {message}", file=sys.stderr, flush=True)


class Rep:
    """One measured emission across all connections of one system."""

    def __init__(self, waiting: int) -> None:
        self.done = asyncio.Event()
        self.waiting = waiting
        self.latencies = array("q")
        self.first_sent = 0
        self.last_recv = 0
        if waiting == 0:
            self.done.set()

    def arrived(self, sent_ns: int, recv_ns: int) -> None:
        self.latencies.append(recv_ns - sent_ns)
        if self.first_sent == 0 or sent_ns < self.first_sent:
            self.first_sent = sent_ns
        if recv_ns > self.last_recv:
            self.last_recv = recv_ns

    def connection_complete(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.done.set()


class Tracker:
    """What one connection has seen; checks every event as it arrives."""

    __slots__ = (
        "closed_code",
        "count",
        "expected",
        "leaks",
        "next_seq",
        "order_errors",
        "other_frames",
        "rep",
        "unexpected",
        "user",
    )

    def __init__(self, user: str) -> None:
        self.user = user
        self.next_seq: dict[str, int] = {}
        self.rep: Rep | None = None
        self.expected = 0
        self.count = 0
        self.leaks = 0
        self.order_errors = 0
        self.unexpected = 0
        self.other_frames = 0
        self.closed_code: int | None = None

    def begin(self, rep: Rep, expected: int) -> None:
        self.rep = rep
        self.expected = expected
        self.count = 0

    def on_frame(self, frame: Any, recv_ns: int) -> None:
        if not isinstance(frame, dict) or "seq" not in frame:
            self.other_frames += 1  # an error frame, say: never expected during a run
            return
        try:
            data = frame["payload"]["data"]
            owner = data["u"]
            sent_ns = data["t"]
        except (KeyError, TypeError):
            self.leaks += 1
            return
        thread_id = frame.get("thread_id")
        expected_seq = self.next_seq.get(thread_id)  # type: ignore[arg-type]
        if expected_seq is None or owner != self.user:
            self.leaks += 1
            return
        seq = frame["seq"]
        if seq != expected_seq:
            self.order_errors += 1
        if isinstance(seq, int) and seq >= expected_seq:
            self.next_seq[thread_id] = seq + 1  # type: ignore[index]
        rep = self.rep
        if rep is None:
            self.unexpected += 1
            return
        self.count += 1
        rep.arrived(sent_ns, recv_ns)
        if self.count == self.expected:
            rep.connection_complete()

    def subscribed(self, thread_id: str, reply: Any) -> None:
        if not (
            isinstance(reply, dict)
            and reply.get("op") == "subscribed"
            and reply.get("thread_id") == thread_id
        ):
            raise RuntimeError(f"{self.user}: expected 'subscribed' for {thread_id}, got {reply!r}")
        self.next_seq[thread_id] = int(reply.get("last_seq") or 0) + 1


class WsClient:
    """A ``websockets`` client of the router's wire protocol (the bare baseline speaks it too)."""

    def __init__(self, base: str, user: str, threads: Sequence[str]) -> None:
        self.url = f"{base}/ws?token={user}"
        self.threads = threads
        self.tracker = Tracker(user)
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    async def open(self) -> None:
        ws = self.ws = await connect(
            self.url,
            compression=None,
            open_timeout=60,
            ping_interval=None,
            close_timeout=5,
            max_size=2**20,
        )
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if welcome.get("op") != "welcome" or welcome.get("user_id") != self.tracker.user:
            raise RuntimeError(f"expected a welcome, got {welcome!r}")
        for thread_id in self.threads:
            await ws.send(json.dumps({"op": "subscribe", "thread_id": thread_id}))
            self.tracker.subscribed(thread_id, json.loads(await asyncio.wait_for(ws.recv(), 60)))
        self.task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: ClientConnection) -> None:
        loads = json.loads
        clock = time.monotonic_ns
        on_frame = self.tracker.on_frame
        try:
            async for raw in ws:
                frame = loads(raw)
                on_frame(frame, clock())
        except ConnectionClosed:
            pass
        finally:
            if not self.closing:
                self.tracker.closed_code = ws.close_code or 1006

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)


class SioClient:
    """python-socketio's own client, websocket transport only."""

    def __init__(self, base: str, user: str, threads: Sequence[str]) -> None:
        import socketio  # type: ignore[import-untyped]

        self.base = base
        self.threads = threads
        self.tracker = Tracker(user)
        self.closing = False
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("event", self._on_event)
        self.sio.on("disconnect", self._on_disconnect)

    def _on_event(self, frame: Any) -> None:
        self.tracker.on_frame(frame, time.monotonic_ns())

    def _on_disconnect(self, *args: Any) -> None:
        if not self.closing:
            self.tracker.closed_code = 1006

    async def open(self) -> None:
        await self.sio.connect(
            self.base,
            transports=["websocket"],
            auth={"token": self.tracker.user},
            wait_timeout=60,
        )
        for thread_id in self.threads:
            reply = await self.sio.call("subscribe", {"thread_id": thread_id}, timeout=60)
            self.tracker.subscribed(thread_id, reply)

    async def close(self) -> None:
        self.closing = True
        await self.sio.disconnect()


Client = WsClient | SioClient


async def bounded(
    jobs: Iterable[Callable[[], Awaitable[None]]], limit: int = OPEN_CONCURRENCY
) -> None:
    """Run the jobs with at most ``limit`` at once; re-raise the first failure."""
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


class Target:
    """One system's server, its threads and its connections."""

    def __init__(
        self,
        system: str,
        port: int,
        pid: int,
        http: aiohttp.ClientSession,
        redis_pid: int | None = None,
    ) -> None:
        self.system = system
        self.base = f"http://127.0.0.1:{port}"
        self.ws_base = f"ws://127.0.0.1:{port}"
        self.pid = pid
        #: the Redis server this system uses (router:redis on this host), for its CPU
        self.redis_pid = redis_pid
        self.http = http
        self.threads: dict[str, list[str]] = {}
        self.clients: list[Client] = []
        self.active: list[Client] = []
        self.reps: list[dict[str, Any]] = []
        self.setup: dict[str, Any] = {}
        self.errors: list[str] = []

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        async with self.http.post(self.base + path, json=body) as response:
            data = await response.json()
            if response.status >= 400:
                raise RuntimeError(f"{self.system} {path}: HTTP {response.status}: {data}")
            return data

    async def status(self, gc: bool = False) -> dict[str, Any]:
        async with self.http.get(self.base + "/bench/status" + ("?gc=1" if gc else "")) as r:
            data: dict[str, Any] = await r.json()
            return data

    async def create_threads(self, users: Sequence[str]) -> None:
        for start in range(0, len(users), 1000):
            answer = await self.post("/bench/setup", {"users": list(users[start : start + 1000])})
            for user, items in answer["threads"].items():
                self.threads[user] = [item[0] for item in items]

    def client(self, user: str) -> Client:
        if self.system == "socketio":
            return SioClient(self.base, user, self.threads[user])
        return WsClient(self.ws_base, user, self.threads[user])

    async def open(self, users: Sequence[str], per_user: int) -> list[Client]:
        clients = [self.client(user) for user in users for _ in range(per_user)]
        started = time.monotonic()
        await bounded(client.open for client in clients)
        elapsed = time.monotonic() - started
        self.clients.extend(clients)
        log(f"{self.system}: {len(clients)} connections open in {elapsed:.1f} s")
        return clients

    async def close(self) -> None:
        clients, self.clients = self.clients, []
        semaphore = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one(client: Client) -> None:
            async with semaphore:
                try:
                    await asyncio.wait_for(client.close(), 15)
                except Exception:  # closing is best effort; the server is stopped next
                    pass

        await asyncio.gather(*(one(client) for client in clients))


def _expected_per_thread(scenario: dict[str, Any], threads: int) -> tuple[int, int]:
    """(events per thread, total events) of one emission."""
    if scenario["kind"] in ("flood", "agents"):
        per_thread = int(scenario["per_thread"])
    else:
        per_thread = max(1, round(scenario["rate"] * scenario["duration"] / threads))
    return per_thread, per_thread * threads


async def emit_and_check(
    target: Target, scenario: dict[str, Any], users: Sequence[str], per_thread_override: int = 0
) -> dict[str, Any]:
    """Run one emission to ``users`` and check every connection; return the figures."""
    threads = sum(len(target.threads[user]) for user in users)
    per_thread, total = _expected_per_thread(scenario, threads)
    mode = scenario["kind"]
    if per_thread_override:
        mode, per_thread, total = "flood", per_thread_override, per_thread_override * threads
    wanted = set(users)
    receivers = [c for c in target.clients if c.tracker.user in wanted]
    rep = Rep(len(receivers))
    for client in target.clients:
        tracker = client.tracker
        tracker.begin(
            rep, per_thread * len(target.threads[tracker.user]) if tracker.user in wanted else 0
        )
    before = {
        c: (c.tracker.leaks, c.tracker.order_errors, c.tracker.other_frames) for c in target.clients
    }
    expected = sum(c.tracker.expected for c in target.clients)
    deadline = 30.0 + (scenario["duration"] if mode == "paced" else expected / 1000.0)
    body = {
        "users": list(users),
        "mode": mode,
        "per_thread": per_thread,
        "rate": scenario["rate"],
        "total": total,
    }
    redis0 = cpu_ns(target.redis_pid) if target.redis_pid else 0
    server0, me0 = cpu_ns(target.pid), cpu_ns(os.getpid())
    await target.post("/bench/emit", body)
    timed_out = False
    try:
        await asyncio.wait_for(rep.done.wait(), deadline)
    except TimeoutError:
        timed_out = True
    server1, me1 = cpu_ns(target.pid), cpu_ns(os.getpid())
    redis1 = cpu_ns(target.redis_pid) if target.redis_pid else 0
    # Let the emission finish and give stray frames a moment to show up.
    status = await target.status()
    for _ in range(200):
        if not status["emission"]["running"]:
            break
        await asyncio.sleep(0.05)
        status = await target.status()
    await asyncio.sleep(0.2)
    delivered = lost = extra = leaks = order_errors = other = closed = 0
    for client in target.clients:
        tracker = client.tracker
        delivered += tracker.count
        lost += max(0, tracker.expected - tracker.count)
        extra += max(0, tracker.count - tracker.expected)
        b = before[client]
        leaks += tracker.leaks - b[0]
        order_errors += tracker.order_errors - b[1]
        other += tracker.other_frames - b[2]
        closed += tracker.closed_code is not None
        tracker.rep = None
    emission = status["emission"]
    figures = status.get("figures", {})
    verified = (
        not timed_out
        and lost == 0
        and extra == 0
        and leaks == 0
        and order_errors == 0
        and other == 0
        and closed == 0
        and emission["rejected"] == 0
        and emission["error"] is None
        and emission["published"] == total
    )
    latencies = sorted(rep.latencies)
    seconds = (rep.last_recv - rep.first_sent) / 1e9 if rep.last_recv else None
    memory = memory_kib(target.pid)
    result: dict[str, Any] = {
        "verified": verified,
        "published": emission["published"],
        "expected": expected,
        "delivered": delivered,
        "lost": lost,
        "extra": extra,
        "leaks": leaks,
        "order_errors": order_errors,
        "other_frames": other,
        "closed_connections": closed,
        "rejected": emission["rejected"],
        "emit_error": emission["error"],
        "timed_out": timed_out,
        "seconds": seconds,
        "delivered_per_s": delivered / seconds if seconds else None,
        "published_per_s": emission["published"] / seconds if seconds else None,
        "latency_p50_ms": _ms(percentile(latencies, 0.50)),
        "latency_p99_ms": _ms(percentile(latencies, 0.99)),
        "latency_max_ms": _ms(latencies[-1] if latencies else None),
        "server_cpu_s": (server1 - server0) / 1e9,
        "server_cpu_us_per_event": (server1 - server0) / 1e3 / delivered if delivered else None,
        "client_cpu_us_per_event": (me1 - me0) / 1e3 / delivered if delivered else None,
        # The Redis server's CPU over the same span (it serves only this run).
        "redis_cpu_us_per_event": (
            (redis1 - redis0) / 1e3 / delivered if delivered and target.redis_pid else None
        ),
        "server_rss_kib": memory["rss"],
        "server_gc": status.get("gc"),
        "server_peak_rss_kib": memory["hwm"],
    }
    if mode == "paced":
        result["emit_lag_p99_ms"] = emission.get("lag_p99_ms")
        result["kept_pace"] = bool(
            emission.get("seconds") and emission["seconds"] <= scenario["duration"] * 1.1 + 0.05
        )
    if figures.get("slow_consumer_closes"):
        result["slow_consumer_closes"] = figures["slow_consumer_closes"]
        result["verified"] = False
    return result


def _ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


async def measure_idle(target: Target, idle_users: Sequence[str], tranches: int = 3) -> None:
    """Open the idle connections in tranches; RSS growth per connection after each."""
    await target.status(gc=True)
    rss = [memory_kib(target.pid)["rss"]]
    per_conn: list[float] = []
    opened = 0
    started = time.monotonic()
    size = -(-len(idle_users) // tranches)
    for start in range(0, len(idle_users), size):
        chunk = idle_users[start : start + size]
        await target.open(chunk, 1)
        opened += len(chunk)
        status = await target.status(gc=True)
        rss.append(memory_kib(target.pid)["rss"])
        per_conn.append((rss[-1] - rss[-2]) / len(chunk))
        if status["connections"] < len(target.clients):
            target.errors.append(
                f"server counts {status['connections']} connections, expected {len(target.clients)}"
            )
    target.setup["idle"] = {
        "connections": opened,
        "open_seconds": time.monotonic() - started,
        "rss_kib_steps": rss,
        "kib_per_connection_steps": per_conn,
        "kib_per_connection": sorted(per_conn)[len(per_conn) // 2] if per_conn else None,
        "kib_per_connection_overall": (rss[-1] - rss[0]) / opened if opened else None,
    }


async def run(config: dict[str, Any]) -> dict[str, Any]:
    scenario = config["scenario"]
    systems = list(config["servers"])
    users = [f"user{i:04d}" for i in range(scenario["users"])]
    idle_users = [f"idle{i:05d}" for i in range(scenario["idle"])]
    result: dict[str, Any] = {"systems": {}, "notes": []}
    timeout = aiohttp.ClientTimeout(total=120)
    # A fresh connection per control request: uvicorn drops idle keep-alive
    # connections after 5 s, and reusing one as it closes fails the request.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        targets = {
            name: Target(name, server["port"], server["pid"], http, server.get("redis_pid"))
            for name, server in config["servers"].items()
        }
        try:
            for target in targets.values():
                await target.create_threads(users + idle_users)
                target.active = await target.open(users, scenario["conns_per_user"])
                status = await target.status()
                target.setup["router_package"] = status.get("router_package")
                if status["connections"] != len(target.clients):
                    target.errors.append(
                        f"server counts {status['connections']} connections, "
                        f"expected {len(target.clients)}"
                    )
                if idle_users:
                    await measure_idle(target, idle_users)
                warm = await emit_and_check(
                    target, scenario, users, per_thread_override=scenario["warmup_per_thread"]
                )
                target.setup["warmup_verified"] = warm["verified"]
                if not warm["verified"]:
                    target.errors.append(f"warm-up failed: {_failure(warm)}")
            for index in range(scenario["reps"]):
                shift = index % len(systems)
                for name in systems[shift:] + systems[:shift]:
                    target = targets[name]
                    try:
                        rep = await emit_and_check(target, scenario, users)
                    except Exception as exc:  # one failed repetition; the others go on
                        target.errors.append(f"rep {index + 1}: {type(exc).__name__}: {exc}")
                        log(f"{scenario['name']} rep {index + 1} {name}: ERROR {exc!r}")
                        continue
                    target.reps.append(rep)
                    verdict = "verified" if rep["verified"] else "FAILED: " + _failure(rep)
                    log(
                        f"{scenario['name']} rep {index + 1} {name}: "
                        f"{_fmt(rep['delivered_per_s'])} ev/s, "
                        f"p99 {_fmt(rep['latency_p99_ms'])} ms, "
                        f"cpu {_fmt(rep['server_cpu_us_per_event'])} us/ev, {verdict}"
                    )
        finally:
            for target in targets.values():
                try:
                    await asyncio.wait_for(target.close(), 120)
                except Exception as exc:
                    target.errors.append(f"close: {exc!r}")
        for name, target in targets.items():
            result["systems"][name] = {
                "reps": target.reps,
                "setup": target.setup,
                "errors": target.errors,
                "connections": scenario["users"] * scenario["conns_per_user"],
                "idle_connections": len(idle_users),
            }
    return result


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _failure(rep: dict[str, Any]) -> str:
    keys = (
        "lost",
        "extra",
        "leaks",
        "order_errors",
        "other_frames",
        "closed_connections",
        "rejected",
        "slow_consumer_closes",
    )
    parts = [f"{key}={rep[key]}" for key in keys if rep.get(key)]
    if rep.get("timed_out"):
        parts.append("timed out")
    if rep.get("emit_error"):
        parts.append(f"emit error {rep['emit_error']}")
    return ", ".join(parts) or "unverified"


def main() -> int:
    config = json.loads(sys.stdin.read())
    pinned = pin_to(config.get("cpu", CLIENT_CPU)) if config.get("cpu", 0) >= 0 else False
    scenario = config["scenario"]
    wanted = 256 + len(config["servers"]) * (
        scenario["users"] * scenario["conns_per_user"] + scenario["idle"]
    )
    limit = raise_nofile(wanted)
    if limit < wanted:
        room = max(
            0,
            (limit - 256) // len(config["servers"])
            - scenario["users"] * scenario["conns_per_user"],
        )
        log(f"RLIMIT_NOFILE is {limit}: idle connections cut from {scenario['idle']} to {room}")
        scenario["idle_requested"] = scenario["idle"]
        scenario["idle"] = room
    try:
        result = asyncio.run(asyncio.wait_for(run(config), config.get("timeout", 900)))
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "systems": {}}
    result["pinned"] = pinned
    result["nofile"] = limit
    result["scenario"] = scenario
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
