"""The bridge's synchronous twin (DESIGN §11): ``bridge.sync`` and ``run.sync`` from
worker threads, with the router's event loop running."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

from bridge import AgentWebSocketBridge, NotThreadOwner, PublishResult, RouterNotStarted
from router import EventRouter, new_run_id, new_thread_id

from .conftest import recv_json, serve, ws_connect

WORKERS = 8
STEPS = 5


class Worker(threading.Thread):
    """A plain thread (not an anyio worker) that records what it raised."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._work = target
        self.error: BaseException | None = None
        self.value: Any = None

    def run(self) -> None:
        try:
            self.value = self._work()
        except BaseException as exc:
            self.error = exc

    async def finish(self) -> Any:
        await anyio.to_thread.run_sync(self.join)
        if self.error is not None:
            raise self.error
        return self.value


async def collect(ws: Any, runs: int) -> list[dict[str, Any]]:
    """Event frames until ``runs`` runs have ended."""
    frames: list[dict[str, Any]] = []
    ended = 0
    while ended < runs:
        frame = await recv_json(ws)
        if "op" in frame:
            continue
        frames.append(frame)
        ended += frame["type"] in ("agent_completed", "agent_error")
    return frames


def expected_types() -> list[str]:
    middle = ["agent_thinking", "tool_executing", "tool_completed"] * STEPS
    return ["agent_started", *middle, "progress_update", "agent_completed"]


async def test_eight_worker_threads_publish_in_order_and_lose_nothing(
    router_factory: Callable[..., EventRouter],
) -> None:
    router = router_factory()
    async with serve(router) as server:
        bridge = AgentWebSocketBridge(router)  # created in the loop: it captures the token
        clients = {user: await ws_connect(server, user) for user in ("alice", "bob")}
        for ws in clients.values():
            assert (await recv_json(ws))["op"] == "welcome"
        barrier = threading.Barrier(WORKERS)

        def agent(index: int) -> str:
            user = "alice" if index % 2 else "bob"
            barrier.wait(timeout=30)  # all eight publish at once
            run = bridge.sync.start_run(
                thread_id=new_thread_id("worker"), user_id=user, agent_name=f"worker-{index}"
            )
            assert run.started
            for step in range(STEPS):
                assert run.sync.thinking(f"step {step}", step_number=step)
                with run.sync.tool("compute", {"step": step}) as call:
                    call.result = index * 100 + step
                assert call.completed and call.success
            assert run.sync.progress({"done": STEPS})
            assert run.sync.completed({"worker": index})
            return run.run_id

        workers = [Worker(lambda index=index: agent(index)) for index in range(WORKERS)]
        for worker in workers:
            worker.start()
        run_ids = [await worker.finish() for worker in workers]
        received = {user: await collect(ws, WORKERS // 2) for user, ws in clients.items()}
        for ws in clients.values():
            await ws.close()

    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for user, frames in received.items():
        for frame in frames:
            by_run[frame["run_id"]].append(frame)
            index = int(frame["agent_name"].split("-")[1])
            assert ("alice" if index % 2 else "bob") == user
    assert sorted(by_run) == sorted(run_ids)
    for frames in by_run.values():
        assert [frame["type"] for frame in frames] == expected_types()
        assert [frame["seq"] for frame in frames] == list(range(1, len(frames) + 1))
        assert len({frame["thread_id"] for frame in frames}) == 1
        index = int(frames[0]["agent_name"].split("-")[1])
        results = [f["payload"]["result"] for f in frames if f["type"] == "tool_completed"]
        assert results == [index * 100 + step for step in range(STEPS)]
        steps = [f["payload"]["step_number"] for f in frames if f["type"] == "agent_thinking"]
        assert steps == list(range(STEPS))
    total = WORKERS * len(expected_types())
    assert router.stats.accepted == total and router.stats.published == total
    assert not router.stats.rejected


async def test_one_run_used_from_several_threads_keeps_each_threads_order(
    router_factory: Callable[..., EventRouter],
) -> None:
    router = router_factory()
    async with router:
        bridge = AgentWebSocketBridge(router)
        run = await bridge.start_run(thread_id=new_thread_id(), user_id="alice", agent_name="a")
        barrier = threading.Barrier(4)

        def emit(worker: int) -> None:
            barrier.wait(timeout=30)
            for n in range(25):
                assert run.sync.custom("tick", {"worker": worker, "n": n})
            with run.sync.tool("fetch", {"worker": worker}) as call:
                call.result = worker

        def legacy(worker: int) -> None:
            # The compatible API of the same run from other threads, by run id.
            barrier.wait(timeout=30)
            for n in range(25):
                assert bridge.sync.notify_custom(
                    run.run_id, "legacy", "tick", {"worker": worker, "n": n}
                )

        threads = [Worker(lambda w=w: emit(w)) for w in (0, 1)]
        threads += [Worker(lambda w=w: legacy(w)) for w in (2, 3)]
        for worker in threads:
            worker.start()
        for worker in threads:
            await worker.finish()
        assert await run.completed()
        history = await router.backend.read_history(run.thread_id, 0)
    frames = [json.loads(frame) for _, frame in history.frames]
    assert [frame["seq"] for frame in frames] == list(range(1, 4 * 25 + 2 * 2 + 3))
    seen: dict[int, list[int]] = defaultdict(list)
    for frame in frames:
        if frame["type"] == "custom":
            seen[frame["payload"]["data"]["worker"]].append(frame["payload"]["data"]["n"])
    assert {worker: ns for worker, ns in seen.items()} == {w: list(range(25)) for w in range(4)}
    assert frames[-1]["type"] == "agent_completed"
    assert not router.stats.rejected


async def test_sync_api_from_the_event_loop_raises_instead_of_deadlocking(
    router_factory: Callable[..., EventRouter],
) -> None:
    router = router_factory()
    async with router:
        bridge = AgentWebSocketBridge(router)
        run = await bridge.start_run(thread_id=new_thread_id(), user_id="alice", agent_name="a")
        published = router.stats.published
        with pytest.raises(RuntimeError, match="inside a running event loop"):
            bridge.sync.notify_agent_thinking(run.run_id, "a", "blocked")
        with pytest.raises(RuntimeError, match="await the async method"):
            run.sync.thinking("blocked")
        with pytest.raises(RuntimeError, match=r"run\.sync\.tool"):
            with run.sync.tool("t"):
                pass  # pragma: no cover
        with pytest.raises(RuntimeError, match=r"bridge\.sync\.start_run"):
            bridge.sync.start_run(thread_id=new_thread_id(), user_id="alice", agent_name="a")
        assert router.stats.published == published


async def test_sync_api_before_the_bridge_has_seen_its_loop(
    router_factory: Callable[..., EventRouter],
) -> None:
    router = router_factory()
    async with router:
        thread = new_thread_id()
        await router.threads.create(thread, "alice")
        run_id = new_run_id(thread)
        # Built outside any event loop, used from a plain thread: no way back to the loop.
        bridge = await anyio.to_thread.run_sync(AgentWebSocketBridge, router)
        plain = Worker(lambda: bridge.sync.notify_agent_started(run_id, "a"))
        plain.start()
        with pytest.raises(RuntimeError, match="has not seen it yet"):
            await plain.finish()
        # An anyio worker thread knows its loop without the token.
        started = await anyio.to_thread.run_sync(bridge.sync.notify_agent_started, run_id, "a")
        assert started
        # Once the bridge has been used in the loop, plain threads work too.
        assert await bridge.notify_agent_thinking(run_id, "a", "in the loop")
        plain = Worker(lambda: bridge.sync.notify_agent_completed(run_id, "a", "done"))
        plain.start()
        assert await plain.finish()


async def test_sync_rejections_are_results_and_misuse_raises_in_the_thread(
    router_factory: Callable[..., EventRouter],
) -> None:
    router = router_factory()
    async with router:
        bridge = AgentWebSocketBridge(router)
        owned_by_bob = new_thread_id()
        await router.threads.create(owned_by_bob, "bob")

        def work() -> list[PublishResult]:
            results = [
                bridge.sync.notify_agent_started(
                    "run_websocket_factory_1757361062151_8_1a2b3c4d", "a"
                ),
                bridge.sync.notify_tool_completed(new_run_id(owned_by_bob), "search"),
                bridge.sync.notify_progress_update(new_run_id(new_thread_id()), "a", {"p": 1}),
            ]
            with pytest.raises(NotThreadOwner):
                bridge.sync.start_run(thread_id=owned_by_bob, user_id="alice", agent_name="a")
            return results

        results = await anyio.to_thread.run_sync(work)
        assert [r.reason for r in results] == [
            "invalid_id",
            "lifecycle_violation",
            "thread_not_found",
        ]
        assert all(not r and r.dead_letter_id for r in results)
        run = await bridge.start_run(thread_id=new_thread_id(), user_id="alice", agent_name="a")

        def failing_tool() -> None:
            with run.sync.tool("explode"):
                raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            await anyio.to_thread.run_sync(failing_tool)
        assert run.sync is run.sync
    # After the router stopped, the sync API raises RouterNotStarted in the thread.
    with pytest.raises(RouterNotStarted):
        await anyio.to_thread.run_sync(run.sync.thinking, "stopped")
    history = await router.backend.read_history(run.thread_id, 0)
    assert '"success":false' in history.frames[-1][1] and "disk full" in history.frames[-1][1]
