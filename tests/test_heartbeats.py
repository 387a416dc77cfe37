"""Server heartbeats: a peer that stops answering pings is dropped."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import pytest

from router.serving import PING_INTERVAL, PING_TIMEOUT, uvicorn_settings

from .conftest import serve, wait_for


def test_recommended_settings_drop_a_peer_silent_for_60_seconds() -> None:
    settings = uvicorn_settings()
    assert settings["ws"] == "websockets-sansio"
    assert settings["ws_max_size"] == 4096
    assert settings["ws_per_message_deflate"] is False
    assert PING_INTERVAL == 20 and PING_INTERVAL + PING_TIMEOUT == 60


@pytest.mark.timeout(30)
async def test_peer_that_never_answers_pings_is_dropped(router_factory: Any) -> None:
    router = router_factory()
    config = {**uvicorn_settings(), "ws_ping_interval": 0.2, "ws_ping_timeout": 0.3}
    async with serve(router, server_config=config) as server:
        # A raw client: it completes the handshake, then reads nothing and answers
        # no ping, as a vanished laptop would.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /ws?token=tok-alice HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        assert b" 101 " in status
        try:
            await wait_for(lambda: len(router.hub) == 1, 10, "the connection to register")
            await wait_for(lambda: len(router.hub) == 0, 10, "the silent peer to be dropped")
        finally:
            writer.close()
