"""Direct sends: while a connection's writer waits with nothing queued, a live frame
is sent from the publisher's task (no writer wake-up). A send that has to wait is
finished by the writer, before anything queued after it; a failing send closes only
that connection. Per-thread order and the slow-consumer rule are unchanged."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

import router.middleware as middleware_module
from router import EventRouter, EventRouterMiddleware, new_run_id
from router.connections import Connection

from .conftest import recv_json, serve, wait_for, ws_connect
from .helpers import ev, is_event, new_thread, thinking


class FakeTransport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class FakeSocket:
    """The server side of one WebSocket as an ASGI app sees it: ``receive`` gives the
    connect, then waits for the test; ``send`` records what completed. With a gate,
    event frames wait for it (as a server's send waits while the socket is full)."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.incoming.put_nowait({"type": "websocket.connect"})
        self.sent: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None
        self.fail: BaseException | None = None
        self.waiting = 0
        self.abandoned = 0
        # What the middleware reads of a server's protocol before sending directly.
        self.transport = FakeTransport()
        self.close_sent = False

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send" and '"seq"' in message["text"]:
            if self.fail is not None:
                raise self.fail
            if self.gate is not None and not self.gate.is_set():
                self.waiting += 1
                try:
                    await self.gate.wait()
                except GeneratorExit:
                    self.abandoned += 1
                    raise
                finally:
                    self.waiting -= 1
        self.sent.append(message)

    def events(self) -> list[dict[str, Any]]:
        frames = [json.loads(m["text"]) for m in self.sent if m["type"] == "websocket.send"]
        return [f for f in frames if is_event(f)]

    def closes(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == "websocket.close"]


async def _nothing(scope: Any, receive: Any, send: Any) -> None:  # the wrapped app
    raise AssertionError("the router handles /ws itself")


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the fake socket's send be used directly (it waits only on asyncio futures,
    as uvicorn's does)."""
    monkeypatch.setattr(middleware_module, "_sends_without_task_state", lambda send: True)


async def _session(
    router: EventRouter, socket: FakeSocket
) -> tuple[asyncio.Task[None], Connection]:
    """One accepted session for alice, its writer waiting with nothing queued."""
    app = EventRouterMiddleware(_nothing, router=router, authenticate=lambda conn: "alice")
    scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [],
        "subprotocols": [],
    }
    task = asyncio.create_task(app(scope, socket.receive, socket.send))  # type: ignore[arg-type]
    await wait_for(lambda: len(router.hub.connections("alice")) == 1, what="alice attached")
    conn = router.hub.connections("alice")[0]
    await wait_for(lambda: conn._wakeup is not None and not conn.backlog, what="writer idle")
    return task, conn


async def _alice(router: EventRouter) -> tuple[str, FakeSocket, asyncio.Task[None], Connection]:
    """A thread of alice's and an accepted session of hers on a fake socket."""
    thread = await new_thread(router, "alice")
    socket = FakeSocket()
    task, conn = await _session(router, socket)
    return thread, socket, task, conn


async def _end(task: asyncio.Task[None], socket: FakeSocket) -> None:
    socket.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(task, 10)


@pytest.mark.timeout(30)
async def test_frames_go_out_from_the_publisher_while_the_writer_waits(
    router_factory: Callable[..., EventRouter], direct: None
) -> None:
    router = router_factory()
    async with router:
        thread, socket, task, conn = await _alice(router)
        run = new_run_id(thread)
        assert await router.publish(ev("agent_started", run))
        # Sent before publish returned: no pass of the event loop in between.
        assert [f["seq"] for f in socket.events()] == [1]
        for n in range(5):
            assert await router.publish(thinking(run, f"step {n}"))
            assert [f["seq"] for f in socket.events()] == list(range(1, n + 3))
        assert conn.backlog == 0 and conn._wakeup is not None  # the writer never woke
        await _end(task, socket)


@pytest.mark.timeout(30)
async def test_a_direct_send_that_must_wait_is_finished_first_by_the_writer(
    router_factory: Callable[..., EventRouter], direct: None
) -> None:
    router = router_factory()
    async with router:
        thread, socket, task, conn = await _alice(router)
        run = new_run_id(thread)
        socket.gate = asyncio.Event()
        assert await router.publish(ev("agent_started", run))  # begun, then waits
        assert socket.waiting == 1 and socket.events() == []
        for n in range(3):  # queued behind it
            assert await router.publish(thinking(run, f"step {n}"))
        await asyncio.sleep(0)  # let the writer run: it must wait for the first send
        assert socket.events() == []
        socket.gate.set()
        await wait_for(lambda: len(socket.events()) == 4, what="all four events")
        assert [f["seq"] for f in socket.events()] == [1, 2, 3, 4]
        # Caught up: the next frame goes out directly again.
        await wait_for(lambda: conn._wakeup is not None and not conn.backlog, what="idle")
        assert await router.publish(thinking(run, "later"))
        assert [f["seq"] for f in socket.events()] == [1, 2, 3, 4, 5]
        await _end(task, socket)


@pytest.mark.timeout(30)
async def test_closing_while_a_direct_send_waits_abandons_it_and_ends(
    router_factory: Callable[..., EventRouter], direct: None
) -> None:
    router = router_factory()
    async with router:
        thread, socket, task, conn = await _alice(router)
        socket.gate = asyncio.Event()
        assert await router.publish(ev("agent_started", new_run_id(thread)))
        await wait_for(lambda: socket.waiting == 1, what="the send to wait")
        conn.close(4000, "test")
        await asyncio.wait_for(task, 10)  # the session ends: nothing hangs on the gate
        assert socket.waiting == 0
        assert socket.closes() == [{"type": "websocket.close", "code": 4000, "reason": "test"}]
        assert not router.hub.has_user("alice")


@pytest.mark.timeout(30)
async def test_a_client_gone_during_a_direct_send_closes_only_that_connection(
    router_factory: Callable[..., EventRouter], direct: None
) -> None:
    router = router_factory()
    async with router:
        thread, socket, task, conn = await _alice(router)
        socket.fail = OSError("client went away")
        result = await router.publish(ev("agent_started", new_run_id(thread)))
        assert result.accepted  # committed and in history; the publisher never sees the error
        await asyncio.wait_for(task, 10)
        assert conn.close_code == 1006
        assert socket.closes() == []  # nobody left to tell
        assert not router.hub.has_user("alice")
        history = await router.backend.read_history(thread, 0)
        assert [seq for seq, _ in history.frames] == [1]


@pytest.mark.timeout(30)
async def test_a_failing_direct_send_is_logged_and_closes_1011(
    router_factory: Callable[..., EventRouter], direct: None, caplog: pytest.LogCaptureFixture
) -> None:
    router = router_factory()
    async with router:
        thread, socket, task, conn = await _alice(router)
        socket.fail = RuntimeError("server bug")
        with caplog.at_level(logging.ERROR, logger="router"):
            result = await router.publish(ev("agent_started", new_run_id(thread)))
            assert result.accepted
            await asyncio.wait_for(task, 10)
        assert conn.close_code == 1011
        assert socket.closes()[0]["code"] == 1011
        assert "send failed" in caplog.text and "server bug" in caplog.text


def test_only_uvicorns_own_send_is_used_directly() -> None:
    class Protocol:
        async def send(self, message: Any) -> None:
            pass

    uvicorn_like = type("WebSocketsSansIOProtocol", (Protocol,), {})
    uvicorn_like.__module__ = "uvicorn.protocols.websockets.websockets_sansio_impl"
    check = middleware_module._sends_without_task_state
    assert check(uvicorn_like().send)  # type: ignore[arg-type]
    assert not check(Protocol().send)  # type: ignore[arg-type]

    async def wrapped(message: Any) -> None:  # a middleware's wrapper, say
        pass

    assert not check(wrapped)


@pytest.mark.timeout(60)
async def test_uvicorn_sends_directly_and_keeps_order_through_a_stalled_socket(
    router_factory: Callable[..., EventRouter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server: frames go out directly while the client keeps up; when the
    client stops reading, sends start to wait and frames queue; once it reads again
    it gets every frame, in order."""
    direct_sends = 0
    original = middleware_module._Session._send_now

    def counting(self: Any, frame: str) -> bool:
        nonlocal direct_sends
        direct_sends += 1
        return original(self, frame)

    monkeypatch.setattr(middleware_module._Session, "_send_now", counting)
    router = router_factory(outbox_size=10_000)
    async with serve(router) as server:
        thread = await new_thread(router, "alice")
        ws = await ws_connect(server, "alice", max_queue=1)
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            conn = router.hub.connections("alice")[0]
            await wait_for(lambda: conn._wakeup is not None, what="the writer to wait")
            run = new_run_id(thread)
            assert await router.publish(ev("agent_started", run))
            assert direct_sends == 1
            assert (await recv_json(ws))["seq"] == 1
            # The client reads nothing now: its buffers fill, then uvicorn's send waits.
            big = "x" * 60_000
            published = 1
            while conn.backlog == 0 and published < 2000:
                assert await router.publish(thinking(run, big))
                published += 1
                await asyncio.sleep(0)
            assert conn.backlog > 0, "the socket never filled"
            for _ in range(20):
                assert await router.publish(thinking(run, big))
                published += 1
            seqs = []
            while len(seqs) < published - 1:
                frame = await recv_json(ws, 30)
                if is_event(frame):
                    seqs.append(frame["seq"])
            assert seqs == list(range(2, published + 1))
        finally:
            await ws.close()


@pytest.mark.timeout(30)
async def test_no_direct_send_once_the_writer_was_cancelled(
    router_factory: Callable[..., EventRouter], direct: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session fails (here: the thread store raises on a subscribe) and cancels
    its writer; a frame delivered in that same pass must not begin a send that no
    writer will finish."""
    router = router_factory()
    async with router:
        thread, socket, task, conn = await _alice(router)
        socket.gate = asyncio.Event()  # a send begun now would have to wait
        frame = json.dumps({"type": "custom", "seq": 99, "thread_id": thread})
        loop = asyncio.get_running_loop()

        async def failing_owner(thread_id: str) -> None:
            loop.call_soon(router.hub.deliver, "alice", thread, 99, frame)  # the same pass
            raise RuntimeError("thread store down")

        monkeypatch.setattr(router.threads, "owner", failing_owner)
        socket.incoming.put_nowait(
            {
                "type": "websocket.receive",
                "text": json.dumps({"op": "subscribe", "thread_id": thread}),
            }
        )
        await asyncio.wait_for(task, 10)
        assert conn.close_code == 1011
        assert socket.waiting == 0 and socket.abandoned == 0  # no send was begun
        assert socket.events() == []


@pytest.mark.timeout(30)
async def test_a_frame_waits_for_the_writer_while_the_server_closes_the_connection(
    router_factory: Callable[..., EventRouter], direct: None
) -> None:
    router = router_factory()
    async with router:
        thread, socket, task, conn = await _alice(router)
        run = new_run_id(thread)
        socket.close_sent = True  # the server closed it on its own (a keepalive timeout)
        assert await router.publish(ev("agent_started", run))
        assert socket.events() == [] and conn.backlog == 1  # queued, not sent from here
        socket.close_sent = False
        await wait_for(lambda: len(socket.events()) == 1, what="the writer to send it")
        socket.transport.closing = True
        assert await router.publish(thinking(run))
        assert len(socket.events()) == 1 and conn.backlog == 1
        await _end(task, socket)


@pytest.mark.timeout(30)
async def test_abandoning_a_waiting_send_cancels_what_it_waits_on() -> None:
    from router.middleware import _Unfinished

    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleaned = []

    async def send() -> None:
        try:
            await future
        finally:
            cleaned.append(future.cancelled())

    coro = send()
    waiting_on = coro.send(None)
    assert waiting_on is future
    _Unfinished(coro, waiting_on).close()
    assert cleaned == [True]


@pytest.mark.timeout(30)
async def test_an_oversized_client_frame_in_the_same_pass_as_a_publish_is_no_server_error(
    router_factory: Callable[..., EventRouter], caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn fails the connection itself (close sent, transport closing) on a client
    frame over its size limit; a frame published in that same pass is left to the
    writer, which finds the connection gone: no "send failed", no 1011."""
    from websockets.frames import Frame, Opcode

    router = router_factory()
    async with serve(router, server_config={"ws_max_size": 4096}) as server:
        thread = await new_thread(router, "alice")
        ws = await ws_connect(server, "alice")
        try:
            assert (await recv_json(ws))["op"] == "welcome"
            conn = router.hub.connections("alice")[0]
            assert conn.direct_send is not None  # uvicorn's send: frames go out directly
            await wait_for(lambda: conn._wakeup is not None, what="the writer to wait")
            protocol = next(iter(server.server.server_state.connections))
            oversized = Frame(Opcode.TEXT, b"x" * 5000).serialize(mask=True)
            with caplog.at_level(logging.ERROR, logger="router"):
                protocol.data_received(oversized)  # as if the client had sent it
                assert await router.publish(ev("agent_started", new_run_id(thread)))
                await wait_for(lambda: not router.hub.has_user("alice"), what="the session end")
            assert conn.close_code in (1006, 1009), (conn.close_code, conn.close_reason)
            assert "send failed" not in caplog.text
        finally:
            await ws.close()


@pytest.mark.timeout(30)
async def test_a_waiting_direct_send_takes_no_room_in_the_outbox() -> None:
    """As with a frame the writer is sending, the frame whose direct send waits is out
    of the outbox: ``outbox_size`` frames still fit behind its marker before a 1013."""
    conn = Connection("c1", "alice", outbox_size=1)
    conn.opened()
    begun: list[str] = []

    def send_that_waits(frame: str) -> bool:
        begun.append(frame)
        conn.finish_first()
        return True

    conn.direct_send = send_that_waits
    conn._wakeup = asyncio.get_running_loop().create_future()  # the writer waits
    assert conn.offer("t1", 1, "f1") and begun == ["f1"]
    assert conn.offer("t1", 2, "f2")  # behind the marker: room for one frame
    assert conn.close_code is None and conn.backlog == 2
    assert not conn.offer("t1", 3, "f3")  # now the outbox is full
    assert conn.close_code == 1013
