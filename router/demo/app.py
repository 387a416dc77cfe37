"""The demo application behind ``agent-router demo``.

A Starlette app with :class:`~router.EventRouterMiddleware` mounted (``/ws`` and the
admin API under ``/_router``), the page at ``/`` (static files shipped in this
package, no build step), and a few endpoints of its own for the page:

==========================  ====================================================
``GET  /api/users``         the demo users and their tokens, and the admin token
                            (the demo's stand-in for a login page; no auth)
``GET  /api/config``        who the token belongs to, the scenarios, the paths
``GET  /api/threads``       the caller's threads (never another user's)
``POST /api/threads``       ``{"title"?}``: a new thread owned by the caller
``POST /api/runs``          ``{"thread_id", "scenario"?}``: start a demo run (202)
``POST /api/mismatch``      publish the classic mismatched run/thread pair
``POST /api/bad-events``    ``{"kind", "thread_id"?}``: publish another bad event
==========================  ====================================================

Every ``/api`` endpoint but ``/api/users`` authenticates the demo user by its token
(``Authorization: Bearer``), the same token the page uses for the WebSocket.

Handing tokens to a page is what makes this a demo: it is meant for 127.0.0.1 and
says so on the page. The demo agent (:mod:`router.demo.agent`) runs in the app's
task group, so runs outlive the request that started them and end with
``agent_error`` when the server stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bridge import AgentWebSocketBridge

from ..auth import bearer_token
from ..errors import NotThreadOwner
from ..ids import new_event_id, new_run_id, new_thread_id
from ..middleware import EventRouterMiddleware
from ..router import EventRouter
from .agent import SCENARIOS, DemoAgent

__all__ = ["DEFAULT_USERS", "DemoState", "DemoThread", "DemoUser", "create_app"]

logger = logging.getLogger("router.demo")

STATIC = Path(str(resources.files(__package__).joinpath("static")))

#: The demo users: (user id, display name, colour on the page).
DEFAULT_USERS: tuple[tuple[str, str, str], ...] = (
    ("alice", "Alice", "#6ea8fe"),
    ("bob", "Bob", "#f4a261"),
    ("carol", "Carol", "#7bd389"),
)

#: The kinds of bad event the page can publish, and why each is rejected.
BAD_EVENTS = {
    "thread_mismatch": "a run id minted for one thread, sent with another thread's id",
    "thread_not_found": "a well-formed run of a thread that was never created",
    "lifecycle_violation": "tool_completed in a run that never started",
}

_MAX_TITLE = 80


@dataclasses.dataclass(slots=True)
class DemoUser:
    user_id: str
    name: str
    color: str
    token: str

    def public(self) -> dict[str, str]:
        return {"user_id": self.user_id, "name": self.name, "color": self.color}


@dataclasses.dataclass(slots=True)
class DemoThread:
    thread_id: str
    user_id: str
    title: str
    created_at: float
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "thread_id": self.thread_id,
            "title": self.title,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_at)),
            "runs": self.runs,
        }


class DemoState:
    """The demo's users, their tokens and their threads (in memory, per process).

    Thread ownership itself lives in the router (``router.threads``); this keeps
    the titles and the per-user list the page shows.
    """

    def __init__(self, users: tuple[tuple[str, str, str], ...] = DEFAULT_USERS) -> None:
        # Tokens are random per process: opaque, and useless once the demo stops.
        self.users = {
            user_id: DemoUser(user_id, name, color, f"demo.{user_id}.{new_event_id()}")
            for user_id, name, color in users
        }
        self.admin_token = f"demo-admin.{new_event_id()}"
        self._by_token = {user.token: user for user in self.users.values()}
        self.threads: dict[str, dict[str, DemoThread]] = {user: {} for user in self.users}

    def user_for(self, conn: HTTPConnection) -> DemoUser | None:
        """The demo user whose token the request carries (header, ``?token=`` or
        subprotocol), or None."""
        token = bearer_token(conn)
        return None if token is None else self._by_token.get(token)

    def authenticate(self, conn: HTTPConnection) -> str | None:
        """The ``authenticate`` hook of the middleware."""
        user = self.user_for(conn)
        return None if user is None else user.user_id

    def threads_of(self, user_id: str) -> list[DemoThread]:
        return sorted(self.threads[user_id].values(), key=lambda t: t.created_at, reverse=True)


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"error": detail}, status_code=status)


async def _json_object(request: Request) -> dict[str, Any] | None:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _mismatched_event() -> dict[str, Any]:
    """The classic pair from the field: a run id embedding thread ``..._8`` sent with
    thread ``..._7`` (kept in a data file: id literals belong to ``router.ids`` only)."""
    event: dict[str, Any] = json.loads((STATIC / "mismatch.json").read_text(encoding="utf-8"))
    return event


def create_app(
    *,
    store: str = "sqlite:///./agent-router.db",
    speed: float = 1.0,
    router: EventRouter | None = None,
    state: DemoState | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Starlette:
    """The demo app: dead letters in ``store``, the demo agent's pauses scaled by
    ``speed`` (0: no pauses). Pass ``router`` to serve an existing one instead;
    ``on_ready`` is called once the app has started (the router is running)."""
    if router is None:
        router = EventRouter(dead_letters=store)
    demo = state or DemoState()
    bridge = AgentWebSocketBridge(router)
    agent = DemoAgent(bridge, speed=speed)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as runs:
            app.state.runs = runs
            if on_ready is not None:
                on_ready()
            yield
            # Cancelled runs end with agent_error: the middleware stops the router
            # only after the app has shut down.
            runs.cancel_scope.cancel()

    def caller(request: Request) -> DemoUser | JSONResponse:
        user = demo.user_for(request)
        if user is None:
            return _error(401, "send Authorization: Bearer <demo user token> (see /api/users)")
        return user

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def users(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "users": [{**user.public(), "token": user.token} for user in demo.users.values()],
                "admin_token": demo.admin_token,
                "note": "demo only: tokens are handed to the page; serve it on 127.0.0.1",
            }
        )

    async def config(request: Request) -> JSONResponse:
        user = caller(request)
        if isinstance(user, JSONResponse):
            return user
        return JSONResponse(
            {
                "user": user.public(),
                "ws_path": "/ws",
                "admin_path": "/_router",
                "scenarios": [scenario.describe() for scenario in SCENARIOS.values()],
                "bad_events": BAD_EVENTS,
                "mismatch_event": _mismatched_event(),
            }
        )

    async def list_threads(request: Request) -> JSONResponse:
        user = caller(request)
        if isinstance(user, JSONResponse):
            return user
        threads = demo.threads_of(user.user_id)
        return JSONResponse({"threads": [thread.to_dict() for thread in threads]})

    async def create_thread(request: Request) -> JSONResponse:
        user = caller(request)
        if isinstance(user, JSONResponse):
            return user
        body = await _json_object(request)
        if body is None:
            return _error(400, 'expected a JSON object, e.g. {"title": "..."}')
        mine = demo.threads[user.user_id]
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            title = f"Thread {len(mine) + 1}"
        thread_id = await router.threads.create(new_thread_id("demo"), user.user_id)
        thread = DemoThread(thread_id, user.user_id, title.strip()[:_MAX_TITLE], time.time())
        mine[thread_id] = thread
        return JSONResponse(thread.to_dict(), status_code=201)

    async def start_run(request: Request) -> JSONResponse:
        user = caller(request)
        if isinstance(user, JSONResponse):
            return user
        body = await _json_object(request)
        if body is None:
            return _error(400, 'expected {"thread_id": "...", "scenario": "research"}')
        scenario = body.get("scenario") or "research"
        if scenario not in SCENARIOS:
            return _error(400, f"unknown scenario; one of {', '.join(SCENARIOS)}")
        thread = demo.threads[user.user_id].get(str(body.get("thread_id")))
        if thread is None:
            # Another user's thread answers the same as a missing one: no leak.
            return _error(404, "no such thread among yours; create one with POST /api/threads")
        thread.runs += 1
        runs: anyio.abc.TaskGroup = request.app.state.runs
        runs.start_soon(
            partial(_run_safely, agent, scenario, thread_id=thread.thread_id, user_id=user.user_id)
        )
        return JSONResponse(
            {
                "thread_id": thread.thread_id,
                "scenario": scenario,
                "agent_name": SCENARIOS[scenario].agent_name,
            },
            status_code=202,
        )

    async def publish_bad_event(user: DemoUser, kind: str, thread_id: Any) -> JSONResponse:
        event: dict[str, Any]
        if kind == "thread_mismatch":
            event = _mismatched_event()
        elif kind == "thread_not_found":
            # A canonical thread id nobody created, and a run minted from it.
            event = {
                "type": "agent_started",
                "run_id": new_run_id(new_thread_id("ghost")),
                "agent_name": "demo-agent",
                "payload": {"context": {"why": BAD_EVENTS[kind]}},
            }
        elif kind == "lifecycle_violation":
            threads = demo.threads_of(user.user_id)
            mine = demo.threads[user.user_id].get(str(thread_id)) if thread_id else None
            target = mine or (threads[0] if threads else None)
            if target is None:
                return _error(409, "create a thread first: the bad event goes into one of yours")
            event = {
                "type": "tool_completed",
                "run_id": new_run_id(target.thread_id),
                "thread_id": target.thread_id,
                "agent_name": "demo-agent",
                "payload": {"tool_name": "web_search", "success": True},
            }
        else:
            return _error(400, f"unknown kind; one of {', '.join(BAD_EVENTS)}")
        # Naming the user makes the dead letter show up under "mine" on the page.
        event["user_id"] = user.user_id
        result = await router.publish(event)
        return JSONResponse({"event": event, "result": result.to_dict()})

    async def mismatch(request: Request) -> JSONResponse:
        user = caller(request)
        if isinstance(user, JSONResponse):
            return user
        return await publish_bad_event(user, "thread_mismatch", None)

    async def bad_event(request: Request) -> JSONResponse:
        user = caller(request)
        if isinstance(user, JSONResponse):
            return user
        body = await _json_object(request)
        if body is None:
            return _error(400, 'expected {"kind": "thread_mismatch"}')
        return await publish_bad_event(user, str(body.get("kind")), body.get("thread_id"))

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/api/users", users, methods=["GET"]),
            Route("/api/config", config, methods=["GET"]),
            Route("/api/threads", list_threads, methods=["GET"]),
            Route("/api/threads", create_thread, methods=["POST"]),
            Route("/api/runs", start_run, methods=["POST"]),
            Route("/api/mismatch", mismatch, methods=["POST"]),
            Route("/api/bad-events", bad_event, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[
            Middleware(
                EventRouterMiddleware,
                router=router,
                authenticate=demo.authenticate,
                admin_token=demo.admin_token,
            )
        ],
        lifespan=lifespan,
    )
    app.state.demo = demo
    app.state.router = router
    return app


async def _run_safely(agent: DemoAgent, scenario: str, *, thread_id: str, user_id: str) -> None:
    try:
        await agent.run(scenario, thread_id=thread_id, user_id=user_id)
    except NotThreadOwner:
        logger.warning("demo run refused: thread %s is not %s's", thread_id, user_id)
    except Exception:
        # The page has seen agent_error already; keep the app's task group alive.
        logger.exception("demo run in thread %s failed", thread_id)
