from __future__ import annotations

import httpx

from router import new_run_id, new_thread_id

from .conftest import ADMIN_TOKEN, recv_json, serve, ws_connect


async def test_event_reaches_owner_over_real_socket(router_factory) -> None:
    router = router_factory()
    async with serve(router) as server:
        ws = await ws_connect(server, "alice")
        welcome = await recv_json(ws)
        assert welcome["op"] == "welcome" and welcome["user_id"] == "alice"
        thread = new_thread_id()
        await router.threads.create(thread, "alice")
        run = new_run_id(thread)
        result = await router.publish({"type": "agent_started", "run_id": run, "agent_name": "a"})
        assert result.seq == 1
        frame = await recv_json(ws)
        assert (
            frame["type"] == "agent_started" and frame["seq"] == 1 and frame["thread_id"] == thread
        )
        async with httpx.AsyncClient(base_url=server.http) as client:
            stats = (
                await client.get(
                    "/_router/stats", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
                )
            ).json()
            assert stats["connections"] == 1 and stats["accepted"] == 1
            assert (await client.get("/hello")).text == "hello from the app"
        await ws.close()
