"""The wire protocol's answer to every bad input (DESIGN §5), over a real socket.

Refused before accept: HTTP 403. Bad frames: an ``error`` frame and the
connection stays, until the 10th in a row (1008). Binary 1003, oversize 1009,
invalid UTF-8 1007.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from router import EventRouter, new_run_id, new_thread_id

from .conftest import Server, recv_json, serve, ws_connect
from .helpers import ev, frames_before_pong, frames_until_closed, new_thread, send_json, thinking


@pytest.fixture
async def server(router_factory: Any) -> AsyncIterator[Server]:
    router: EventRouter = router_factory()
    async with serve(router) as server:
        yield server


@pytest.fixture
async def alice(server: Server) -> AsyncIterator[ClientConnection]:
    ws = await ws_connect(server, "alice")
    try:
        welcome = await recv_json(ws)
        assert welcome["op"] == "welcome" and welcome["user_id"] == "alice"
        assert welcome["connection_id"]
        yield ws
    finally:
        await ws.close()


def router_of(server: Server) -> EventRouter:
    assert server.router is not None
    return server.router


async def still_open(ws: ClientConnection) -> None:
    """A ping gets its pong and nothing else."""
    assert await frames_before_pong(ws) == []


# --------------------------------------------------------------------------- refused


async def test_no_token_is_refused_with_403(server: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(server, None)
    assert refused.value.response.status_code == 403
    assert len(router_of(server).hub) == 0


async def test_unknown_token_is_refused_with_403(server: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(server, None, "token=nonsense")
    assert refused.value.response.status_code == 403


async def test_authenticate_returning_a_bad_user_id_is_refused(server: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(server, "bad%21user")  # "bad!user": outside the user id grammar
    assert refused.value.response.status_code == 403


async def test_raising_authenticate_is_refused(router_factory: Any) -> None:
    def broken(conn: Any) -> str:
        raise RuntimeError("auth backend down")

    async with serve(router_factory(), authenticate=broken) as server:
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(server, "alice")
        assert refused.value.response.status_code == 403


async def test_async_authenticate_is_awaited(router_factory: Any) -> None:
    async def auth(conn: Any) -> str | None:
        return "carol" if conn.query_params.get("token") == "tok-carol" else None

    async with serve(router_factory(), authenticate=auth) as server:
        ws = await ws_connect(server, "carol")
        try:
            assert (await recv_json(ws))["user_id"] == "carol"
        finally:
            await ws.close()
        with pytest.raises(InvalidStatus):
            await ws_connect(server, "alice")


async def test_origin_checks(router_factory: Any) -> None:
    allowed = "https://app.example"
    async with serve(router_factory(), allowed_origins=[allowed]) as server:
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(server, "alice", origin="https://evil.example")
        assert refused.value.response.status_code == 403
        # An allowed Origin, and no Origin at all (not a browser), are judged by authenticate.
        for origin in (allowed, None):
            ws = await ws_connect(server, "alice", origin=origin)
            try:
                assert (await recv_json(ws))["op"] == "welcome"
            finally:
                await ws.close()
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(server, None, origin=allowed)
        assert refused.value.response.status_code == 403


# --------------------------------------------------------------------------- bad frames


@pytest.mark.parametrize(
    "frame",
    [
        "this is not json",
        "{",
        "[1, 2, 3]",
        '"ping"',
        "null",
        "{}",
        '{"op": 7}',
        '{"op": null}',
        '{"type": "ping"}',
    ],
)
async def test_bad_frame_gets_bad_request_and_connection_stays(
    alice: ClientConnection, frame: str
) -> None:
    await alice.send(frame)
    error = await recv_json(alice)
    assert error["op"] == "error" and error["code"] == "bad_request"
    assert isinstance(error["detail"], str) and error["detail"]
    await still_open(alice)


async def test_deeply_nested_json_is_a_bad_request(alice: ClientConnection) -> None:
    depth = 2000  # 4000 bytes: under the frame limit, far over any sane nesting
    await alice.send("[" * depth + "]" * depth)
    error = await recv_json(alice)
    assert error["op"] == "error" and error["code"] == "bad_request"
    await alice.send('{"op": "ping", "x": ' + "[" * 1500 + "]" * 1500 + "}")
    error = await recv_json(alice)
    assert error["op"] == "error" and error["code"] == "bad_request"
    await still_open(alice)


async def test_unknown_op_gets_unknown_op(alice: ClientConnection) -> None:
    await send_json(alice, {"op": "publish", "thread_id": "x"})
    error = await recv_json(alice)
    assert error["op"] == "error" and error["code"] == "unknown_op"
    await still_open(alice)


async def test_ten_bad_frames_in_a_row_close_with_1008(alice: ClientConnection) -> None:
    for _ in range(9):
        await alice.send("nope")
        assert (await recv_json(alice))["code"] == "bad_request"
    await alice.send("nope")
    frames, code = await frames_until_closed(alice)
    assert [f["code"] for f in frames] == ["bad_request"]  # the 10th error frame, then close
    assert code == 1008


async def test_a_good_frame_resets_the_bad_frame_count(alice: ClientConnection) -> None:
    for _ in range(9):
        await alice.send("nope")
        assert (await recv_json(alice))["code"] == "bad_request"
    await still_open(alice)
    for _ in range(9):
        await send_json(alice, {"op": "dance"})
        assert (await recv_json(alice))["code"] == "unknown_op"
    await still_open(alice)


async def test_binary_frame_closes_with_1003(alice: ClientConnection) -> None:
    await alice.send(b'{"op": "ping"}')
    frames, code = await frames_until_closed(alice)
    assert frames == [] and code == 1003


async def test_frame_over_4_kib_closes_with_1009(alice: ClientConnection) -> None:
    fits = json.dumps({"op": "ping", "pad": ""})
    fits = json.dumps({"op": "ping", "pad": "x" * (4096 - len(fits))})
    assert len(fits) == 4096
    await alice.send(fits)
    assert await recv_json(alice) == {"op": "pong"}
    await alice.send(json.dumps({"op": "ping", "pad": "x" * 5000}))
    frames, code = await frames_until_closed(alice)
    assert frames == [] and code == 1009


async def test_multibyte_frame_over_4_kib_closes_with_1009(alice: ClientConnection) -> None:
    # 2,100 characters, 6,300 bytes of UTF-8: the limit is in bytes.
    await alice.send(json.dumps({"op": "ping", "pad": "€" * 2100}, ensure_ascii=False))
    frames, code = await frames_until_closed(alice)
    assert frames == [] and code == 1009


async def test_invalid_utf8_closes_with_1007(alice: ClientConnection) -> None:
    await alice.send(b'{"op": "ping", "x": "\xff\xfe"}', text=True)
    frames, code = await frames_until_closed(alice)
    assert frames == [] and code == 1007


# --------------------------------------------------------------------------- subscribe


async def test_subscribe_to_another_users_thread_is_refused_and_leaks_nothing(
    server: Server, alice: ClientConnection
) -> None:
    router = router_of(server)
    bobs = await new_thread(router, "bob")
    run = new_run_id(bobs)
    assert await router.publish(ev("agent_started", run))
    await send_json(alice, {"op": "subscribe", "thread_id": bobs, "after_seq": 0})
    error = await recv_json(alice)
    assert error["op"] == "error" and error["code"] in ("forbidden", "thread_not_found")
    assert error.get("thread_id") == bobs
    assert await router.publish(thinking(run))
    await still_open(alice)
    # Nor does it change alice's own channel: her threads still arrive.
    mine = await new_thread(router, "alice")
    started = await router.publish(ev("agent_started", new_run_id(mine)))
    frames = await frames_before_pong(alice)
    assert [f["event_id"] for f in frames] == [started.event_id]


@pytest.mark.parametrize(
    "thread_id",
    ["not-a-thread", "", 42, None, "thread_", "run_thread_chat_1757361062151_7_90c65fe4_1a2b3c4d"],
)
async def test_subscribe_with_invalid_thread_id_gets_invalid_id(
    alice: ClientConnection, thread_id: Any
) -> None:
    await send_json(alice, {"op": "subscribe", "thread_id": thread_id})
    error = await recv_json(alice)
    assert error["op"] == "error" and error["code"] == "invalid_id", error
    await still_open(alice)


async def test_subscribe_to_unknown_canonical_thread_gets_thread_not_found(
    alice: ClientConnection,
) -> None:
    thread = new_thread_id("nowhere")
    await send_json(alice, {"op": "subscribe", "thread_id": thread})
    error = await recv_json(alice)
    assert error["op"] == "error" and error["code"] == "thread_not_found"
    assert error.get("thread_id") == thread
    await still_open(alice)


@pytest.mark.parametrize("after_seq", [-1, 1.5, "abc", True, [1], {"n": 1}, "-3"])
async def test_subscribe_with_bad_after_seq_gets_bad_request(
    server: Server, alice: ClientConnection, after_seq: Any
) -> None:
    thread = await new_thread(router_of(server), "alice")
    await send_json(alice, {"op": "subscribe", "thread_id": thread, "after_seq": after_seq})
    error = await recv_json(alice)
    assert error["op"] == "error" and error["code"] == "bad_request", error
    await still_open(alice)


async def test_bad_after_seq_at_connect_is_an_error_and_the_connection_stays(
    server: Server,
) -> None:
    thread = await new_thread(router_of(server), "alice")
    ws = await ws_connect(server, "alice", f"thread_id={thread}&after_seq=-4")
    try:
        assert (await recv_json(ws))["op"] == "welcome"
        error = await recv_json(ws)
        assert error["op"] == "error" and error["code"] == "bad_request"
        await still_open(ws)
    finally:
        await ws.close()


async def test_unsubscribe_with_invalid_thread_id_gets_invalid_id(
    alice: ClientConnection,
) -> None:
    await send_json(alice, {"op": "unsubscribe", "thread_id": "nope"})
    error = await recv_json(alice)
    assert error["op"] == "error" and error["code"] == "invalid_id"
    await still_open(alice)


async def test_server_fault_closes_with_1011_and_others_are_unaffected(
    router_factory: Any,
) -> None:
    # The app's owner_of hook is the edge: a failing database, say.
    def owner_of(thread_id: str) -> str | None:
        if "_explode_" in thread_id:
            raise RuntimeError("thread database is down")
        return None

    router: EventRouter = router_factory(owner_of=owner_of)
    async with serve(router) as server:
        victim = await ws_connect(server, "alice")
        bystander = await ws_connect(server, "bob")
        try:
            assert (await recv_json(victim))["op"] == "welcome"
            assert (await recv_json(bystander))["op"] == "welcome"
            await send_json(victim, {"op": "subscribe", "thread_id": new_thread_id("explode")})
            frames, code = await frames_until_closed(victim)
            assert frames == [] and code == 1011
            await still_open(bystander)
            assert len(router.hub) == 1
        finally:
            await victim.close()
            await bystander.close()
