"""Accounting (DESIGN §10): nothing is lost silently.

Every published event is accepted (it has a seq, it is in history, it reached the
owner's live connections) or rejected (it has a dead-letter record), and
``published == accepted + sum(rejected)``, replays included.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import httpx

from router import EventRouter, new_run_id, new_thread_id

from .conftest import ADMIN_TOKEN, recv_json, serve, ws_connect
from .helpers import (
    all_dead_letters,
    count_by_reason,
    ev,
    frames_before_pong,
    is_event,
    new_thread,
    thinking,
)

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


class Mix:
    """Alice (connected) with an open run; carol (never connected)."""

    def __init__(self, alice_thread: str, carol_thread: str, bob_thread: str) -> None:
        self.alice_thread = alice_thread
        self.carol_thread = carol_thread
        self.bob_thread = bob_thread
        self.alice_run = new_run_id(alice_thread)

    def kinds(self) -> dict[str, Callable[[], tuple[Any, str | None]]]:
        """Event makers, each with the reason it must get (None: accepted)."""
        a_run = self.alice_run
        return {
            "ok": lambda: (thinking(a_run), None),
            "ok_progress": lambda: (ev("progress_update", a_run), None),
            "no_recipient": self._no_recipient,
            "malformed_shape": lambda: (
                {"type": "agent_thinking", "run_id": a_run},
                "malformed_event",
            ),
            "malformed_text": lambda: (b"{not json", "malformed_event"),
            "invalid_id": lambda: (thinking("registry"), "invalid_id"),
            "null_run": lambda: (thinking(None), "invalid_id"),
            "mismatch": lambda: (thinking(a_run, thread_id=self.bob_thread), "thread_mismatch"),
            "not_found": lambda: (
                ev("agent_started", new_run_id(new_thread_id("gone"))),
                "thread_not_found",
            ),
            "not_owner": lambda: (thinking(a_run, user_id="bob"), "not_owner"),
            "not_started": lambda: (thinking(new_run_id(self.alice_thread)), "lifecycle_violation"),
            "tool": lambda: (ev("tool_completed", a_run), "lifecycle_violation"),
        }

    def _no_recipient(self) -> tuple[Any, str | None]:
        # A whole short run of carol's: started, then completed with nobody listening.
        self.pending_carol = new_run_id(self.carol_thread)
        return ev("agent_started", self.pending_carol), None


async def test_published_equals_accepted_plus_rejected_and_every_rejection_has_a_record(
    router_factory: Any,
) -> None:
    rng = random.Random(7)
    router: EventRouter = router_factory()
    async with serve(router) as server, httpx.AsyncClient(base_url=server.http) as client:
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            mix = Mix(
                await new_thread(router, "alice"),
                await new_thread(router, "carol"),
                await new_thread(router, "bob"),
            )
            assert await router.publish(ev("agent_started", mix.alice_run))
            accepted_ids = []
            rejections: list[tuple[str, str]] = []  # (reason, dead letter id)
            no_recipient_ids = []
            kinds = mix.kinds()
            plan = [name for name in kinds for _ in range(5)]
            rng.shuffle(plan)

            async def publish(event: Any, over_http: bool) -> dict[str, Any]:
                if not over_http:
                    return (await router.publish(event)).to_dict()
                if isinstance(event, bytes):
                    response = await client.post("/_router/publish", content=event, headers=AUTH)
                else:
                    response = await client.post("/_router/publish", json=event, headers=AUTH)
                return response.json()

            for index, name in enumerate(plan):
                event, reason = kinds[name]()
                result = await publish(event, over_http=index % 2 == 1)
                assert result["reason"] == reason, (name, result)
                if reason is None:
                    assert result["accepted"] and result["seq"] is not None
                    if name == "ok" or name == "ok_progress":
                        accepted_ids.append(result["event_id"])
                    else:
                        final = await publish(ev("agent_completed", mix.pending_carol), True)
                        assert final["accepted"] and final["dead_letter_id"]
                        no_recipient_ids.append(final["dead_letter_id"])
                else:
                    assert not result["accepted"] and result["dead_letter_id"]
                    rejections.append((reason, result["dead_letter_id"]))

            stats = router.stats
            rejected_total = sum(stats.rejected.values())
            assert stats.published == 1 + len(plan) + len(no_recipient_ids)
            assert stats.published == stats.accepted + rejected_total
            assert rejected_total == len(rejections)

            # Every rejection has its record, with its reason.
            for reason, record_id in rejections:
                record = await router.dead_letters.get(record_id)
                assert record is not None and record.reason == reason
            records = await all_dead_letters(router.dead_letters)
            by_reason = count_by_reason(records)
            no_recipient = by_reason.pop("no_recipient", 0)
            assert by_reason == stats.rejected
            assert no_recipient == len(no_recipient_ids) == stats.dead_letters["no_recipient"]
            assert {**by_reason, "no_recipient": no_recipient} == stats.dead_letters
            assert await router.dead_letters.counts() == stats.dead_letters

            # Alice received exactly the accepted events of her thread, in order.
            frames = await frames_before_pong(ws)
            events = [f for f in frames if is_event(f)]
            assert [f["event_id"] for f in events[1:]] == accepted_ids
            assert [f["seq"] for f in events] == list(range(1, len(accepted_ids) + 2))

            # The same figures over HTTP.
            figures = (await client.get("/_router/stats", headers=AUTH)).json()
            assert figures["published"] == stats.published
            assert figures["accepted"] == stats.accepted
            assert figures["rejected"] == stats.rejected
            assert figures["dead_letters"] == stats.dead_letters
            assert figures["published"] == figures["accepted"] + sum(figures["rejected"].values())
            assert figures["connections"] == 1
        finally:
            await ws.close()


async def test_replays_count_as_publishes(router_factory: Any) -> None:
    router: EventRouter = router_factory()
    async with router:
        thread = new_thread_id("later")
        run = new_run_id(thread)
        lost = await router.publish(ev("agent_started", run))  # thread not created yet
        stuck = await router.publish(thinking("registry"))
        assert lost.reason == "thread_not_found" and stuck.reason == "invalid_id"

        await router.threads.create(thread, "alice")
        again = await router.replay(lost.dead_letter_id)
        assert again.accepted and again.seq == 1 and again.event_id == lost.event_id
        assert await router.dead_letters.get(lost.dead_letter_id) is None

        still = await router.replay(stuck.dead_letter_id)
        assert not still.accepted and still.reason == "invalid_id"
        record = await router.dead_letters.get(stuck.dead_letter_id)
        assert record is not None and record.attempts == 2

        stats = router.stats
        assert stats.published == 4
        assert stats.accepted == 1
        assert stats.rejected == {"thread_not_found": 1, "invalid_id": 2}
        assert stats.published == stats.accepted + sum(stats.rejected.values())
        assert await router.dead_letters.counts() == {"invalid_id": 1}
