"""Redis for tests: the shared server on 127.0.0.1:6379 (a key prefix per test,
cleaned up after), or a private redis-server on a free port for outage tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import need

SHARED_URL = os.environ.get("ROUTER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_reachable(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def cleanup(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def redis_url() -> str:
    need(redis_reachable(), "no Redis server on 127.0.0.1:6379")
    return SHARED_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    value = f"test:{uuid.uuid4().hex[:12]}:"
    yield value
    cleanup(redis_url, value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own on a free port, to stop, kill and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_reachable(port=self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def config(self, *args: str) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            client.execute_command("CONFIG", "SET", *args)
        finally:
            client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.kill()


class SilencingProxy:
    """A TCP proxy in front of Redis that can silence the subscriptions open right
    now: replies on those connections are dropped while the connections stay open
    (a half-open link), the failure a round-trip probe exists to catch. Connections
    made afterwards work."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: Any = None
        self.port = 0
        self._tasks: set[Any] = set()
        self._pubsub: list[dict[str, bool]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def silence(self) -> int:
        """Silence every subscription connection open now; return how many."""
        for state in self._pubsub:
            state["silent"] = True
        return len(self._pubsub)

    async def __aenter__(self) -> SilencingProxy:
        import asyncio

        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        import asyncio

        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _handle(self, reader: Any, writer: Any) -> None:
        import asyncio

        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        state = {"pubsub": False, "silent": False}

        async def pump(src: Any, dst: Any, to_client: bool) -> None:
            try:
                while data := await src.read(65536):
                    if not to_client and not state["pubsub"] and b"SUBSCRIBE" in data.upper():
                        state["pubsub"] = True
                        self._pubsub.append(state)
                    if to_client and state["silent"]:
                        continue
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        tasks = [
            asyncio.ensure_future(pump(reader, upstream_writer, False)),
            asyncio.ensure_future(pump(upstream_reader, writer, True)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)
            if state in self._pubsub:
                self._pubsub.remove(state)
