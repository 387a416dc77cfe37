"""The admin API end to end: a real server on 127.0.0.1, a real WebSocket client."""

from __future__ import annotations

from pathlib import Path

import httpx

from router import EventRouter, new_run_id, new_thread_id

from .conftest import ADMIN_TOKEN, recv_json, serve, ws_connect
from .helpers import ev, frames_before_pong, is_event, thinking

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_bulk_replay_after_the_cause_is_fixed_delivers_in_order_and_clears_the_records(
    tmp_path: Path,
) -> None:
    router = EventRouter(
        dead_letters=f"sqlite:///{tmp_path / 'dead.db'}", spool_dead_letters="memory://"
    )
    async with serve(router) as server, httpx.AsyncClient(base_url=server.http) as client:
        # An agent publishes a whole run to a thread the app has not stored yet.
        thread = new_thread_id("late")
        run = new_run_id(thread)
        events = [
            ev("agent_started", run),
            thinking(run, "one"),
            ev("tool_executing", run),
            ev("tool_completed", run),
            ev("agent_completed", run),
        ]
        event_ids = []
        for event in events:
            answer = (await client.post("/_router/publish", json=event, headers=AUTH)).json()
            assert answer["reason"] == "thread_not_found"
            event_ids.append(answer["event_id"])
        unrelated = await router.publish(thinking("registry"))

        # The cause is fixed: the thread is stored for alice, who is connected.
        await router.threads.create(thread, "alice")
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            response = await client.post(
                "/_router/dead-letters/replay",
                json={"reason": "thread_not_found", "dry_run": False, "max": 100},
                headers=AUTH,
            )
            assert response.status_code == 200
            assert response.json() == {"matched": 5, "accepted": 5, "rejected": 0, "skipped": 0}

            frames = [frame for frame in await frames_before_pong(ws) if is_event(frame)]
            assert [frame["event_id"] for frame in frames] == event_ids
            assert [frame["seq"] for frame in frames] == [1, 2, 3, 4, 5]
            assert [frame["type"] for frame in frames] == [event["type"] for event in events]

            left = (await client.get("/_router/dead-letters", headers=AUTH)).json()
            assert [item["id"] for item in left["items"]] == [unrelated.dead_letter_id]

            # The lookup now says where the last one went.
            lookup = await client.get(f"/_router/events/{event_ids[-1]}", headers=AUTH)
            assert lookup.json()["accepted"] == {
                "thread_id": thread,
                "seq": 5,
                "delivered_to": 1,
                "owner_connected": True,
                "in_history": True,
            }
            stats = (await client.get("/_router/stats", headers=AUTH)).json()
            assert stats["published"] == 11  # 5 rejected + 1 + 5 replays
            assert stats["accepted"] == 5
            assert stats["rejected"] == {"thread_not_found": 5, "invalid_id": 1}
            assert stats["dead_letters_stored"] == {"invalid_id": 1}
        finally:
            await ws.close()
