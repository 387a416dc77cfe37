"""examples/agent_in_app.py, served by uvicorn on port 0, watched by a websockets client."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from router import EventRouter, new_thread_id

from .conftest import Server, recv_json, recv_until, ws_connect

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "agent_in_app.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_in_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def is_final(frame: dict[str, Any]) -> bool:
    return frame.get("type") in ("agent_completed", "agent_error")


async def test_post_starts_a_run_whose_events_reach_the_browser(
    example: ModuleType, router_factory: Callable[..., EventRouter]
) -> None:
    router = router_factory()
    async with Server(example.create_app(router)) as server:
        ws = await ws_connect(server, "alice")
        assert (await recv_json(ws))["op"] == "welcome"
        async with httpx.AsyncClient(base_url=server.http) as client:
            response = await client.post(
                "/runs",
                json={"question": "why is the sky blue"},
                headers={"authorization": "Bearer tok-alice"},
            )
        assert response.status_code == 202
        thread_id = response.json()["thread_id"]
        frames = await recv_until(ws, is_final)
        await ws.close()
    assert [frame["type"] for frame in frames] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "progress_update",
        "agent_completed",
    ]
    assert [frame["seq"] for frame in frames] == list(range(1, 10))
    assert {frame["thread_id"] for frame in frames} == {thread_id}
    assert len({frame["run_id"] for frame in frames}) == 1
    assert {frame["agent_name"] for frame in frames} == {"researcher"}
    assert frames[0]["payload"] == {"context": {"question": "why is the sky blue"}}
    search = frames[3]["payload"]
    assert search["tool_name"] == "search" and search["success"] is True
    assert search["tool_call_id"] == frames[2]["payload"]["tool_call_id"]
    assert [source["title"] for source in search["result"]] == [
        "About why",
        "About is",
        "About the",
    ]
    assert frames[-1]["payload"]["result"]["answer"] == "3 sources consulted"
    assert router.stats.accepted == 9 and not router.stats.rejected


async def test_post_is_refused_without_a_user_or_on_another_users_thread(
    example: ModuleType, router_factory: Callable[..., EventRouter]
) -> None:
    router = router_factory()
    async with Server(example.create_app(router)) as server:
        bobs = new_thread_id()
        await router.threads.create(bobs, "bob")
        async with httpx.AsyncClient(base_url=server.http) as client:
            anonymous = await client.post("/runs", json={"question": "q"})
            assert anonymous.status_code == 401
            alice = {"authorization": "Bearer tok-alice"}
            stolen = await client.post(
                "/runs", json={"question": "q", "thread_id": bobs}, headers=alice
            )
            assert stolen.status_code == 403
            bad = await client.post("/runs", json={"question": 1}, headers=alice)
            assert bad.status_code == 400
            invalid = await client.post(
                "/runs", json={"question": "q", "thread_id": "thread-1"}, headers=alice
            )
            assert invalid.status_code == 400
    assert router.stats.published == 0


async def test_a_run_of_an_existing_thread_continues_its_seq(
    example: ModuleType, router_factory: Callable[..., EventRouter]
) -> None:
    router = router_factory()
    async with Server(example.create_app(router)) as server:
        ws = await ws_connect(server, "carol")
        assert (await recv_json(ws))["op"] == "welcome"
        headers = {"authorization": "Bearer tok-carol"}
        async with httpx.AsyncClient(base_url=server.http) as client:
            first = await client.post("/runs", json={"question": "one"}, headers=headers)
            thread_id = first.json()["thread_id"]
            first_frames = await recv_until(ws, is_final)
            second = await client.post(
                "/runs", json={"question": "two", "thread_id": thread_id}, headers=headers
            )
            assert second.status_code == 202 and second.json()["thread_id"] == thread_id
            second_frames = await recv_until(ws, is_final)
        await ws.close()
    assert first_frames[-1]["seq"] + 1 == second_frames[0]["seq"]
    assert first_frames[0]["run_id"] != second_frames[0]["run_id"]
