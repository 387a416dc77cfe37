"""router.demo: the demo app over a real socket, and ``agent-router demo`` as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from router import cli
from router.demo.agent import SCENARIOS
from router.demo.app import DemoState, create_app

from .conftest import Server, recv_json, recv_until
from .helpers import frames_before_pong

pytestmark = pytest.mark.timeout(60)


def is_final(frame: dict[str, Any]) -> bool:
    return frame.get("type") in ("agent_completed", "agent_error")


class Demo:
    """A demo app served on 127.0.0.1, with clients for its users."""

    def __init__(self, server: Server, state: DemoState) -> None:
        self.server = server
        self.state = state
        self.http = httpx.AsyncClient(base_url=server.http, timeout=10)

    def token(self, user: str) -> str:
        return self.state.users[user].token

    def auth(self, user: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token(user)}"}

    @property
    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.state.admin_token}"}

    async def ws(self, user: str) -> ClientConnection:
        ws = await connect(f"{self.server.ws}/ws?token={self.token(user)}", open_timeout=10)
        assert (await recv_json(ws))["op"] == "welcome"
        return ws

    async def new_thread(self, user: str) -> str:
        response = await self.http.post("/api/threads", headers=self.auth(user), json={})
        assert response.status_code == 201, response.text
        thread_id: str = response.json()["thread_id"]
        return thread_id

    async def start_run(self, user: str, thread_id: str, scenario: str = "research") -> None:
        response = await self.http.post(
            "/api/runs",
            headers=self.auth(user),
            json={"thread_id": thread_id, "scenario": scenario},
        )
        assert response.status_code == 202, response.text


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    state = DemoState()
    async with Server(create_app(store="memory://", speed=0, state=state)) as server:
        client = Demo(server, state)
        try:
            yield client
        finally:
            await client.http.aclose()


# --------------------------------------------------------------------------- the app


async def test_page_and_static_files_are_served(demo: Demo) -> None:
    page = await demo.http.get("/")
    assert page.status_code == 200
    assert "agent-event-router" in page.text and "/static/app.js" in page.text
    assert page.headers["cache-control"] == "no-store"
    for name, kind in [("app.js", "javascript"), ("style.css", "css")]:
        response = await demo.http.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    # No CDN, no build: the page loads nothing from elsewhere.
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)


async def test_users_each_have_their_own_token(demo: Demo) -> None:
    directory = (await demo.http.get("/api/users")).json()
    users = {user["user_id"]: user["token"] for user in directory["users"]}
    assert {"alice", "bob"} <= set(users)
    assert len(set(users.values())) == len(users)
    assert directory["admin_token"] not in users.values()
    config = (await demo.http.get("/api/config", headers=demo.auth("bob"))).json()
    assert config["user"]["user_id"] == "bob"
    assert [s["name"] for s in config["scenarios"]] == list(SCENARIOS)


@pytest.mark.parametrize("path", ["/api/config", "/api/threads"])
async def test_api_needs_a_demo_token(demo: Demo, path: str) -> None:
    assert (await demo.http.get(path)).status_code == 401
    bad = {"authorization": "Bearer demo.alice.not-the-token"}
    assert (await demo.http.get(path, headers=bad)).status_code == 401


async def test_websocket_refuses_an_unknown_token(demo: Demo) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{demo.server.ws}/ws?token=demo.alice.forged", open_timeout=10)
    assert refused.value.response.status_code == 403


async def test_threads_are_listed_only_for_their_owner(demo: Demo) -> None:
    thread = await demo.new_thread("alice")
    mine = (await demo.http.get("/api/threads", headers=demo.auth("alice"))).json()["threads"]
    theirs = (await demo.http.get("/api/threads", headers=demo.auth("bob"))).json()["threads"]
    assert [t["thread_id"] for t in mine] == [thread]
    assert theirs == []
    # Bob cannot start a run in Alice's thread: it is not among his.
    response = await demo.http.post(
        "/api/runs", headers=demo.auth("bob"), json={"thread_id": thread}
    )
    assert response.status_code == 404


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_each_scenario_is_a_complete_run_seen_only_by_its_owner(
    demo: Demo, scenario: str
) -> None:
    alice, bob = await demo.ws("alice"), await demo.ws("bob")
    thread = await demo.new_thread("alice")
    await demo.start_run("alice", thread, scenario)
    frames = await recv_until(alice, is_final)
    assert await frames_before_pong(bob) == []
    await alice.close()
    await bob.close()

    types = [frame["type"] for frame in frames]
    assert [frame["seq"] for frame in frames] == list(range(1, len(frames) + 1))
    assert types[0] == "agent_started" and {f["thread_id"] for f in frames} == {thread}
    assert {frame["agent_name"] for frame in frames} == {SCENARIOS[scenario].agent_name}
    assert types.count("tool_executing") == types.count("tool_completed") >= 1
    tools = [f["payload"] for f in frames if f["type"] == "tool_completed"]
    assert all("execution_time_ms" in tool for tool in tools)
    if scenario == "failure":
        assert types[-1] == "agent_error"
        assert "calendar.write" in frames[-1]["payload"]["error"]
    else:
        assert types[-1] == "agent_completed"
        assert frames[-1]["payload"]["result"]["answer"]
    if scenario == "flaky":
        assert [tool["success"] for tool in tools].count(False) == 1


async def test_mismatch_lands_in_dead_letters_and_is_rejected_again_on_replay(
    demo: Demo,
) -> None:
    sent = (await demo.http.post("/api/mismatch", headers=demo.auth("alice"))).json()
    assert sent["event"]["run_id"] == "run_websocket_factory_1757361062151_8_1a2b3c4d"
    assert sent["event"]["thread_id"] == "thread_websocket_factory_1757361062151_7_90c65fe4"
    result = sent["result"]
    assert not result["accepted"] and result["reason"] == "thread_mismatch"
    record_id = result["dead_letter_id"]

    listed = await demo.http.get(
        "/_router/dead-letters", params={"user_id": "alice"}, headers=demo.admin
    )
    assert [item["id"] for item in listed.json()["items"]] == [record_id]
    mine_only = await demo.http.get(
        "/_router/dead-letters", params={"user_id": "bob"}, headers=demo.admin
    )
    assert mine_only.json()["items"] == []

    replay = await demo.http.post(f"/_router/dead-letters/{record_id}/replay", headers=demo.admin)
    answer = replay.json()
    assert answer["accepted"] is False and answer["reason"] == "thread_mismatch"
    assert answer["dead_letter"]["attempts"] == 2
    stats = (await demo.http.get("/_router/stats", headers=demo.admin)).json()
    assert stats["rejected"] == {"thread_mismatch": 2}


@pytest.mark.parametrize("kind", ["thread_not_found", "lifecycle_violation"])
async def test_other_bad_events_are_dead_lettered_with_their_reason(demo: Demo, kind: str) -> None:
    if kind == "lifecycle_violation":
        refused = await demo.http.post(
            "/api/bad-events", headers=demo.auth("alice"), json={"kind": kind}
        )
        assert refused.status_code == 409  # it needs one of her threads
        await demo.new_thread("alice")
    response = await demo.http.post(
        "/api/bad-events", headers=demo.auth("alice"), json={"kind": kind}
    )
    result = response.json()["result"]
    assert result["reason"] == kind and result["dead_letter_id"]


# --------------------------------------------------------------------------- the command


def test_demo_command_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--store", "--speed"):
        assert option in out


def _demo_command() -> list[str]:
    script = shutil.which("agent-router")
    return [script] if script else [sys.executable, "-m", "router"]


async def _read_url(stream: asyncio.StreamReader) -> tuple[str, list[str]]:
    lines: list[str] = []
    while True:
        line = (await stream.readline()).decode()
        if not line:
            raise AssertionError(
                "agent-router demo exited before printing its URL:\n" + "".join(lines)
            )
        lines.append(line)
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        if found:
            return found.group(), lines


@contextlib.asynccontextmanager
async def demo_process(tmp_path: Path) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    store = f"sqlite:///{tmp_path / 'dead-letters.db'}"
    process = await asyncio.create_subprocess_exec(
        *_demo_command(),
        "demo",
        "--port",
        "0",
        "--store",
        store,
        "--speed",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        url, _ = await asyncio.wait_for(_read_url(process.stdout), 30)
        yield url, process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_agent_router_demo_serves_its_page_and_websocket(tmp_path: Path) -> None:
    async with demo_process(tmp_path) as (url, process):
        base = url.rstrip("/")
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            page = await http.get("/")
            assert page.status_code == 200 and "<title>agent-event-router" in page.text
            assert (await http.get("/static/app.js")).status_code == 200
            directory = (await http.get("/api/users")).json()
            tokens = {user["user_id"]: user["token"] for user in directory["users"]}
            ws_base = base.replace("http://", "ws://")
            alice = await connect(f"{ws_base}/ws?token={tokens['alice']}", open_timeout=10)
            bob = await connect(f"{ws_base}/ws?token={tokens['bob']}", open_timeout=10)
            assert (await recv_json(alice))["user_id"] == "alice"
            assert (await recv_json(bob))["user_id"] == "bob"
            auth = {"authorization": f"Bearer {tokens['alice']}"}
            thread = (await http.post("/api/threads", headers=auth, json={})).json()["thread_id"]
            started = await http.post(
                "/api/runs", headers=auth, json={"thread_id": thread, "scenario": "research"}
            )
            assert started.status_code == 202
            frames = await recv_until(alice, is_final)
            assert frames[0]["type"] == "agent_started" and frames[-1]["type"] == "agent_completed"
            assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
            assert await frames_before_pong(bob) == []

            sent = (await http.post("/api/mismatch", headers=auth)).json()
            assert sent["result"]["reason"] == "thread_mismatch"
            admin = {"authorization": f"Bearer {directory['admin_token']}"}
            listed = (await http.get("/_router/dead-letters", headers=admin)).json()
            assert [item["reason"] for item in listed["items"]] == ["thread_mismatch"]
            await alice.close()
            await bob.close()

        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        await asyncio.wait_for(process.wait(), 30)
        errors = (await process.stderr.read()).decode()
        assert "Traceback" not in errors, errors
        # uvicorn shuts down cleanly, then the CLI reports the interrupt as 130.
        assert process.returncode == 130
    # The dead letter outlived the process, in the store it was given.
    assert (tmp_path / "dead-letters.db").exists()


async def test_agent_router_demo_says_when_the_port_is_taken(tmp_path: Path) -> None:
    async with demo_process(tmp_path) as (url, _):
        port = url.rstrip("/").rsplit(":", 1)[1]
        second = await asyncio.create_subprocess_exec(
            *_demo_command(),
            "demo",
            "--port",
            port,
            "--store",
            "memory://",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=tmp_path,
        )
        out, err = await asyncio.wait_for(second.communicate(), 30)
    assert second.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode()
    assert out == b""


def test_banner_says_what_to_try() -> None:
    from router.demo._cli import banner

    text = banner("http://127.0.0.1:8000/", "sqlite:///./agent-router.db", ["alice", "bob"])
    assert "http://127.0.0.1:8000/?user=bob" in text
    assert "mismatched" in text and "Reconnect" in text
    assert "dead-letters list --store sqlite:///./agent-router.db" in text
