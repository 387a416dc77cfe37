"""An agent inside a web application, streaming its progress to the browser.

A Starlette app mounts :class:`router.EventRouterMiddleware` (the WebSocket
endpoint ``/ws`` and the admin API) and has one endpoint of its own::

    POST /runs   {"question": "...", "thread_id": optional}   ->  202 {"thread_id": ...}

which starts a scripted research agent in the background. The agent reports
through the bridge (``bridge.run`` + ``run.tool``), and the user's browser,
connected to ``/ws``, receives ``agent_started``, ``agent_thinking``,
``tool_executing``/``tool_completed`` for each tool, and ``agent_completed``.

Run it::

    python examples/agent_in_app.py          # http://127.0.0.1:8000

then, for example, with the ``websockets`` command line client and curl::

    python -m websockets "ws://127.0.0.1:8000/ws?token=tok-alice"
    curl -X POST -H "Authorization: Bearer tok-alice" \\
         -d '{"question": "why is the sky blue"}' http://127.0.0.1:8000/runs

Authentication here is a toy (the token ``tok-<user>`` is user ``<user>``);
use :class:`router.JWTAuthenticator` or your own ``authenticate`` in a real app.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridge import AgentWebSocketBridge
from router import (
    EventRouter,
    EventRouterMiddleware,
    NotThreadOwner,
    is_thread_id,
    is_user_id,
    new_thread_id,
)

logger = logging.getLogger("examples.agent_in_app")

DEMO_TOKEN_PREFIX = "tok-"


def demo_authenticate(conn: HTTPConnection) -> str | None:
    """``tok-<user>`` from ``Authorization: Bearer`` or ``?token=``. A toy: replace it."""
    token = conn.query_params.get("token") or ""
    scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        token = credentials.strip()
    user = token.removeprefix(DEMO_TOKEN_PREFIX)
    if token.startswith(DEMO_TOKEN_PREFIX) and is_user_id(user):
        return user
    return None


# ---------------------------------------------------------------- the agent (scripted)


async def search(question: str) -> list[dict[str, str]]:
    """Stands in for a real search tool (no network)."""
    await anyio.lowlevel.checkpoint()
    words = question.split()
    return [{"title": f"About {word}", "url": f"https://example.org/{word}"} for word in words[:3]]


async def research_agent(
    bridge: AgentWebSocketBridge, *, thread_id: str, user_id: str, question: str
) -> None:
    """Answer ``question`` in ``thread_id``, reporting every step through the bridge."""
    async with bridge.run(
        thread_id=thread_id,
        user_id=user_id,
        agent_name="researcher",
        context={"question": question},
    ) as run:
        await run.thinking("looking up sources", step_number=1, progress_percentage=10)
        async with run.tool("search", {"q": question}) as found:
            found.result = await search(question)
        await run.thinking("reading what was found", step_number=2, progress_percentage=60)
        async with run.tool("summarise", {"sources": len(found.result)}) as summary:
            titles = [source["title"] for source in found.result]
            summary.result = {"summary": "; ".join(titles)}
        await run.progress({"percentage": 100, "message": "done"})
        run.result = {"answer": f"{len(titles)} sources consulted", "sources": found.result}


async def _run_in_background(
    bridge: AgentWebSocketBridge, *, thread_id: str, user_id: str, question: str
) -> None:
    try:
        await research_agent(bridge, thread_id=thread_id, user_id=user_id, question=question)
    except Exception:
        # The browser has seen agent_error already; keep the app's task group alive.
        logger.exception("agent run in thread %s failed", thread_id)


# ---------------------------------------------------------------- the app


def create_app(
    router: EventRouter | None = None,
    *,
    authenticate: Callable[[HTTPConnection], str | None] = demo_authenticate,
    **middleware_options: Any,
) -> Starlette:
    """The example app over ``router`` (by default one with embedded defaults)."""
    if router is None:
        router = EventRouter(
            dead_letters=os.environ.get("AGENT_ROUTER_DEAD_LETTERS", "sqlite:///./agent-router.db")
        )
    bridge = AgentWebSocketBridge(router)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Runs live in the app's task group: they outlive the request that started
        # them, and are cancelled at shutdown (each then ends with agent_error while
        # the router, which the middleware stops after the app, is still running).
        async with anyio.create_task_group() as agents:
            app.state.agents = agents
            yield
            agents.cancel_scope.cancel()

    async def start_run(request: Request) -> JSONResponse:
        user = authenticate(request)
        if user is None:
            return JSONResponse({"error": "unauthenticated"}, status_code=401)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("question"), str):
            return JSONResponse({"error": 'expected {"question": "..."}'}, status_code=400)
        thread_id = body.get("thread_id") or new_thread_id("research")
        if not is_thread_id(thread_id):
            return JSONResponse({"error": "not a canonical thread id"}, status_code=400)
        try:
            # Claim the thread now, so that a thread of another user is refused here
            # rather than inside the background run.
            await router.threads.get_or_create(thread_id, user)
        except NotThreadOwner:
            return JSONResponse({"error": "forbidden"}, status_code=403)
        agents: anyio.abc.TaskGroup = request.app.state.agents
        agents.start_soon(
            partial(
                _run_in_background,
                bridge,
                thread_id=thread_id,
                user_id=user,
                question=body["question"],
            )
        )
        return JSONResponse({"thread_id": thread_id}, status_code=202)

    return Starlette(
        routes=[Route("/runs", start_run, methods=["POST"])],
        middleware=[
            Middleware(
                EventRouterMiddleware,
                router=router,
                authenticate=authenticate,
                **middleware_options,
            )
        ],
        lifespan=lifespan,
    )


app = create_app()

if __name__ == "__main__":
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    from router.serving import uvicorn_settings

    uvicorn.run(app, host="127.0.0.1", port=8000, **uvicorn_settings())
