"""Shared fixtures: a real uvicorn server on 127.0.0.1 port 0, real websockets clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from websockets.asyncio.client import ClientConnection, connect

from router import EventRouter, EventRouterMiddleware

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

ADMIN_TOKEN = "admin-secret"
TOKENS = {f"tok-{name}": name for name in ("alice", "bob", "carol")}


def need(condition: bool, reason: str) -> None:
    """Skip when a service or tool is missing, but fail under CI=true."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def token_auth(conn: HTTPConnection) -> str | None:
    token = conn.query_params.get("token") or ""
    if token.startswith("tok-"):
        return token[4:]
    return None


async def _hello(request: Any) -> PlainTextResponse:
    return PlainTextResponse("hello from the app")


def make_app(router: EventRouter, **options: Any) -> Starlette:
    options.setdefault("authenticate", token_auth)
    options.setdefault("admin_token", ADMIN_TOKEN)
    return Starlette(
        routes=[Route("/hello", _hello)],
        middleware=[Middleware(EventRouterMiddleware, router=router, **options)],
    )


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
    what: str = "",
) -> None:
    """Wait until a condition holds (polled), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.005)


class Server:
    def __init__(self, app: Any, **config: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config.setdefault("ws", "websockets-sansio")
        config.setdefault("ws_max_size", 1024 * 1024)
        config.setdefault("ws_per_message_deflate", False)
        config.setdefault("log_level", "warning")
        config.setdefault("lifespan", "on")
        self.server = uvicorn.Server(uvicorn.Config(app, **config))
        self.task: asyncio.Task[None] | None = None
        #: the router served, when started with ``serve``
        self.router: EventRouter | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Server:
        self.server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        await wait_for(lambda: self.server.started or self.task.done(), what="server start")
        if self.task.done():
            self.sock.close()  # startup failed: no __aexit__ will close it
            self.task.result()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 15)
        self.sock.close()


@pytest.fixture
def router_factory() -> Callable[..., EventRouter]:
    def factory(**options: Any) -> EventRouter:
        options.setdefault("dead_letters", "memory://")
        return EventRouter(**options)

    return factory


@contextlib.asynccontextmanager
async def serve(router: EventRouter, **options: Any) -> AsyncIterator[Server]:
    server_config = options.pop("server_config", {})
    async with Server(make_app(router, **options), **server_config) as server:
        server.router = router
        yield server


async def ws_connect(
    server: Server, user: str | None, query: str = "", **kwargs: Any
) -> ClientConnection:
    params = [f"token=tok-{user}"] if user else []
    if query:
        params.append(query)
    url = f"{server.ws}/ws" + ("?" + "&".join(params) if params else "")
    kwargs.setdefault("open_timeout", 10)
    return await connect(url, **kwargs)


async def recv_json(
    ws: ClientConnection,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(raw, str)
    data: dict[str, Any] = json.loads(raw)
    return data


async def recv_until(
    ws: ClientConnection,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,  # noqa: ASYNC109
) -> list[dict[str, Any]]:
    """Frames up to and including the first one matching ``predicate``."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        frames.append(frame)
        if predicate(frame):
            return frames


def have_chromium() -> bool:
    return shutil.which("chromium") is not None or os.path.exists("/usr/bin/chromium")


# Redis fixtures (redis_url, prefix, private_redis) live beside the helpers that start servers.
from .redis_support import prefix, private_redis, redis_url  # noqa: E402, F401
