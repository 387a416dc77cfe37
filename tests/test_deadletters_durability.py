"""Dead letters survive a crash (DESIGN §7): written before publish returns, on disk.

A server process with the SQLite store rejects 100 events over HTTP, is killed with
SIGKILL (no shutdown, no flush), and a new process on the same file lists all 100
with their reasons. (Two processes writing one file at once is in test_deadletters.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from router import cli, new_run_id, new_thread_id

from .conftest import ADMIN_TOKEN
from .helpers import ev, thinking

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}

_SERVER = """
import socket, sys
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from router import EventRouter, EventRouterMiddleware

url, token = sys.argv[1], sys.argv[2]
router = EventRouter(dead_letters=url, spool_dead_letters="memory://")
app = Starlette(middleware=[Middleware(EventRouterMiddleware, router=router, admin_token=token)])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind(("127.0.0.1", 0))
sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning")).run(sockets=[sock])
"""


@contextlib.asynccontextmanager
async def server_process(url: str, log: Path) -> AsyncIterator[tuple[Process, str]]:
    """A server in a process of its own; yields it and its base URL."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log, "ab") as stderr:  # noqa: ASYNC230 - a file handle for the child
        process = await anyio.open_process(
            [sys.executable, "-c", _SERVER, url, ADMIN_TOKEN], cwd=ROOT, env=env, stderr=stderr
        )
    async with process:
        assert process.stdout is not None
        with anyio.fail_after(30):
            port = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 16)
        try:
            yield process, f"http://127.0.0.1:{int(port)}"
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.fail_after(15):
                await process.wait()


def rejections(count: int) -> list[tuple[Any, str]]:
    """``count`` events, each with the reason it must be rejected for."""
    bob_thread = new_thread_id("bob")
    kinds = [
        lambda: (ev("agent_started", new_run_id(new_thread_id("gone"))), "thread_not_found"),
        lambda: (thinking("registry"), "invalid_id"),
        lambda: (thinking(new_run_id(new_thread_id()), thread_id=bob_thread), "thread_mismatch"),
        lambda: (b"{this is not json", "malformed_event"),
    ]
    return [kinds[index % len(kinds)]() for index in range(count)]


@pytest.mark.timeout(120)
async def test_records_survive_sigkill_of_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'dead.db'}"
    log = tmp_path / "server.log"
    expected: dict[str, str] = {}  # dead-letter id -> reason
    async with server_process(url, log) as (process, base):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for event, reason in rejections(100):
                if isinstance(event, bytes):
                    response = await client.post("/_router/publish", content=event, headers=AUTH)
                else:
                    response = await client.post("/_router/publish", json=event, headers=AUTH)
                answer = response.json()
                assert response.status_code == 422, answer
                assert answer["reason"] == reason
                expected[answer["dead_letter_id"]] = reason
        # No shutdown: the process gets no chance to flush or close anything.
        process.kill()
        with anyio.fail_after(15):
            assert await process.wait() == -signal.SIGKILL
    assert len(expected) == 100

    async with server_process(url, log) as (process, base):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            response = await client.get("/_router/dead-letters?limit=1000", headers=AUTH)
            assert response.status_code == 200
            page = response.json()
            assert page["next_cursor"] is None
            assert {item["id"]: item["reason"] for item in page["items"]} == expected
            ids = [item["id"] for item in page["items"]]
            assert ids == sorted(ids, reverse=True)  # newest first
            raw = [item for item in page["items"] if item["reason"] == "malformed_event"]
            assert all(item["event"] == "{this is not json" and item["event_raw"] for item in raw)
            stats = (await client.get("/_router/stats", headers=AUTH)).json()
            assert stats["published"] == 0  # a new process: its own counters
            assert stats["dead_letters_stored"] == {
                "invalid_id": 25,
                "malformed_event": 25,
                "thread_mismatch": 25,
                "thread_not_found": 25,
            }
        # A graceful stop this time (uvicorn re-raises SIGTERM once it has shut down).
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            assert await process.wait() in (0, -signal.SIGTERM)
        assert "Traceback" not in log.read_text()

    # The command line reads the same file directly.
    argv = ["dead-letters", "list", "--store", url, "--limit", "1000", "--json"]
    code = await anyio.to_thread.run_sync(cli.main, argv)
    out, _ = capsys.readouterr()
    assert code == 0
    assert {record["id"]: record["reason"] for record in json.loads(out)} == expected
