"""examples/: each one run for real, on 127.0.0.1 port 0 or as a subprocess.

``browser_client.js`` is run by tests/test_browser.py (in Chromium) and
``agent_in_app.py`` by tests/test_bridge_example.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from router import EventRouter, new_event_id, new_run_id, new_thread_id

from .conftest import Server, need, recv_json, recv_until, wait_for
from .helpers import all_dead_letters, ev, frames_before_pong

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ADMIN = "example-admin-token"
PUBLISH = "example-publish-token"
JWT_SECRET = "a-test-secret-that-is-long-enough-for-hs256"
_modules = itertools.count()


@contextlib.contextmanager
def example(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[ModuleType]:
    """Import ``examples/<name>.py`` afresh (its module-level app reads the environment)."""
    monkeypatch.setenv("AGENT_ROUTER_DEAD_LETTERS", "memory://")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    module_name = f"example_{name}_{next(_modules)}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[module_name]


class PortServer(Server):
    """A server on a chosen port (to restart one in place), lifespan off by default,
    so that the router outlives it: run it inside ``started(router)``."""

    def __init__(self, app: Any, port: int = 0, **config: Any) -> None:
        config.setdefault("lifespan", "off")
        super().__init__(app, **config)
        if port:
            self.sock.close()
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", port))
            self.port = port


@contextlib.asynccontextmanager
async def started(router: EventRouter) -> AsyncIterator[EventRouter]:
    await router.start()
    try:
        yield router
    finally:
        await router.stop()


async def new_run(router: EventRouter, user: str) -> tuple[str, str]:
    thread = await router.threads.create(new_thread_id("example"), user)
    return thread, new_run_id(thread)


# --------------------------------------------------------------------------- starlette_app.py


async def test_starlette_app_mounts_the_router_and_leaves_the_app_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with example("starlette_app", monkeypatch, ROUTER_ADMIN_TOKEN=ADMIN) as app:
        async with Server(app.app) as server:
            async with httpx.AsyncClient(base_url=server.http) as http:
                assert (await http.get("/")).text.startswith("your application")
                assert (await http.get("/_router/stats")).status_code == 401
            alice = await connect(f"{server.ws}/ws?token=token-alice", open_timeout=10)
            bob = await connect(
                f"{server.ws}/ws",
                open_timeout=10,
                additional_headers={"authorization": "Bearer token-bob"},
            )
            assert (await recv_json(alice))["user_id"] == "alice"
            assert (await recv_json(bob))["user_id"] == "bob"
            thread, run = await new_run(app.router, "alice")
            assert await app.router.publish(ev("agent_started", run))
            frame = await recv_json(alice)
            assert frame["type"] == "agent_started" and frame["thread_id"] == thread
            assert await frames_before_pong(bob) == []
            async with httpx.AsyncClient(base_url=server.http) as http:
                stats = await http.get(
                    "/_router/stats", headers={"authorization": f"Bearer {ADMIN}"}
                )
            assert stats.json()["accepted"] == 1 and stats.json()["connections"] == 2
            with pytest.raises(InvalidStatus):
                await connect(f"{server.ws}/ws?token=token-mallory", open_timeout=10)
            await alice.close()
            await bob.close()


# --------------------------------------------------------------------------- fastapi_app.py


def jwt_for(user: str, module: ModuleType, **claims: Any) -> str:
    import jwt

    payload = {"sub": user, "aud": module.AUDIENCE, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


@pytest.fixture
def fastapi_example(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    need(importlib.util.find_spec("fastapi") is not None, "fastapi is not installed")
    need(importlib.util.find_spec("jwt") is not None, "PyJWT is not installed")
    with example("fastapi_app", monkeypatch, JWT_SECRET=JWT_SECRET) as module:
        yield module


@contextlib.asynccontextmanager
async def fastapi_server(module: ModuleType) -> AsyncIterator[tuple[Server, Any]]:
    app = module.create_app(
        secret=JWT_SECRET, dead_letters="memory://", admin_token=ADMIN, publish_token=PUBLISH
    )
    async with Server(app) as server:
        yield server, app


async def test_fastapi_app_runs_an_agent_for_the_jwt_user_only(
    fastapi_example: ModuleType,
) -> None:
    alice_jwt, bob_jwt = jwt_for("alice", fastapi_example), jwt_for("bob", fastapi_example)
    async with fastapi_server(fastapi_example) as (server, _):
        # The token as a subprotocol, the way browsers send it; and as ?token=.
        alice = await connect(
            f"{server.ws}/ws",
            subprotocols=["agent-router.v1", f"bearer.{alice_jwt}"],
            open_timeout=10,
        )
        bob = await connect(f"{server.ws}/ws?token={bob_jwt}", open_timeout=10)
        assert (await recv_json(alice))["user_id"] == "alice"
        assert (await recv_json(bob))["user_id"] == "bob"
        async with httpx.AsyncClient(base_url=server.http) as http:
            response = await http.post(
                "/agent/runs",
                json={"question": "how do I mount it?"},
                headers={"authorization": f"Bearer {alice_jwt}"},
            )
            assert response.status_code == 202
            thread = response.json()["thread_id"]
            frames = await recv_until(alice, lambda f: f.get("type") == "agent_completed")
            # Bob cannot run in Alice's thread, and saw nothing of hers.
            stolen = await http.post(
                "/agent/runs",
                json={"question": "hers?", "thread_id": thread},
                headers={"authorization": f"Bearer {bob_jwt}"},
            )
            assert stolen.status_code == 404
            assert (await http.post("/agent/runs", json={"question": "?"})).status_code == 401
        assert await frames_before_pong(bob) == []
        await alice.close()
        await bob.close()
    assert [f["type"] for f in frames] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_thinking",
        "agent_completed",
    ]
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5, 6]
    assert {f["thread_id"] for f in frames} == {thread}
    assert frames[-1]["payload"]["result"]["answer"] == "See /docs/mount."


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", "wrong-audience", "expired", "wrong-key"],
)
async def test_fastapi_app_refuses_bad_jwts(fastapi_example: ModuleType, token: str) -> None:
    import jwt

    forged = {
        "not-a-jwt": "not-a-jwt",
        "wrong-audience": jwt_for("alice", fastapi_example, aud="someone-else"),
        "expired": jwt_for("alice", fastapi_example, exp=int(time.time()) - 60),
        "wrong-key": jwt.encode(
            {"sub": "alice", "aud": fastapi_example.AUDIENCE},
            "another-secret-that-is-long-enough-too",
            algorithm="HS256",
        ),
    }[token]
    async with fastapi_server(fastapi_example) as (server, _):
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{server.ws}/ws?token={forged}", open_timeout=10)
        assert refused.value.response.status_code == 403
        async with httpx.AsyncClient(base_url=server.http) as http:
            response = await http.post("/threads", headers={"authorization": f"Bearer {forged}"})
        assert response.status_code == 401


# --------------------------------------------------------------------------- agent_worker.py


async def run_script(*args: str, cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_agent_worker_publishes_a_run_from_another_process(
    fastapi_example: ModuleType, tmp_path: Path
) -> None:
    alice_jwt = jwt_for("alice", fastapi_example)
    worker = str(EXAMPLES / "agent_worker.py")
    async with fastapi_server(fastapi_example) as (server, app):
        async with httpx.AsyncClient(base_url=server.http) as http:
            created = await http.post("/threads", headers={"authorization": f"Bearer {alice_jwt}"})
        thread = created.json()["thread_id"]
        alice = await connect(f"{server.ws}/ws?token={alice_jwt}", open_timeout=10)
        assert (await recv_json(alice))["op"] == "welcome"

        code, out, err = await run_script(
            worker, server.http, "--token", PUBLISH, "--thread", thread, cwd=tmp_path
        )
        assert code == 0, err
        frames = await recv_until(alice, lambda f: f.get("type") == "agent_completed")

        # A thread the app never created: the router refuses, the worker says why.
        ghost = new_thread_id("ghost")
        code, _, ghost_err = await run_script(
            worker, server.http, "--token", PUBLISH, "--thread", ghost, cwd=tmp_path
        )
        await alice.close()
        records = await all_dead_letters(app.state.router.dead_letters)
    assert [f["type"] for f in frames] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
    ]
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5]
    assert {f["agent_name"] for f in frames} == {"worker"}
    assert f"run {frames[0]['run_id']} published" in out
    assert code == 1 and "rejected: thread_not_found" in ghost_err
    assert [(r.reason, r.thread_id) for r in records] == [("thread_not_found", ghost)]


# --------------------------------------------------------------------------- python_client.py


async def test_python_client_resumes_after_a_restart_and_drops_duplicates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        example("starlette_app", monkeypatch) as app,
        example("python_client", monkeypatch) as client,
    ):
        router: EventRouter = app.router
        async with started(router):
            first = PortServer(app.app)
            url = f"{first.ws}/ws"
            thread, run = await new_run(router, "alice")
            stream = client.EventStream(url, "token-alice", max_backoff=0.2)
            received: list[dict[str, Any]] = []

            async def consume() -> None:
                async with contextlib.aclosing(stream.events()) as events:
                    async for event in events:
                        received.append(event)

            async with first:
                consumer = asyncio.create_task(consume())
                await wait_for(lambda: stream.connections == 1, what="first connection")
                await router.publish(ev("agent_started", run))
                await router.publish(ev("agent_thinking", run))
                await wait_for(lambda: len(received) == 2, what="two live events")
            # The server is gone; the agent goes on publishing. Nobody hears the final
            # event: it stays in history, and is dead-lettered as no_recipient.
            await router.publish(ev("tool_executing", run))
            await router.publish(ev("tool_completed", run))
            done = await router.publish(ev("agent_completed", run))
            assert done.dead_letter_id is not None
            async with PortServer(app.app, first.port):
                await wait_for(lambda: len(received) == 5, what="the resume")
                assert stream.connections == 2
                # An agent retries a publish whose answer it never got: the router
                # accepts it twice (two seqs); the client drops the second by event_id.
                second_run = new_run_id(thread)
                retried = ev("agent_thinking", second_run, event_id=new_event_id())
                await router.publish(ev("agent_started", second_run))
                await router.publish(dict(retried))
                await router.publish(dict(retried))
                await router.publish(ev("agent_completed", second_run))
                await wait_for(lambda: len(received) == 8, what="the second run")
                assert stream.duplicates == 1
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
    assert [e["seq"] for e in received] == [1, 2, 3, 4, 5, 6, 7, 9]
    assert len({e["event_id"] for e in received}) == 8
    assert [e["type"] for e in received][:5] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
    ]
    assert stream.last_seq == {thread: 9}
    assert stream.gaps == []


async def test_python_client_script_prints_events_as_json_lines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with example("starlette_app", monkeypatch, ROUTER_ADMIN_TOKEN=ADMIN) as app:
        async with Server(app.app) as server:
            thread, run = await new_run(app.router, "alice")
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(EXAMPLES / "python_client.py"),
                f"{server.ws}/ws",
                "--token",
                "token-alice",
                "--thread",
                thread,
                "--count",
                "3",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=tmp_path,
            )
            try:
                async with httpx.AsyncClient(base_url=server.http) as http:

                    async def connected() -> bool:
                        stats = await http.get(
                            "/_router/stats", headers={"authorization": f"Bearer {ADMIN}"}
                        )
                        return bool(stats.json()["connections"] == 1)

                    await wait_for(connected, timeout=20, what="the client to connect")
                for kind in ("agent_started", "agent_thinking", "progress_update"):
                    assert await app.router.publish(ev(kind, run))
                out, err = await asyncio.wait_for(process.communicate(), 30)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    assert process.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [line["seq"] for line in lines[:3]] == [1, 2, 3]
    assert lines[3] == {
        "summary": {"events": 3, "connections": 1, "duplicates_dropped": 0, "gaps": 0}
    }


# --------------------------------------------------------------------------- all of them


#: Which test module runs each example.
EXERCISED_BY = {
    "agent_in_app.py": "test_bridge_example.py",
    "agent_worker.py": "test_examples.py",
    "browser_client.js": "test_browser.py",
    "fastapi_app.py": "test_examples.py",
    "python_client.py": "test_examples.py",
    "starlette_app.py": "test_examples.py",
}


def test_every_example_is_exercised_by_a_test() -> None:
    present = {path.name for path in EXAMPLES.iterdir() if path.suffix in (".py", ".js")}
    assert present == set(EXERCISED_BY), "a new example needs a test (and a line here)"
    tests = Path(__file__).resolve().parent
    for name, test_module in EXERCISED_BY.items():
        code = (tests / test_module).read_text(encoding="utf-8")
        assert f'"{Path(name).stem}"' in code or f'"{name}"' in code, (name, test_module)
