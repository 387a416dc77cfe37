"""How to serve the router with uvicorn: the settings the README recommends.

    uvicorn.run(app, host="127.0.0.1", port=8000, **uvicorn_settings())

- ``ws="websockets-sansio"``: send-side flow control, so a client that stops
  reading fills its own outbox and is closed with 1013 without slowing anyone;
- ``ws_max_size`` equal to the client frame limit (4 KiB): larger frames are
  refused by the server itself with 1009 (the middleware enforces it too);
- ``ws_per_message_deflate=False``: frames are small, compressing each costs CPU
  on the hot path;
- heartbeats: ASGI cannot send protocol-level pings, so the server does: a ping
  every 20 s, and a peer that has not answered 40 s later (60 s of silence in
  all) is dropped.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PING_INTERVAL", "PING_TIMEOUT", "uvicorn_settings"]

PING_INTERVAL = 20.0
PING_TIMEOUT = 40.0


def uvicorn_settings(*, max_frame_bytes: int = 4096) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config``."""
    return {
        "ws": "websockets-sansio",
        "ws_max_size": max_frame_bytes,
        "ws_per_message_deflate": False,
        "ws_ping_interval": PING_INTERVAL,
        "ws_ping_timeout": PING_TIMEOUT,
    }
