"""The server process of one system under test: ``python -m benchmarks.servers --system S``.

It binds 127.0.0.1 port 0, prints ``READY <port> <pid>`` on stdout and serves with
uvicorn (``websockets-sansio``, no compression) until SIGTERM. Besides the system's
WebSocket at ``/ws`` (socket.io: ``/socket.io/``) it serves a small control API used
by the load generator, the same for every system:

* ``POST /bench/setup {"users": [...]}`` creates one thread per user and answers
  ``{"threads": {user: [[thread_id, run_id, last_seq]]}}``;
* ``POST /bench/emit {"users": [...], "mode": "flood"|"paced", "per_thread": N,
  "rate": R, "total": N}`` starts publishing inside this process (202 at once);
* ``GET /bench/status[?gc=1]`` answers the emission's progress and the system's figures.

Emission is the same loop for every system; only ``emit`` differs. The router
publishes through ``EventRouter.publish`` (agents live in the server process, as with
the bridge). The bare baseline serialises the frame once and sends it to the user's
sockets with no checks; ``validated`` is the bare baseline with the frame made by the
router's validation and frame code instead. python-socketio emits to a room named after the user.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import router
from router import EventRouter, EventRouterMiddleware, new_run_id, new_thread_id
from router.events import MalformedEvent, prepare_frame, read_event

from .common import AGENT_NAME, SERVER_CPU, bench_event, outbound_frame, pin_to, raise_nofile


def _timestamp() -> str:
    now = time.time_ns()
    seconds, rest = divmod(now, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d}Z"


class System:
    """What differs between the systems: making a thread, emitting one event, figures."""

    name = "?"

    def __init__(self) -> None:
        self.threads: dict[str, list[tuple[str, str]]] = {}

    async def create_thread(self, user: str) -> tuple[str, str, int]:
        raise NotImplementedError

    async def emit(self, user: str, thread_id: str, run_id: str, n: int) -> bool:
        raise NotImplementedError

    def connections(self) -> int:
        raise NotImplementedError

    def figures(self) -> dict[str, Any]:
        return {}

    def routes(self) -> list[Any]:
        return []

    def middleware(self) -> list[Middleware]:
        return []

    def wrap(self, app: Starlette) -> Any:
        return app


# --------------------------------------------------------------------- router


def _token_auth(conn: HTTPConnection) -> str | None:
    return conn.query_params.get("token") or None


class RouterSystem(System):
    name = "router"

    def __init__(self, outbox_size: int | None) -> None:
        super().__init__()
        options: dict[str, Any] = {"dead_letters": "memory://"}
        if outbox_size:
            options["outbox_size"] = outbox_size
        backend = os.environ.get("BENCH_ROUTER_BACKEND")
        if backend:
            # The Redis rows: the same router on a shared backend (--redis URL).
            options["backend"] = backend
            options["backend_options"] = {"prefix": os.environ["BENCH_ROUTER_PREFIX"]}
        self.router = EventRouter(**options)

    async def create_thread(self, user: str) -> tuple[str, str, int]:
        thread_id = str(await self.router.threads.create(new_thread_id("bench"), user))
        run_id = new_run_id(thread_id)
        result = await self.router.publish(
            {"type": "agent_started", "run_id": run_id, "agent_name": AGENT_NAME}
        )
        if not result.accepted:
            raise RuntimeError(f"agent_started rejected: {result.reason}: {result.detail}")
        return thread_id, run_id, result.seq or 0

    async def emit(self, user: str, thread_id: str, run_id: str, n: int) -> bool:
        result = await self.router.publish(bench_event(run_id, user, n, time.monotonic_ns()))
        return result.accepted

    def connections(self) -> int:
        return len(self.router.hub)

    def figures(self) -> dict[str, Any]:
        stats = self.router.stats
        return {
            "accepted": stats.accepted,
            "rejected": dict(stats.rejected),
            "delivered": self.router.hub.delivered,
            "slow_consumer_closes": stats.slow_consumer_closes,
        }

    def middleware(self) -> list[Middleware]:
        # Mounted the way DESIGN.md section 6 shows it.
        return [
            Middleware(
                EventRouterMiddleware,
                router=self.router,
                authenticate=_token_auth,
                admin_token="bench-admin",
            )
        ]


# --------------------------------------------------------------------- bare


class BareSystem(System):
    """The practical limit: a dict of user to sockets, one dumps, no checks."""

    name = "bare"

    def __init__(self) -> None:
        super().__init__()
        self.sockets: dict[str, set[WebSocket]] = {}
        self.seqs: dict[str, int] = {}
        self.send_errors = 0

    async def create_thread(self, user: str) -> tuple[str, str, int]:
        thread_id = new_thread_id("bench")
        self.seqs[thread_id] = 0
        return thread_id, new_run_id(thread_id), 0

    def frame(self, event: dict[str, Any], thread_id: str) -> str | None:
        """The outbound frame of one event, with the thread's next seq (None: refused)."""
        seq = self.seqs[thread_id] + 1
        self.seqs[thread_id] = seq
        return json.dumps(
            outbound_frame(
                event,
                event_id=uuid.uuid4().hex,
                seq=seq,
                thread_id=thread_id,
                timestamp=_timestamp(),
            ),
            separators=(",", ":"),
        )

    async def emit(self, user: str, thread_id: str, run_id: str, n: int) -> bool:
        frame = self.frame(bench_event(run_id, user, n, time.monotonic_ns()), thread_id)
        if frame is None:
            return False
        for ws in tuple(self.sockets.get(user, ())):
            try:
                await ws.send_text(frame)
            except Exception:
                self.send_errors += 1
        return True

    def connections(self) -> int:
        return sum(len(conns) for conns in self.sockets.values())

    def figures(self) -> dict[str, Any]:
        return {"send_errors": self.send_errors}

    async def endpoint(self, ws: WebSocket) -> None:
        user = ws.query_params.get("token")
        if not user:
            await ws.close(1008)
            return
        await ws.accept()
        await ws.send_text(
            json.dumps({"op": "welcome", "connection_id": uuid.uuid4().hex, "user_id": user})
        )
        conns = self.sockets.setdefault(user, set())
        conns.add(ws)
        try:
            while True:
                data = json.loads(await ws.receive_text())
                if data.get("op") == "subscribe":
                    thread_id = data.get("thread_id")
                    last = self.seqs.get(thread_id, 0) if isinstance(thread_id, str) else 0
                    reply = {"op": "subscribed", "thread_id": thread_id, "last_seq": last or None}
                    await ws.send_text(json.dumps(reply))
                elif data.get("op") == "ping":
                    await ws.send_text('{"op":"pong"}')
        except (WebSocketDisconnect, RuntimeError, ValueError):
            pass
        finally:
            conns.discard(ws)
            if not conns:
                self.sockets.pop(user, None)

    def routes(self) -> list[Any]:
        return [WebSocketRoute("/ws", self.endpoint)]


class ValidatedSystem(BareSystem):
    """The bare endpoint with one difference: the frame is made by the router's own
    stage 1 (``read_event``: the event validated against the schema, its payload
    serialised) and ``prepare_frame``, in place of the bare ``json.dumps``. Ids,
    timestamp and sends are the bare endpoint's. It shows what validating every event
    costs against serialising it by hand; the rest of the router's distance from the
    bare endpoint is its routing (id checks, owner, lifecycle, seq, history, outbox)."""

    name = "validated"

    def frame(self, event: dict[str, Any], thread_id: str) -> str | None:
        read = read_event(event)
        if isinstance(read, MalformedEvent):
            return None
        parsed, payload_json = read
        seq = self.seqs[thread_id] + 1
        self.seqs[thread_id] = seq
        return prepare_frame(
            parsed,
            event_id=uuid.uuid4().hex,
            thread_id=thread_id,
            timestamp=_timestamp(),
            payload_json=payload_json,
        ).with_seq(seq)


# --------------------------------------------------------------------- socket.io


class SocketIOSystem(System):
    """python-socketio, one room per user, its own protocol and client."""

    name = "socketio"

    def __init__(self) -> None:
        super().__init__()
        import socketio  # type: ignore[import-untyped]

        self.sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=[])
        self.seqs: dict[str, int] = {}
        self.connected = 0
        sio = self.sio

        @sio.event  # type: ignore[untyped-decorator]
        async def connect(sid: str, environ: dict[str, Any], auth: Any) -> bool:
            user = auth.get("token") if isinstance(auth, dict) else None
            if not user:
                return False
            await sio.save_session(sid, {"user": user})
            await sio.enter_room(sid, user)
            self.connected += 1
            return True

        @sio.event  # type: ignore[untyped-decorator]
        async def disconnect(sid: str, *args: Any) -> None:
            self.connected -= 1

        @sio.on("subscribe")  # type: ignore[untyped-decorator]
        async def subscribe(sid: str, data: Any) -> dict[str, Any]:
            thread_id = data.get("thread_id") if isinstance(data, dict) else None
            last = self.seqs.get(thread_id, 0) if isinstance(thread_id, str) else 0
            return {"op": "subscribed", "thread_id": thread_id, "last_seq": last or None}

    async def create_thread(self, user: str) -> tuple[str, str, int]:
        thread_id = new_thread_id("bench")
        self.seqs[thread_id] = 0
        return thread_id, new_run_id(thread_id), 0

    async def emit(self, user: str, thread_id: str, run_id: str, n: int) -> bool:
        seq = self.seqs[thread_id] + 1
        self.seqs[thread_id] = seq
        event = bench_event(run_id, user, n, time.monotonic_ns())
        frame = outbound_frame(
            event, event_id=uuid.uuid4().hex, seq=seq, thread_id=thread_id, timestamp=_timestamp()
        )
        await self.sio.emit("event", frame, room=user)
        return True

    def connections(self) -> int:
        return self.connected

    def wrap(self, app: Starlette) -> Any:
        import socketio

        return socketio.ASGIApp(self.sio, other_asgi_app=app)


# --------------------------------------------------------------------- control API


class GCPauses:
    """How long the cyclic garbage collector stops the loop, per generation."""

    def __init__(self) -> None:
        self.started = 0
        self.reset()
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.count = [0, 0, 0]
        self.total_ns = [0, 0, 0]
        self.max_ns = [0, 0, 0]

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter_ns()
            return
        generation = info["generation"]
        spent = time.perf_counter_ns() - self.started
        self.count[generation] += 1
        self.total_ns[generation] += spent
        self.max_ns[generation] = max(self.max_ns[generation], spent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tracked_objects": len(gc.get_objects()),
            "collections": list(self.count),
            "total_ms": [round(ns / 1e6, 3) for ns in self.total_ns],
            "max_ms": [round(ns / 1e6, 3) for ns in self.max_ns],
        }


class Emission:
    def __init__(self) -> None:
        self.running = False
        self.published = 0
        self.rejected = 0
        self.error: str | None = None
        self.first_ns = 0
        self.last_ns = 0
        self.lag_ns: list[int] = []

    def to_dict(self) -> dict[str, Any]:
        lags = sorted(self.lag_ns)
        return {
            "running": self.running,
            "published": self.published,
            "rejected": self.rejected,
            "error": self.error,
            "seconds": (self.last_ns - self.first_ns) / 1e9 if self.last_ns else None,
            "lag_p99_ms": lags[int(0.99 * (len(lags) - 1))] / 1e6 if lags else None,
            "lag_max_ms": lags[-1] / 1e6 if lags else None,
        }


class Control:
    def __init__(self, system: System) -> None:
        self.system = system
        self.emission = Emission()
        self.task: asyncio.Task[None] | None = None
        self.gc = GCPauses()

    async def setup(self, request: Request) -> JSONResponse:
        body = await request.json()
        answer: dict[str, list[list[Any]]] = {}
        for user in body["users"]:
            thread_id, run_id, last_seq = await self.system.create_thread(user)
            self.system.threads.setdefault(user, []).append((thread_id, run_id))
            answer.setdefault(user, []).append([thread_id, run_id, last_seq])
        return JSONResponse({"threads": answer})

    async def emit(self, request: Request) -> JSONResponse:
        if self.emission.running:
            return JSONResponse({"error": "an emission is running"}, status_code=409)
        spec = await request.json()
        self.emission = Emission()
        self.gc.reset()
        self.emission.running = True
        self.task = asyncio.create_task(self._emit(spec, self.emission))
        return JSONResponse({"started": True}, status_code=202)

    async def _emit(self, spec: dict[str, Any], state: Emission) -> None:
        system = self.system
        targets = [
            (user, thread_id, run_id)
            for user in spec["users"]
            for thread_id, run_id in system.threads[user]
        ]
        try:
            state.first_ns = time.monotonic_ns()
            if spec["mode"] == "flood":
                for n in range(int(spec["per_thread"])):
                    for user, thread_id, run_id in targets:
                        if await system.emit(user, thread_id, run_id, n):
                            state.published += 1
                        else:
                            state.rejected += 1
                    # One round per loop pass: the systems' writers get their turn.
                    await asyncio.sleep(0)
            elif spec["mode"] == "agents":
                await self._agents(spec, targets, state)
            else:
                await self._paced(spec, targets, state)
        except Exception as exc:
            state.error = f"{type(exc).__name__}: {exc}"
        finally:
            state.last_ns = time.monotonic_ns()
            state.running = False

    async def _agents(
        self, spec: dict[str, Any], targets: Sequence[tuple[str, str, str]], state: Emission
    ) -> None:
        """One task per thread, each publishing its own events in order, all at once:
        many agents running side by side, as in a real server."""
        per_thread = int(spec["per_thread"])
        emit = self.system.emit

        async def agent(user: str, thread_id: str, run_id: str) -> None:
            for n in range(per_thread):
                if await emit(user, thread_id, run_id, n):
                    state.published += 1
                else:
                    state.rejected += 1

        await asyncio.gather(*(agent(*target) for target in targets))

    async def _paced(
        self, spec: dict[str, Any], targets: Sequence[tuple[str, str, str]], state: Emission
    ) -> None:
        total = int(spec["total"])
        interval = 1e9 / float(spec["rate"])
        start = time.monotonic_ns()
        emit = self.system.emit
        k = 0
        while k < total:
            now = time.monotonic_ns()
            due = min(total, int((now - start) / interval) + 1)
            while k < due:
                user, thread_id, run_id = targets[k % len(targets)]
                state.lag_ns.append(time.monotonic_ns() - start - int(k * interval))
                if await emit(user, thread_id, run_id, k // len(targets)):
                    state.published += 1
                else:
                    state.rejected += 1
                k += 1
            wait = (start + k * interval - time.monotonic_ns()) / 1e9
            await asyncio.sleep(max(0.0, wait))

    async def status(self, request: Request) -> JSONResponse:
        if request.query_params.get("gc"):
            gc.collect()
        extra: dict[str, Any] = {}
        if request.query_params.get("types"):
            # Which objects the cyclic collector tracks, by type (a diagnostic).
            counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            extra["tracked_by_type"] = dict(counts.most_common(25))
        return JSONResponse(
            extra
            | {
                "system": self.system.name,
                "pid": os.getpid(),
                "router_package": os.path.dirname(router.__file__),
                "connections": self.system.connections(),
                "emission": self.emission.to_dict(),
                "gc": self.gc.to_dict(),
                "figures": self.system.figures(),
            }
        )

    def routes(self) -> list[Any]:
        return [
            Route("/bench/setup", self.setup, methods=["POST"]),
            Route("/bench/emit", self.emit, methods=["POST"]),
            Route("/bench/status", self.status),
        ]


def build(system_name: str, *, outbox_size: int | None = None) -> tuple[System, Any]:
    system: System
    if system_name == "router":
        system = RouterSystem(outbox_size)
    elif system_name == "bare":
        system = BareSystem()
    elif system_name == "validated":
        system = ValidatedSystem()
    elif system_name == "socketio":
        system = SocketIOSystem()
    else:
        raise SystemExit(f"unknown system {system_name!r}")
    control = Control(system)
    app = Starlette(routes=control.routes() + system.routes(), middleware=system.middleware())
    return system, system.wrap(app)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.servers")
    parser.add_argument(
        "--system", required=True, choices=("bare", "validated", "socketio", "router")
    )
    parser.add_argument("--cpu", type=int, default=SERVER_CPU, help="CPU to pin to; -1: none")
    parser.add_argument("--outbox-size", type=int, default=0)
    parser.add_argument("--nofile", type=int, default=65536)
    args = parser.parse_args(argv)
    if args.cpu >= 0:
        pin_to(args.cpu)
    raise_nofile(args.nofile)
    _, app = build(args.system, outbox_size=args.outbox_size or None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    config = uvicorn.Config(
        app,
        loop="asyncio",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=1024 * 1024,
        log_level="warning",
        lifespan="on",
        backlog=4096,
        timeout_graceful_shutdown=5,
    )
    print(f"READY {sock.getsockname()[1]} {os.getpid()}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
