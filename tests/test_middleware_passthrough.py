"""The middleware passes on what it does not own (DESIGN §6): the app's HTTP
routes, other WebSocket paths, and the lifespan, which also starts and stops the
router around the app's own startup and shutdown."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from router import EventRouter, EventRouterMiddleware

from .conftest import ADMIN_TOKEN, Server, recv_json, token_auth, ws_connect
from .helpers import frames_until_closed


async def echo_body(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "header": request.headers.get("x-custom"),
            "body": body.decode(),
        },
        status_code=201,
        headers={"x-app": "yes"},
    )


async def echo_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"echo: {text}")
    await websocket.close()


def build(router: EventRouter, events: list[str]) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append(f"app startup, router running={router.running}")
        yield
        events.append(f"app shutdown, router running={router.running}")

    return Starlette(
        routes=[
            Route("/things/{name}", echo_body, methods=["GET", "POST", "PUT"]),
            Route("/_routerish", lambda request: PlainTextResponse("mine, not the router's")),
            WebSocketRoute("/echo", echo_socket),
            WebSocketRoute("/ws/other", echo_socket),
        ],
        lifespan=lifespan,
        middleware=[
            Middleware(
                EventRouterMiddleware,
                router=router,
                authenticate=token_auth,
                admin_token=ADMIN_TOKEN,
            )
        ],
    )


async def test_http_routes_of_the_app_pass_through_unchanged(router_factory: Any) -> None:
    router: EventRouter = router_factory()
    server = Server(build(router, []))
    async with server, httpx.AsyncClient(base_url=server.http) as client:
        response = await client.post(
            "/things/x?a=1&b=2", content=b"payload", headers={"x-custom": "kept"}
        )
        assert response.status_code == 201
        assert response.headers["x-app"] == "yes"
        assert response.json() == {
            "method": "POST",
            "path": "/things/x",
            "query": "a=1&b=2",
            "header": "kept",
            "body": "payload",
        }
        assert (await client.get("/_routerish")).text == "mine, not the router's"
        assert (await client.get("/nowhere")).status_code == 404
        # A plain GET of the WebSocket path is not an upgrade: the app answers it.
        assert (await client.get("/ws")).status_code == 404
        # The admin path is the router's.
        assert (await client.get("/_router/stats")).status_code == 401
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        stats = await client.get("/_router/stats", headers=auth)
        assert stats.status_code == 200 and stats.json()["published"] == 0


async def test_other_websocket_paths_pass_through(router_factory: Any) -> None:
    router: EventRouter = router_factory()
    async with Server(build(router, [])) as server:
        for path in ("/echo", "/ws/other"):
            async with connect(f"{server.ws}{path}") as ws:  # no token: not ours to judge
                await ws.send("hi")
                assert await ws.recv() == "echo: hi"
        assert len(router.hub) == 0
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
        finally:
            await ws.close()


async def test_lifespan_runs_app_handlers_and_starts_and_stops_the_router(
    router_factory: Any,
) -> None:
    router: EventRouter = router_factory()
    events: list[str] = []
    assert not router.running
    async with Server(build(router, events)) as server:
        assert router.running
        assert events == ["app startup, router running=True"]
        async with httpx.AsyncClient(base_url=server.http) as client:
            assert (await client.get("/things/y")).status_code == 201
    assert events == ["app startup, router running=True", "app shutdown, router running=True"]
    assert not router.running


async def test_router_starts_on_first_use_when_lifespan_is_off(router_factory: Any) -> None:
    router: EventRouter = router_factory()
    events: list[str] = []
    async with Server(build(router, events), lifespan="off") as server:
        assert not router.running and events == []
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            assert router.running
        finally:
            await ws.close()
    await router.stop()


async def test_stopping_the_router_closes_its_connections_with_1001(router_factory: Any) -> None:
    router: EventRouter = router_factory()
    async with Server(build(router, [])) as server:
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            await router.stop()
            frames, code = await frames_until_closed(ws)
            assert frames == [] and code == 1001
            assert len(router.hub) == 0
        finally:
            await ws.close()
