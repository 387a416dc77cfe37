"""Thread ownership through ``owner_of`` and its cache; run lifecycle memory bounds."""

from __future__ import annotations

from typing import Any

import pytest

from router import EventRouter, new_run_id, new_thread_id
from router.lifecycle import RunLifecycle

from .helpers import ev, thinking


class Clock:
    """A monotonic clock the test moves by hand (patched in at the edge)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import router.lifecycle
    import router.threads

    fake = Clock()
    monkeypatch.setattr(router.threads.time, "monotonic", fake)
    monkeypatch.setattr(router.lifecycle.time, "monotonic", fake)
    return fake


async def test_owner_of_decides_ownership_and_is_cached(clock: Clock) -> None:
    owners = {new_thread_id("app"): "alice", new_thread_id("app"): "bob"}
    calls: list[str] = []

    async def owner_of(thread_id: str) -> str | None:
        calls.append(thread_id)
        return owners.get(thread_id)

    router = EventRouter(dead_letters="memory://", owner_of=owner_of, owner_cache_ttl=5.0)
    async with router:
        alice_thread, bob_thread = list(owners)
        run = new_run_id(alice_thread)
        assert await router.publish(ev("agent_started", run, user_id="alice"))
        assert await router.publish(thinking(run))
        assert calls == [alice_thread]  # the second lookup came from the cache
        refused = await router.publish(ev("agent_started", new_run_id(bob_thread), user_id="alice"))
        assert refused.reason == "not_owner"
        unknown = await router.publish(ev("agent_started", new_run_id(new_thread_id())))
        assert unknown.reason == "thread_not_found"
        # Past the TTL the application is asked again.
        clock.now += 6
        assert await router.publish(thinking(run))
        assert calls.count(alice_thread) == 2


async def test_sync_owner_of_works_too() -> None:
    thread = new_thread_id("app")
    router = EventRouter(dead_letters="memory://", owner_of=lambda t: "carol")
    async with router:
        assert await router.publish(ev("agent_started", new_run_id(thread), user_id="carol"))


async def test_owner_of_failure_is_a_dead_letter_and_holds_up_nobody() -> None:
    good = new_thread_id("app")
    broken = new_thread_id("app")

    async def owner_of(thread_id: str) -> Any:
        if thread_id == broken:
            raise ConnectionError("thread database is down")
        if thread_id == good:
            return "alice"
        return None

    router = EventRouter(dead_letters="memory://", owner_of=owner_of)
    async with router:
        failed = await router.publish(ev("agent_started", new_run_id(broken)))
        assert not failed and failed.reason == "backend_unavailable"
        assert failed.detail is not None and "thread database is down" in failed.detail
        record = await router.dead_letters.get(failed.dead_letter_id or "")
        assert record is not None and record.reason == "backend_unavailable"
        # Other threads are not held behind it.
        run = new_run_id(good)
        assert await router.publish(ev("agent_started", run))
        for n in range(20):
            assert await router.publish(thinking(run, str(n)))
        stats = router.snapshot()
        assert stats["published"] == stats["accepted"] + sum(stats["rejected"].values())
        assert stats["spool_pending"] == 0


async def test_owner_of_answering_a_bad_user_id_is_a_dead_letter() -> None:
    router = EventRouter(dead_letters="memory://", owner_of=lambda t: "not a user id!")
    async with router:
        result = await router.publish(ev("agent_started", new_run_id(new_thread_id())))
        assert result.reason == "backend_unavailable"
        assert result.detail is not None and "not a user id" in result.detail
        stats = router.snapshot()
        assert stats["published"] == stats["accepted"] + sum(stats["rejected"].values())


async def test_create_and_delete_invalidate_the_cache(clock: Clock) -> None:
    thread = new_thread_id("app")
    answers = {"owner": "alice"}

    router = EventRouter(dead_letters="memory://", owner_of=lambda t: answers["owner"])
    async with router:
        assert await router.threads.owner(thread) == "alice"
        answers["owner"] = "bob"
        assert await router.threads.owner(thread) == "alice"  # cached
        await router.threads.delete(thread)
        assert await router.threads.owner(thread) == "bob"  # asked again at once


def test_finished_runs_are_forgotten_after_run_ttl(clock: Clock) -> None:
    lifecycle = RunLifecycle(finished_ttl=60.0)
    for n in range(100):
        run = f"r{n}"
        assert lifecycle.advance(run, "agent_started", None) is None
        assert lifecycle.advance(run, "agent_completed", None) is None
    assert len(lifecycle) == 100
    assert lifecycle.advance("r0", "agent_thinking", None) is not None  # still remembered
    clock.now += 61
    lifecycle.advance("new", "agent_started", None)
    lifecycle.advance("new", "agent_completed", None)  # a finish sweeps expired runs
    assert len(lifecycle) == 1


def test_unfinished_runs_are_bounded_least_recently_active_first(clock: Clock) -> None:
    lifecycle = RunLifecycle(max_runs=10)
    for n in range(10):
        assert lifecycle.advance(f"r{n}", "agent_started", None) is None
    assert lifecycle.advance("r0", "agent_thinking", None) is None  # r0 is active again
    assert lifecycle.advance("r10", "agent_started", None) is None
    assert len(lifecycle) == 10
    # r1 was the least recently active: forgotten, so its next event is a violation.
    assert lifecycle.advance("r1", "agent_thinking", None) is not None
    assert lifecycle.advance("r0", "agent_thinking", None) is None
