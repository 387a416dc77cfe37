"""The bridge (DESIGN §11): run-scoped API, compatible notify_* API, mixin.

End to end: a real uvicorn server and real websockets clients (tests/conftest.py).
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import to_thread
from websockets.asyncio.client import ClientConnection

import bridge as bridge_package
from bridge import (
    AgentBridgeMixin,
    AgentWebSocketBridge,
    NotThreadOwner,
    PublishResult,
    RouterNotStarted,
    Run,
    ThreadMismatch,
)
from router import (
    EventRouter,
    InvalidId,
    extract_thread_id,
    new_run_id,
    new_thread_id,
    validate_id_pair,
)

from .conftest import recv_json, recv_until, serve, ws_connect

ROOT = Path(__file__).resolve().parents[1]

# DESIGN §0/§1: the production case that started it all.
MISMATCHED_RUN = "run_websocket_factory_1757361062151_8_1a2b3c4d"
MISMATCHED_THREAD = "thread_websocket_factory_1757361062151_7_90c65fe4"


@pytest.fixture
def router(router_factory: Callable[..., EventRouter]) -> EventRouter:
    """Not started: a test runs it with ``async with router:`` or ``serve(router)``
    (start and stop must happen in one task, which async fixtures do not give)."""
    return router_factory()


@pytest.fixture
def bridge(router: EventRouter) -> AgentWebSocketBridge:
    return AgentWebSocketBridge(router)


async def connect(server: Any, user: str) -> ClientConnection:
    ws = await ws_connect(server, user)
    welcome = await recv_json(ws)
    assert welcome["op"] == "welcome" and welcome["user_id"] == user
    return ws


def is_type(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: frame.get("type") == kind


async def thread_of(router: EventRouter, user: str) -> str:
    thread = new_thread_id("bridge_test")
    await router.threads.create(thread, user)
    return thread


async def history_of(router: EventRouter, thread_id: str) -> list[dict[str, Any]]:
    history = await router.backend.read_history(thread_id, 0)
    return [json.loads(frame) for _, frame in history.frames]


async def last_frame(router: EventRouter, thread_id: str) -> dict[str, Any]:
    return (await history_of(router, thread_id))[-1]


async def sentinel(bridge: AgentWebSocketBridge, router: EventRouter, user: str) -> Run:
    """A legitimate run of ``user``: the next frame a client of ``user`` gets, proving
    that nothing rejected before it reached the client."""
    return await bridge.start_run(
        thread_id=await thread_of(router, user), user_id=user, agent_name="sentinel"
    )


# ------------------------------------------------------------------ run-scoped, end to end


async def test_run_with_two_tools_reaches_browser_in_order(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with serve(router) as server:
        ws = await connect(server, "alice")
        thread = new_thread_id("research")
        async with bridge.run(thread_id=thread, user_id="alice", agent_name="researcher") as run:
            assert run.started
            assert await run.thinking("looking up sources", step_number=1, progress_percentage=5)
            async with run.tool("search", {"q": "sky"}) as search:
                search.result = [{"title": "Rayleigh"}]
            async with run.tool("fetch", {"url": "https://example.org"}) as fetch:
                fetch.result = {"status": 200}
            run.result = {"answer": "scattering"}
        frames = await recv_until(ws, is_type("agent_completed"))
        await ws.close()

    assert [frame["type"] for frame in frames] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "tool_executing",
        "tool_completed",
        "agent_completed",
    ]
    assert [frame["seq"] for frame in frames] == list(range(1, 8))
    for frame in frames:
        assert frame["run_id"] == run.run_id
        assert frame["thread_id"] == thread == run.thread_id
        assert frame["agent_name"] == "researcher"
        assert "user_id" not in frame
    assert validate_id_pair(run.run_id, thread) == thread
    assert frames[1]["payload"] == {
        "reasoning": "looking up sources",
        "step_number": 1,
        "progress_percentage": 5,
    }
    executing, completed = frames[2]["payload"], frames[3]["payload"]
    assert executing == {
        "tool_name": "search",
        "tool_call_id": search.tool_call_id,
        "parameters": {"q": "sky"},
    }
    assert completed["tool_name"] == "search"
    assert completed["tool_call_id"] == search.tool_call_id
    assert completed["result"] == [{"title": "Rayleigh"}]
    assert completed["success"] is True
    assert completed["execution_time_ms"] >= 0
    assert completed["execution_time_ms"] == search.execution_time_ms
    assert frames[5]["payload"]["tool_call_id"] == fetch.tool_call_id != search.tool_call_id
    final = frames[6]["payload"]
    assert final["result"] == {"answer": "scattering"}
    assert final["execution_time_ms"] >= completed["execution_time_ms"]
    assert run.finished
    assert router.stats.accepted == 7 and router.stats.published == 7


async def test_start_run_registers_a_new_thread_for_the_user(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        thread = new_thread_id()
        assert await router.threads.owner(thread) is None
        run = await bridge.start_run(thread_id=thread, user_id="alice", agent_name="a")
        assert await router.threads.owner(run.thread_id) == "alice"
        assert run.started is not None and run.started.seq == 1
        # The same user may start more runs in the thread; each gets its own run id.
        second = await bridge.start_run(thread_id=thread, user_id="alice", agent_name="a")
        assert second.run_id != run.run_id and second.started and second.started.seq == 2


async def test_start_run_refuses_a_thread_of_another_user(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with serve(router) as server:
        alice = await connect(server, "alice")
        bob = await connect(server, "bob")
        thread = await thread_of(router, "bob")
        published = router.stats.published
        with pytest.raises(NotThreadOwner) as refused:
            await bridge.start_run(thread_id=thread, user_id="alice", agent_name="intruder")
        assert refused.value.thread_id == thread
        assert refused.value.user_id == "alice" and refused.value.owner == "bob"
        assert "'alice'" in str(refused.value) and thread in str(refused.value)
        assert router.stats.published == published
        assert await router.threads.owner(thread) == "bob"
        # Nothing reached either client: the next frame each gets is its own sentinel.
        for ws, user in ((alice, "alice"), (bob, "bob")):
            marker = await sentinel(bridge, router, user)
            frame = await recv_json(ws)
            assert frame["run_id"] == marker.run_id and frame["agent_name"] == "sentinel"
            await ws.close()


async def test_start_run_with_bad_ids_raises_and_publishes_nothing(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        with pytest.raises(InvalidId):
            await bridge.start_run(
                thread_id=MISMATCHED_THREAD[:-1], user_id="alice", agent_name="a"
            )
        with pytest.raises(InvalidId):
            await bridge.start_run(thread_id=new_thread_id(), user_id="not a user", agent_name="a")
        assert router.stats.published == 0


async def test_exception_in_run_block_emits_agent_error_and_propagates(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with serve(router) as server:
        ws = await connect(server, "alice")
        thread = new_thread_id()
        with pytest.raises(ValueError, match="model refused"):
            async with bridge.run(thread_id=thread, user_id="alice", agent_name="writer") as run:
                await run.thinking("drafting")
                raise ValueError("model refused")
        frames = await recv_until(ws, is_type("agent_error"))
        await ws.close()
    assert [frame["type"] for frame in frames] == ["agent_started", "agent_thinking", "agent_error"]
    assert frames[-1]["payload"] == {
        "error": "ValueError: model refused",
        "error_context": {"type": "ValueError", "message": "model refused"},
    }
    assert frames[-1]["run_id"] == run.run_id and run.finished


async def test_exception_in_tool_block_emits_failed_tool_completed(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with serve(router) as server:
        ws = await connect(server, "alice")
        async with bridge.run(
            thread_id=new_thread_id(), user_id="alice", agent_name="agent"
        ) as run:
            with pytest.raises(KeyError):
                async with run.tool("lookup", {"key": "k"}) as call:
                    raise KeyError("k")
            assert call.success is False and call.completed
            run.result = "recovered"
        frames = await recv_until(ws, is_type("agent_completed"))
        await ws.close()
    assert [frame["type"] for frame in frames] == [
        "agent_started",
        "tool_executing",
        "tool_completed",
        "agent_completed",
    ]
    failed = frames[2]["payload"]
    assert failed["success"] is False
    assert failed["tool_call_id"] == call.tool_call_id
    assert failed["result"] == {"error": {"type": "KeyError", "message": "'k'"}}
    assert failed["execution_time_ms"] >= 0
    assert frames[3]["payload"]["result"] == "recovered"


async def test_tool_exception_propagating_out_of_run_ends_both(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        with pytest.raises(ZeroDivisionError):
            async with bridge.run(
                thread_id=new_thread_id(), user_id="alice", agent_name="a"
            ) as run:
                async with run.tool("divide"):
                    1 / 0  # noqa: B018
        frames = await history_of(router, run.thread_id)
        assert [f["type"] for f in frames] == [
            "agent_started",
            "tool_executing",
            "tool_completed",
            "agent_error",
        ]
        assert frames[2]["payload"]["success"] is False
        assert frames[3]["payload"]["error"] == "ZeroDivisionError: division by zero"
        assert router.stats.accepted == 4 and not router.stats.rejected


async def test_concurrent_calls_of_one_tool_pair_by_tool_call_id(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        first_entered, second_done = anyio.Event(), anyio.Event()
        calls: dict[str, Any] = {}

        async def slow(run: Run) -> None:
            async with run.tool("search", {"q": "slow"}) as call:
                calls["slow"] = call
                first_entered.set()
                await second_done.wait()
                call.result = "slow"

        async def fast(run: Run) -> None:
            await first_entered.wait()
            async with run.tool("search", {"q": "fast"}) as call:
                calls["fast"] = call
                call.result = "fast"
            second_done.set()

        async with bridge.run(thread_id=new_thread_id(), user_id="alice", agent_name="a") as run:
            async with anyio.create_task_group() as group:
                group.start_soon(slow, run)
                group.start_soon(fast, run)
        assert calls["slow"].tool_call_id != calls["fast"].tool_call_id
        for call in calls.values():
            assert call.executing and call.completed and call.success
        assert router.stats.accepted == 6 and not router.stats.rejected
        frames = await history_of(router, run.thread_id)
        completed = [frame["payload"] for frame in frames if frame["type"] == "tool_completed"]
        assert [(p["result"], p["tool_call_id"]) for p in completed] == [
            ("fast", calls["fast"].tool_call_id),
            ("slow", calls["slow"].tool_call_id),
        ]


async def test_cancelled_run_block_still_ends_the_run(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        with anyio.CancelScope() as scope:
            async with bridge.run(
                thread_id=new_thread_id(), user_id="alice", agent_name="a"
            ) as run:
                async with run.tool("wait"):
                    scope.cancel()
                    await anyio.sleep_forever()
        assert scope.cancelled_caught
        frames = await history_of(router, run.thread_id)
        assert [f["type"] for f in frames] == [
            "agent_started",
            "tool_executing",
            "tool_completed",
            "agent_error",
        ]
        assert frames[2]["payload"]["success"] is False
        assert frames[2]["payload"]["result"]["error"]["type"] == "CancelledError"
        assert frames[3]["payload"]["error"].startswith("CancelledError")
        assert run.finished and not router.stats.rejected


async def test_run_completed_inside_block_is_not_completed_twice(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        async with bridge.run(thread_id=new_thread_id(), user_id="alice", agent_name="a") as run:
            done = await run.completed({"early": True}, execution_time_ms=1.5)
            assert done and run.finished
        assert router.stats.accepted == 2 and not router.stats.rejected
        # Events after the end are rejected, not raised.
        late = await run.thinking("too late")
        assert not late and late.reason == "lifecycle_violation" and late.dead_letter_id


async def test_unserialisable_run_result_ends_the_run_with_agent_error(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        async with bridge.run(thread_id=new_thread_id(), user_id="alice", agent_name="a") as run:
            run.result = {"handle": object()}
        assert router.stats.rejected == {"malformed_event": 1}
        last = await last_frame(router, run.thread_id)
        assert last["type"] == "agent_error"
        assert last["payload"]["error"].startswith("agent_completed was rejected: ")
        assert last["payload"]["error_context"]["dead_letter_id"]
        assert run.finished


async def test_run_methods_return_results_and_reject_without_raising(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        run = await bridge.start_run(thread_id=new_thread_id(), user_id="alice", agent_name="a")
        assert await run.progress({"done": 1, "total": 3})
        assert await run.custom("citation", {"url": "https://example.org"})
        assert await run.tool_executing("t", {"a": 1}, tool_call_id="call-1")
        assert await run.tool_completed("t", "ok", 12.5, tool_call_id="call-1")
        orphan = await run.tool_completed("never-started")
        assert isinstance(orphan, PublishResult)
        assert not orphan and orphan.reason == "lifecycle_violation"
        bad = await run.thinking("x", progress_percentage=250)
        assert not bad and bad.reason == "malformed_event"
        ended = await run.error(RuntimeError("gave up"))
        assert ended and run.finished


async def test_run_constructed_for_a_mismatched_pair_raises_thread_mismatch(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        mine = await thread_of(router, "alice")
        other = await thread_of(router, "alice")
        with pytest.raises(ThreadMismatch) as mismatch:
            Run(bridge, run_id=new_run_id(mine), thread_id=other, agent_name="a")
        assert mismatch.value.embedded == mine and mismatch.value.thread_id == other
        with pytest.raises(ThreadMismatch) as exact:
            Run(bridge, run_id=MISMATCHED_RUN, thread_id=MISMATCHED_THREAD, agent_name="a")
        assert exact.value.embedded == "websocket_factory_1757361062151_8"
        with pytest.raises(InvalidId):
            Run(bridge, run_id=MISMATCHED_RUN, agent_name="a")
        assert router.stats.published == 0


async def test_run_constructed_for_an_existing_run_continues_it(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        thread = await thread_of(router, "alice")
        run_id = new_run_id(thread)
        assert await bridge.notify_agent_started(run_id, "worker")
        run = Run(bridge, run_id=run_id, thread_id=thread, agent_name="worker")
        assert run.started is None
        async with run.tool("step"):
            pass
        assert await run.completed()
        assert router.stats.accepted == 4 and not router.stats.rejected


async def test_stopped_router_is_misuse(router_factory: Callable[..., EventRouter]) -> None:
    router = router_factory()
    bridge = AgentWebSocketBridge(router)
    thread = new_thread_id()
    with pytest.raises(RouterNotStarted):
        await bridge.start_run(thread_id=thread, user_id="alice", agent_name="a")
    with pytest.raises(RouterNotStarted):
        await bridge.notify_agent_started(new_run_id(thread), "a")
    assert await router.threads.owner(thread) is None


# ------------------------------------------------------------------ compatible API


async def test_notify_api_reaches_browser_in_order(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with serve(router) as server:
        ws = await connect(server, "alice")
        thread = await thread_of(router, "alice")
        run_id = new_run_id(thread)
        results = [
            await bridge.notify_agent_started(run_id, "legacy", {"task": "t"}),
            await bridge.notify_agent_thinking(run_id, "legacy", "hmm", 1, 10.0),
            await bridge.notify_tool_executing(run_id, "search", parameters={"q": "x"}),
            await bridge.notify_tool_completed(run_id, "search", ["r"], execution_time_ms=3.0),
            await bridge.notify_progress_update(run_id, "legacy", {"step": 2}),
            await bridge.notify_custom(run_id, "legacy", "note", {"n": 1}),
            await bridge.notify_agent_completed(run_id, "legacy", {"ok": True}, 42.0),
        ]
        assert all(results) and [r.seq for r in results] == list(range(1, 8))
        frames = await recv_until(ws, is_type("agent_completed"))
        await ws.close()
    assert [frame["type"] for frame in frames] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "progress_update",
        "custom",
        "agent_completed",
    ]
    assert all(f["run_id"] == run_id and f["thread_id"] == thread for f in frames)
    # Tool events without an agent name get the default one.
    assert [f["agent_name"] for f in frames] == ["legacy"] * 2 + ["agent"] * 2 + ["legacy"] * 3
    assert frames[3]["payload"] == {"tool_name": "search", "result": ["r"], "execution_time_ms": 3}
    assert frames[5]["payload"] == {"notification_type": "note", "data": {"n": 1}}
    assert frames[6]["payload"] == {"result": {"ok": True}, "execution_time_ms": 42}


async def test_notify_agent_error_writes_exceptions_as_type_and_message(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        run_id = new_run_id(await thread_of(router, "alice"))
        assert await bridge.notify_agent_started(run_id, "a")
        result = await bridge.notify_agent_error(run_id, "a", TimeoutError("slow"), {"retry": 2})
        assert result
        frame = await last_frame(router, extract_thread_id(run_id))
        assert frame["payload"] == {"error": "TimeoutError: slow", "error_context": {"retry": 2}}


async def test_notify_with_bad_run_ids_is_dead_lettered_and_reaches_nobody(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with serve(router) as server:
        alice = await connect(server, "alice")
        await thread_of(router, "alice")
        # 1. The production run id: its embedded thread is not canonical.
        invalid = await bridge.notify_agent_started(MISMATCHED_RUN, "a")
        # 2. A canonical run id minted for a thread nobody stored.
        unknown_thread = new_thread_id()
        not_found = await bridge.notify_agent_thinking(new_run_id(unknown_thread), "a", "x")
        # 3. Not a run id at all, and a missing one.
        garbage = await bridge.notify_custom("registry", "a", "n", None)
        missing = await bridge.notify_agent_completed(None, "a")  # type: ignore[arg-type]
        outcomes = [invalid, not_found, garbage, missing]
        assert not any(outcomes)
        assert [o.reason for o in outcomes] == [
            "invalid_id",
            "thread_not_found",
            "invalid_id",
            "invalid_id",
        ]
        for outcome in outcomes:
            assert outcome.dead_letter_id and outcome.seq is None
            record = await router.dead_letters.get(outcome.dead_letter_id)
            assert record is not None and record.reason == outcome.reason
        record = await router.dead_letters.get(invalid.dead_letter_id or "")
        assert record is not None and record.run_id == MISMATCHED_RUN
        assert "websocket_factory_1757361062151_8" in record.detail
        record = await router.dead_letters.get(not_found.dead_letter_id or "")
        assert record is not None and record.thread_id == unknown_thread
        assert unknown_thread in record.detail
        assert router.stats.rejected == {"invalid_id": 3, "thread_not_found": 1}
        marker = await sentinel(bridge, router, "alice")
        frame = await recv_json(alice)
        assert frame["run_id"] == marker.run_id
        await alice.close()


async def test_notify_with_a_run_id_that_embeds_another_thread_is_a_thread_mismatch(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with serve(router) as server:
        alice = await connect(server, "alice")
        mine = await thread_of(router, "alice")
        other = await thread_of(router, "alice")
        # Legacy code holding both ids: its run id was minted for another thread.
        run_id = new_run_id(other)
        started = await bridge.notify_agent_started(run_id, "a", thread_id=mine)
        thinking = await bridge.notify_agent_thinking(run_id, "a", "x", thread_id=mine)
        custom = await to_thread.run_sync(
            lambda: bridge.sync.notify_custom(run_id, "a", "note", {"n": 1}, thread_id=mine)
        )
        for result in (started, thinking, custom):
            assert not result and result.reason == "thread_mismatch" and result.seq is None
            record = await router.dead_letters.get(result.dead_letter_id or "")
            assert record is not None and record.reason == "thread_mismatch"
            assert run_id in record.detail and mine in record.detail
        assert router.stats.rejected == {"thread_mismatch": 3}
        # The same call naming the right thread goes through.
        assert await bridge.notify_agent_started(run_id, "a", thread_id=other)
        frame = await recv_json(alice)
        assert frame["type"] == "agent_started" and frame["thread_id"] == other
        marker = await sentinel(bridge, router, "alice")
        frame = await recv_json(alice)
        assert frame["run_id"] == marker.run_id  # nothing rejected came before
        await alice.close()


async def test_thread_mismatch_pair_through_router_is_dead_lettered(
    router: EventRouter,
) -> None:
    async with router:
        with pytest.raises(ThreadMismatch) as mismatch:
            validate_id_pair(MISMATCHED_RUN, MISMATCHED_THREAD)
        assert mismatch.value.embedded == "websocket_factory_1757361062151_8"
        result = await router.publish(
            {
                "type": "agent_started",
                "run_id": MISMATCHED_RUN,
                "thread_id": MISMATCHED_THREAD,
                "agent_name": "a",
            }
        )
        assert not result and result.reason == "thread_mismatch"
        record = await router.dead_letters.get(result.dead_letter_id or "")
        assert record is not None and record.reason == "thread_mismatch"
        assert MISMATCHED_RUN in record.detail and MISMATCHED_THREAD in record.detail
        assert "websocket_factory_1757361062151_8" in record.detail


async def test_run_events_carry_the_thread_for_the_routers_pair_check(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        # A Run's events name its thread as well as its run: the router checks the pair
        # with validate_id_pair. Forcing a wrong thread onto a Run shows the check runs.
        run = await bridge.start_run(thread_id=new_thread_id(), user_id="alice", agent_name="a")
        other = await thread_of(router, "alice")
        run.thread_id = other  # type: ignore[assignment]
        result = await run.thinking("misrouted")
        assert not result and result.reason == "thread_mismatch"
        record = await router.dead_letters.get(result.dead_letter_id or "")
        assert record is not None and other in record.detail and run.run_id in record.detail


async def test_notify_lifecycle_violations_are_results_not_exceptions(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with router:
        run_id = new_run_id(await thread_of(router, "alice"))
        early = await bridge.notify_tool_completed(run_id, "search")
        assert not early and early.reason == "lifecycle_violation"
        assert await bridge.notify_agent_started(run_id, "a")
        again = await bridge.notify_agent_started(run_id, "a")
        assert not again and again.reason == "lifecycle_violation"


# ------------------------------------------------------------------ mixin


class PlannerAgent(AgentBridgeMixin):
    agent_name = "planner"


class NamelessAgent(AgentBridgeMixin):
    pass


async def test_mixin_without_bridge_is_a_no_op_that_warns_once_per_agent(
    router: EventRouter, caplog: pytest.LogCaptureFixture
) -> None:
    async with router:
        first, second = PlannerAgent(), NamelessAgent()
        caplog.set_level(logging.WARNING, logger="bridge")
        results = [
            await first.emit_agent_started(),
            await first.emit_thinking("x"),
            await first.emit_tool_executing("t"),
            await first.emit_tool_completed("t"),
            await first.emit_progress({"p": 1}),
            await first.emit_error("e"),
            await first.emit_agent_completed(),
            await second.emit_thinking("y"),
            await second.emit_thinking("z"),
        ]
        assert not any(results)
        assert {r.reason for r in results} == {"no_bridge"}
        assert all(r.dead_letter_id is None and r.seq is None for r in results)
        warnings = [
            r for r in caplog.records if r.name == "bridge" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 2
        assert "'planner'" in warnings[0].getMessage()
        assert "'NamelessAgent'" in warnings[1].getMessage()
        assert "set_websocket_bridge" in warnings[0].getMessage()
        assert router.stats.published == 0


async def test_mixin_with_bridge_publishes_through_it(
    router: EventRouter, bridge: AgentWebSocketBridge
) -> None:
    async with serve(router) as server:
        ws = await connect(server, "alice")
        thread = await thread_of(router, "alice")
        agent = PlannerAgent()
        agent.set_websocket_bridge(bridge, new_run_id(thread))
        assert agent.has_websocket_bridge
        assert await agent.emit_agent_started({"goal": "plan"})
        assert await agent.emit_thinking("step one", step_number=1)
        assert await agent.emit_tool_executing("calendar", {"day": "mon"})
        assert await agent.emit_tool_completed("calendar", {"free": True}, 2.0)
        assert await agent.emit_progress({"percentage": 50})
        assert await agent.emit_custom("note", "hi")
        assert await agent.emit_agent_completed({"plan": "done"})
        frames = await recv_until(ws, is_type("agent_completed"))
        await ws.close()
    assert len(frames) == 7 and {f["agent_name"] for f in frames} == {"planner"}
    agent.set_websocket_bridge(None, None)
    assert not agent.has_websocket_bridge and not await agent.emit_thinking("detached")


async def test_mixin_error_after_start(router: EventRouter, bridge: AgentWebSocketBridge) -> None:
    async with router:
        agent = NamelessAgent()
        agent.set_websocket_bridge(bridge, new_run_id(await thread_of(router, "alice")))
        assert await agent.emit_agent_started()
        assert await agent.emit_error(ValueError("bad plan"), {"step": 3})
        assert not await agent.emit_thinking("after the end")


# ------------------------------------------------------------------ package surface


def test_all_is_sorted_and_complete() -> None:
    names = bridge_package.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(bridge_package, name) is not None
    expected = {
        "AgentBridgeMixin",
        "AgentWebSocketBridge",
        "Run",
        "ToolCall",
        "SyncBridge",
        "SyncRun",
        "NotThreadOwner",
        "PublishResult",
        "to_jsonable",
    }
    assert expected <= set(names)
    for path in sorted((ROOT / "bridge").glob("_*.py")):
        module = ast.parse(path.read_text())
        for node in module.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                if node.name not in ("LoopPortal",):
                    assert node.name in names, f"{node.name} of {path.name} not exported"
