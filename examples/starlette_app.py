"""The minimal mount: agent-event-router in a Starlette application.

    ROUTER_ADMIN_TOKEN=change-me uvicorn examples.starlette_app:app

What it gives you, next to your own routes (which it leaves alone):

- ``ws://127.0.0.1:8000/ws``: each user's browser connects here and receives the
  events of that user's threads, and nobody else's;
- ``/_router/...``: the admin API (stats, dead letters, replay), behind
  ``ROUTER_ADMIN_TOKEN``; off when it is not set.

Your agents publish with ``await router.publish(event)`` or through the bridge
(``bridge.AgentWebSocketBridge(router)``); see ``examples/agent_in_app.py``.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from router import EventRouter, EventRouterMiddleware
from router.auth import bearer_token

# A stand-in for your authentication: map the token a client presents to a user id.
# bearer_token() reads it from "Authorization: Bearer", ?token= or the bearer.<token>
# subprotocol. Use router.JWTAuthenticator (see fastapi_app.py) or your own check.
TOKENS = {"token-alice": "alice", "token-bob": "bob"}


def authenticate(conn: HTTPConnection) -> str | None:
    return TOKENS.get(bearer_token(conn) or "")


async def homepage(request: Request) -> PlainTextResponse:
    return PlainTextResponse("your application, untouched by the router\n")


# Embedded defaults: routing in this process, dead letters in ./agent-router.db.
router = EventRouter(
    dead_letters=os.environ.get("AGENT_ROUTER_DEAD_LETTERS", "sqlite:///./agent-router.db")
)

app = Starlette(
    routes=[Route("/", homepage)],
    middleware=[
        Middleware(
            EventRouterMiddleware,
            router=router,
            authenticate=authenticate,
            admin_token=os.environ.get("ROUTER_ADMIN_TOKEN"),
            publish_token=os.environ.get("ROUTER_PUBLISH_TOKEN"),
        )
    ],
)

if __name__ == "__main__":
    import uvicorn

    from router.serving import uvicorn_settings

    uvicorn.run(app, host="127.0.0.1", port=8000, **uvicorn_settings())
