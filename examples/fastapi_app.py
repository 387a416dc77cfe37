"""FastAPI, JWT authentication, and an endpoint that starts an agent run.

    pip install fastapi "agent-event-router[jwt]"
    JWT_SECRET=... ROUTER_ADMIN_TOKEN=... uvicorn examples.fastapi_app:app

Every request carries the user's JWT (HS256, ``sub`` = user id, audience
``agent-router-example``):

- the browser: ``new WebSocket("ws://127.0.0.1:8000/ws", ["agent-router.v1",
  "bearer." + jwt])`` (or ``/ws?token=<jwt>``). It receives the events of the
  user's threads only, and is closed with 4401 when the token expires;
- ``POST /threads`` -> ``201 {"thread_id": ...}``: a new thread of the caller;
- ``POST /agent/runs`` ``{"question": ..., "thread_id"?: ...}`` -> ``202
  {"thread_id": ...}``: starts the agent in the background; its events reach the
  browser as ``agent_started``, ``agent_thinking``, ``tool_executing``,
  ``tool_completed`` ... ``agent_completed``.

Agents in other processes publish with ``POST /_router/publish`` and
``ROUTER_PUBLISH_TOKEN`` (see ``agent_worker.py``).
"""

# No "from __future__ import annotations" here: FastAPI reads the annotations of the
# endpoints defined inside create_app() at runtime, closures included.
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

import anyio
import anyio.abc
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from bridge import AgentWebSocketBridge
from router import (
    EventRouter,
    EventRouterMiddleware,
    InvalidId,
    JWTAuthenticator,
    NotThreadOwner,
    new_thread_id,
)

logger = logging.getLogger("examples.fastapi_app")

AUDIENCE = "agent-router-example"


class RunRequest(BaseModel):
    question: str
    thread_id: str | None = None


class ThreadCreated(BaseModel):
    thread_id: str


async def answer(
    bridge: AgentWebSocketBridge, *, thread_id: str, user_id: str, question: str
) -> None:
    """The agent: each step is an event on the user's WebSocket."""
    async with bridge.run(
        thread_id=thread_id,
        user_id=user_id,
        agent_name="assistant",
        context={"question": question},
    ) as run:
        await run.thinking("Reading the question", step_number=1, progress_percentage=10)
        async with run.tool("search_docs", {"query": question, "limit": 2}) as search:
            search.result = [{"title": "Mounting the router", "url": "/docs/mount"}]
        await run.thinking("Writing the answer", step_number=2, progress_percentage=80)
        run.result = {"answer": f"See {search.result[0]['url']}.", "question": question}


def create_app(
    *,
    secret: str | None = None,
    dead_letters: str | None = None,
    admin_token: str | None = None,
    publish_token: str | None = None,
) -> FastAPI:
    """The example app; each argument defaults to its environment variable."""
    authenticator = JWTAuthenticator(
        secret or os.environ.get("JWT_SECRET", "change-me-to-a-real-secret-of-32-bytes"),
        audience=AUDIENCE,
    )
    router = EventRouter(
        dead_letters=dead_letters
        or os.environ.get("AGENT_ROUTER_DEAD_LETTERS", "sqlite:///./agent-router.db")
    )
    bridge = AgentWebSocketBridge(router)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Runs outlive the request that started them; at shutdown they are cancelled
        # (each ends with agent_error) before the middleware stops the router.
        async with anyio.create_task_group() as agents:
            app.state.agents = agents
            yield
            agents.cancel_scope.cancel()

    app = FastAPI(title="agent-event-router example", lifespan=lifespan)
    app.add_middleware(
        EventRouterMiddleware,
        router=router,
        authenticate=authenticator,
        admin_token=admin_token or os.environ.get("ROUTER_ADMIN_TOKEN"),
        publish_token=publish_token or os.environ.get("ROUTER_PUBLISH_TOKEN"),
    )
    app.state.router = router

    def current_user(request: Request) -> str:
        # The same authenticator as the WebSocket: one identity for both.
        principal = authenticator(request)
        if principal is None:
            raise HTTPException(401, "send Authorization: Bearer <a valid JWT>")
        return principal.user_id

    User = Annotated[str, Depends(current_user)]

    @app.post("/threads", status_code=201)
    async def create_thread(user: User) -> ThreadCreated:
        thread_id = await router.threads.create(new_thread_id("chat"), user)
        return ThreadCreated(thread_id=thread_id)

    @app.post("/agent/runs", status_code=202)
    async def start_run(body: RunRequest, request: Request, user: User) -> dict[str, Any]:
        thread_id = body.thread_id or new_thread_id("chat")
        try:
            # Claim the thread here, so another user's thread is refused now rather
            # than inside the background run.
            await router.threads.get_or_create(thread_id, user)
        except InvalidId as exc:
            raise HTTPException(400, str(exc)) from None
        except NotThreadOwner:
            raise HTTPException(404, "no such thread") from None
        agents: anyio.abc.TaskGroup = request.app.state.agents
        agents.start_soon(
            partial(
                _in_background, bridge, thread_id=thread_id, user_id=user, question=body.question
            )
        )
        return {"thread_id": thread_id}

    return app


async def _in_background(bridge: AgentWebSocketBridge, **run: str) -> None:
    try:
        await answer(bridge, **run)
    except Exception:
        # The browser has seen agent_error already; keep the task group alive.
        logger.exception("agent run failed")


app = create_app()

if __name__ == "__main__":
    import uvicorn

    from router.serving import uvicorn_settings

    uvicorn.run(app, host="127.0.0.1", port=8000, **uvicorn_settings())
