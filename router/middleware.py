"""EventRouterMiddleware: the WebSocket endpoint and admin API, mounted into any ASGI app.

What it owns: WebSocket upgrades on ``path`` (default ``/ws``) and HTTP requests
under ``admin_path`` (default ``/_router``). Everything else, lifespan included,
goes to the wrapped app unchanged; the router is started when the app starts and
stopped after the app has shut down.

Each connection runs three things at once: the reader (client frames), the writer
(draining the connection's bounded outbox to the socket) and, for a credential
with an expiry, a timer that closes with 4401 when it passes. On uvicorn, a live
frame that finds the writer idle with nothing queued is sent by the publishing task
itself (``Connection.direct_send``); a send that has to wait is left to the writer.

Close codes: 1003 binary frame, 1007 invalid UTF-8 (sent by the server itself),
1008 ten bad frames in a row, 1009 frame over the limit, 1011 server fault,
1013 slow consumer, 1001 server shutting down, 4401 token expired.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, cast

import anyio
import pydantic_core
from starlette.requests import HTTPConnection

from .auth import Authenticate, Principal
from .connections import UNFINISHED_SEND, Connection, ConnectionState
from .ids import is_thread_id, new_connection_id
from .router import EventRouter
from .types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["EventRouterMiddleware"]

logger = logging.getLogger("router.middleware")

CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_GOING_AWAY = 1001
CLOSE_TOKEN_EXPIRED = 4401

#: The subprotocol the server selects when a client offers it (browsers need one
#: selected when they offer any, e.g. to carry a ``bearer.<token>``).
SUBPROTOCOL = "agent-router.v1"


def _dumps(data: dict[str, Any]) -> str:
    return pydantic_core.to_json(data).decode()


class _BadFrame(Exception):
    def __init__(self, code: str, detail: str, thread_id: str | None = None) -> None:
        self.code = code
        self.detail = detail
        self.thread_id = thread_id


class EventRouterMiddleware:
    """Mount an :class:`~router.router.EventRouter` into an ASGI application.

    ``authenticate(conn)`` returns a user id (or a :class:`~router.auth.Principal`)
    or None to refuse; it may be sync or async. A refused upgrade, or one from an
    ``Origin`` outside ``allowed_origins``, gets HTTP 403 before accept.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        router: EventRouter,
        authenticate: Authenticate | None = None,
        path: str = "/ws",
        allowed_origins: Sequence[str] | None = None,
        admin_path: str = "/_router",
        admin_token: str | None = None,
        authorize_admin: Callable[[HTTPConnection], Awaitable[bool] | bool] | None = None,
        publish_token: str | None = None,
        metrics_public: bool = False,
        max_frame_bytes: int = 4096,
        max_bad_frames: int = 10,
        close_timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.router = router
        self.authenticate = authenticate
        self.path = path
        self.allowed_origins = None if allowed_origins is None else frozenset(allowed_origins)
        self.max_frame_bytes = max_frame_bytes
        self.max_bad_frames = max_bad_frames
        self.close_timeout = close_timeout
        self.admin_path = admin_path.rstrip("/")
        from .admin import AdminAPI

        self.admin = AdminAPI(
            router,
            admin_token=admin_token,
            authorize_admin=authorize_admin,
            publish_token=publish_token,
            metrics_public=metrics_public,
            root_path=self.admin_path,
        )
        self._start_lock = anyio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        path = scope.get("path", "")
        if kind == "websocket" and path == self.path:
            await self._ensure_started()
            await self._websocket(scope, receive, send)
        elif kind == "http" and (path == self.admin_path or path.startswith(self.admin_path + "/")):
            await self._ensure_started()
            await self.admin(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _ensure_started(self) -> None:
        # Servers run with lifespan off never start us; start on first use instead.
        if not self.router.running:
            async with self._start_lock:
                await self.router.start()

    # ------------------------------------------------------------------ lifespan

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.router.start()
            return message

        async def wrapped_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.router.stop()
            await send(message)

        await self.app(scope, wrapped_receive, wrapped_send)

    # ------------------------------------------------------------------ websocket

    async def _authenticate(self, conn: HTTPConnection) -> Principal | None:
        if self.allowed_origins is not None:
            origin = conn.headers.get("origin")
            if origin is not None and origin not in self.allowed_origins:
                logger.info("websocket refused: origin %r not allowed", origin[:200])
                return None
        if self.authenticate is None:
            logger.error("websocket refused: EventRouterMiddleware has no authenticate hook")
            return None
        answer = self.authenticate(conn)
        if inspect.isawaitable(answer):
            answer = await answer
        if answer is None:
            return None
        principal = answer if isinstance(answer, Principal) else Principal(str(answer))
        from .ids import is_user_id

        if not is_user_id(principal.user_id):
            logger.error("websocket refused: authenticate returned a bad user id")
            return None
        if principal.expires_at is not None and principal.expires_at <= time.time():
            return None
        return principal

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        http = HTTPConnection(scope)
        try:
            principal = await self._authenticate(http)
        except Exception:
            logger.exception("websocket refused: authenticate raised")
            principal = None
        if principal is None:
            await send({"type": "websocket.close", "code": CLOSE_POLICY})
            return
        offered = scope.get("subprotocols") or ()
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": SUBPROTOCOL if SUBPROTOCOL in offered else None,
            }
        )
        session = _Session(self, principal, http, receive, send)
        await session.run()


#: uvicorn's WebSocket protocols (websockets-sansio, wsproto, websockets): their ASGI
#: ``send`` waits only on plain asyncio futures and events.
_UVICORN_PROTOCOLS = frozenset(
    {
        ("uvicorn.protocols.websockets.websockets_sansio_impl", "WebSocketsSansIOProtocol"),
        ("uvicorn.protocols.websockets.wsproto_impl", "WSProtocol"),
        ("uvicorn.protocols.websockets.websockets_impl", "WebSocketProtocol"),
    }
)


def _sends_without_task_state(send: Send) -> bool:
    """True for the ASGI ``send`` of uvicorn's WebSocket protocols: a send begun in
    one task may be finished in another. Any other ``send`` (another server, or a
    middleware wrapping it, which might enter a cancel scope) always goes through
    the connection's writer task."""
    owner = getattr(send, "__self__", None)
    kind = type(owner)
    return owner is not None and (kind.__module__, kind.__qualname__) in _UVICORN_PROTOCOLS


def _server_closing(protocol: object, transport: Any) -> bool:
    """The server (its protocol object) has started closing the connection itself:
    its ``send`` would refuse a frame, or the transport is going (uvicorn closes the
    transport at once when it fails a connection; ``connection_lost`` comes later)."""
    return bool(transport.is_closing()) or getattr(protocol, "close_sent", False)


class _Unfinished:
    """The rest of a send coroutine begun in another task, awaitable once: it is
    driven on from the future it was waiting on, as a task drives a coroutine
    (what is thrown in, such as a cancellation, goes on into it)."""

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation, say: into the send
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting_on = coro.send(sent)
            except StopIteration:
                return

    def close(self) -> None:
        """Cancel the send (the writer stopped before finishing it): the future it
        waits on is cancelled, as a task's cancellation would, then the coroutine is
        closed (so the server's own waiters are left clean)."""
        waiting_on = self._waiting_on
        if isinstance(waiting_on, asyncio.Future):
            waiting_on.cancel()
        self._coro.close()


class _Session:
    """One accepted WebSocket connection."""

    def __init__(
        self,
        middleware: EventRouterMiddleware,
        principal: Principal,
        http: HTTPConnection,
        receive: Receive,
        send: Send,
    ) -> None:
        self.m = middleware
        self.router = middleware.router
        self.principal = principal
        self.http = http
        self.receive = receive
        self.send = send
        self.conn: Connection = self.router.connect(principal.user_id, new_connection_id())
        self.disconnected = False
        self.writer_done = anyio.Event()
        # The writer holds back until the connection is attached to the backend,
        # so the welcome frame means "from here on you miss nothing".
        self.attached = anyio.Event()
        self.scope: anyio.CancelScope | None = None
        #: a direct send that had to wait, for the writer to finish
        self._unfinished: _Unfinished | None = None
        #: the server's protocol object behind ``send`` (when frames are sent directly)
        self._protocol: object = None
        self._transport: Any = None

    def _close(self, code: int, reason: str) -> None:
        self.conn.close(code, reason)
        if self.scope is not None:
            self.scope.cancel()

    async def run(self) -> None:
        conn = self.conn
        conn.opened()
        conn_id = conn.connection_id
        try:
            async with anyio.create_task_group() as tg:
                self.scope = tg.cancel_scope
                conn.set_canceller(tg.cancel_scope.cancel)
                tg.start_soon(self._writer)
                if self.principal.expires_at is not None:
                    tg.start_soon(self._expiry, self.principal.expires_at)
                await self._main()
                # The reader is done and asked for a close: let the writer flush
                # what is queued (an error frame before 1008, say), then stop.
                with anyio.move_on_after(self.m.close_timeout):
                    await self.writer_done.wait()
                tg.cancel_scope.cancel()
        except Exception:
            logger.exception("websocket connection %s failed", conn_id)
            if conn.state is ConnectionState.OPEN:
                conn.close(CLOSE_SERVER_ERROR, "server error")
        finally:
            self.router.detach(conn)
            if conn.state is ConnectionState.OPEN:
                conn.close(1000)
            if not self.disconnected and conn.close_code is not None:
                with anyio.move_on_after(self.m.close_timeout, shield=True):
                    try:
                        await self.send(
                            {
                                "type": "websocket.close",
                                "code": conn.close_code,
                                "reason": conn.close_reason,
                            }
                        )
                    except OSError:
                        pass
            conn.closed()

    def _send_now(self, frame: str) -> bool | None:
        """``Connection.direct_send``: send a live frame from the publisher's task
        while the writer waits with nothing queued. The ASGI send is run until it
        would wait; the writer finishes it from there (``finish_first``). None (the
        frame is queued for the writer) while the server is closing the connection
        on its own (a keepalive timeout, an oversized client frame): the writer
        then finds out how it ended."""
        if _server_closing(self._protocol, self._transport):
            return None
        sending = cast(
            Coroutine[Any, Any, None], self.send({"type": "websocket.send", "text": frame})
        )
        try:
            waiting_on = sending.send(None)
        except StopIteration:
            return True
        except (OSError, asyncio.CancelledError):
            # CancelledError: from the server's own shutdown of the connection
            # (nothing cancels the publisher inside this synchronous step).
            self.disconnected = True
            self._close(1006, "client disconnected")
            return False
        except Exception:
            logger.exception("websocket connection %s: send failed", self.conn.connection_id)
            self._close(CLOSE_SERVER_ERROR, "server error")
            return False
        self._unfinished = _Unfinished(sending, waiting_on)
        self.conn.finish_first()
        return True

    async def _writer(self) -> None:
        conn = self.conn
        try:
            await self.attached.wait()
            send = self.send
            next_batch = conn.next_batch
            if _sends_without_task_state(send):
                self._protocol = getattr(send, "__self__", None)
                self._transport = getattr(self._protocol, "transport", None)
                if self._transport is not None:
                    conn.direct_send = self._send_now
            # What is queued is taken in one go; see Connection.next_batch for the wait.
            while (batch := await next_batch()) is not None:
                for frame in batch:
                    if frame is UNFINISHED_SEND:
                        unfinished, self._unfinished = self._unfinished, None
                        if unfinished is not None:
                            await unfinished
                        continue
                    await send({"type": "websocket.send", "text": frame})
        except OSError:
            # The client went away under us (uvicorn's ClientDisconnected is an OSError).
            self.disconnected = True
            self._close(1006, "client disconnected")
        finally:
            conn.direct_send = None
            if self._unfinished is not None:
                self._unfinished.close()
                self._unfinished = None
            self.writer_done.set()

    async def _expiry(self, expires_at: float) -> None:
        await anyio.sleep(max(0.0, expires_at - time.time()))
        self._close(CLOSE_TOKEN_EXPIRED, "token expired")

    async def _put(self, data: dict[str, Any]) -> None:
        await self.conn.put(_dumps(data))

    async def _main(self) -> None:
        conn = self.conn
        await self._put(
            {"op": "welcome", "connection_id": conn.connection_id, "user_id": conn.user_id}
        )
        resume, refused = await self._resume_targets()
        if resume is not None:
            conn.threads = set()
            for thread_id, _after in resume:
                conn.threads.add(thread_id)
                conn.hold(thread_id)
        try:
            await self.router.attach(conn)
        finally:
            self.attached.set()
        for bad in refused:
            await self._error(bad)
        if resume is not None:
            for thread_id, after in resume:
                await self._attach(thread_id, after, already_held=True)
        await self._read_loop()

    async def _resume_targets(
        self,
    ) -> tuple[list[tuple[str, int | None]] | None, list[_BadFrame]]:
        """``?thread_id=T&after_seq=N`` pairs (by position), and the refused ones (each
        gets an error frame; the connection stays, in thread mode whenever any were
        asked for)."""
        params = self.http.query_params
        threads = params.getlist("thread_id")
        if not threads:
            return None, []
        afters = params.getlist("after_seq")
        targets: list[tuple[str, int | None]] = []
        refused: list[_BadFrame] = []
        for index, thread_id in enumerate(threads):
            raw_after = afters[index] if index < len(afters) else None
            try:
                after = None if raw_after in (None, "") else _parse_after(raw_after)
                await self._check_thread(thread_id)
            except _BadFrame as bad:
                refused.append(bad)
                continue
            targets.append((thread_id, after))
        return targets, refused

    async def _check_thread(self, thread_id: Any) -> str:
        if not isinstance(thread_id, str) or not is_thread_id(thread_id):
            raise _BadFrame(
                "invalid_id",
                f"{thread_id!r:.80} is not a canonical thread id",
                thread_id if isinstance(thread_id, str) and len(thread_id) < 256 else None,
            )
        owner = await self.router.threads.owner(thread_id)
        if owner is None:
            raise _BadFrame("thread_not_found", "no such thread", thread_id)
        if owner != self.conn.user_id:
            raise _BadFrame("forbidden", "this thread belongs to another user", thread_id)
        return thread_id

    async def _error(self, bad: _BadFrame) -> None:
        frame: dict[str, Any] = {"op": "error", "code": bad.code, "detail": bad.detail}
        if bad.thread_id is not None:
            frame["thread_id"] = bad.thread_id
        await self._put(frame)

    async def _read_loop(self) -> None:
        bad_in_a_row = 0
        limit = self.m.max_frame_bytes
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                self.disconnected = True
                self.conn.close(int(message.get("code") or 1005), "client closed", drain=True)
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            if text is None:
                self.conn.close(CLOSE_UNSUPPORTED, "binary frames are not supported", drain=True)
                return
            if len(text) > limit or len(text.encode()) > limit:
                self.conn.close(CLOSE_TOO_BIG, f"frame over {limit} bytes", drain=True)
                return
            try:
                await self._handle(text)
            except _BadFrame as bad:
                await self._error(bad)
                if bad.code in ("bad_request", "unknown_op"):
                    bad_in_a_row += 1
                    if bad_in_a_row >= self.m.max_bad_frames:
                        self.conn.close(CLOSE_POLICY, "too many bad frames", drain=True)
                        return
                continue
            bad_in_a_row = 0

    async def _handle(self, text: str) -> None:
        try:
            data = pydantic_core.from_json(text)
        except ValueError as exc:
            raise _BadFrame("bad_request", f"not valid JSON: {str(exc)[:120]}") from None
        if not isinstance(data, dict):
            raise _BadFrame("bad_request", "a frame is a JSON object with an 'op'")
        op = data.get("op")
        if op == "ping":
            await self._put({"op": "pong"})
        elif op == "subscribe":
            thread_id = data.get("thread_id")
            after = data.get("after_seq")
            if after is not None:
                if not isinstance(after, int):
                    raise _BadFrame(
                        "bad_request",
                        f"after_seq must be a non-negative integer, got {after!r:.40}",
                    )
                after = _parse_after(after)
            if thread_id == "*":
                self.conn.threads = None
                await self._put({"op": "subscribed", "thread_id": "*", "last_seq": None})
                return
            await self._attach(await self._check_thread(thread_id), after)
        elif op == "unsubscribe":
            thread_id = data.get("thread_id")
            if not isinstance(thread_id, str) or not is_thread_id(thread_id):
                raise _BadFrame("invalid_id", f"{thread_id!r:.80} is not a canonical thread id")
            if self.conn.threads is None:
                raise _BadFrame(
                    "bad_request",
                    "this connection receives every thread of its user; "
                    "subscribe to specific threads before unsubscribing from one",
                    thread_id,
                )
            self.conn.threads.discard(thread_id)
            self.conn.pending.pop(thread_id, None)
            await self._put({"op": "unsubscribed", "thread_id": thread_id})
        elif isinstance(op, str):
            raise _BadFrame(
                "unknown_op", f"unknown op {op[:40]!r}; expected subscribe, unsubscribe or ping"
            )
        else:
            raise _BadFrame("bad_request", "a frame is a JSON object with an 'op'")

    async def _attach(
        self, thread_id: str, after: int | None, *, already_held: bool = False
    ) -> None:
        """Subscribe to a thread, replaying history after ``after`` first.

        Live frames of the thread are held while the replay runs and follow it,
        so the client sees every seq once, in order, with no gap at the seam.
        """
        conn = self.conn
        if not already_held:
            conn.hold(thread_id)
            if conn.threads is None:
                conn.threads = {thread_id}
            else:
                conn.threads.add(thread_id)
        backend = self.router.backend
        sent = conn.last_sent.get(thread_id, 0)
        if after is None:
            last = await backend.last_seq(thread_id)
            await self._put({"op": "subscribed", "thread_id": thread_id, "last_seq": last or None})
            conn.last_sent[thread_id] = max(sent, last)
        else:
            start = max(after, sent)
            history = await backend.read_history(thread_id, start)
            await self._put(
                {"op": "subscribed", "thread_id": thread_id, "last_seq": history.last_seq or None}
            )
            if after > history.last_seq:
                # The client is ahead of the thread: its sequence restarted (the
                # shared backend lost its data). The seqs it holds, 1..after_seq,
                # belong to a sequence that no longer exists: say so ("reset"), then
                # replay the new sequence from its start.
                start = 0
                conn.last_sent[thread_id] = 0
                history = await backend.read_history(thread_id, 0)
                await self._put(
                    {
                        "op": "gap",
                        "thread_id": thread_id,
                        "from_seq": 1,
                        "to_seq": after,
                        "reset": True,
                    }
                )
            gap = history.gap(start)
            if gap is not None:
                await self._put(
                    {"op": "gap", "thread_id": thread_id, "from_seq": gap[0], "to_seq": gap[1]}
                )
                conn.last_sent[thread_id] = max(conn.last_sent.get(thread_id, 0), gap[1])
            for seq, frame in history.frames:
                await conn.put_event(thread_id, seq, frame)
        await conn.release(thread_id)


#: Largest after_seq accepted (a seq beyond it cannot exist: 2**53, the largest
#: integer every JSON client represents exactly).
MAX_SEQ = 2**53


def _parse_after(value: Any) -> int:
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            raise _BadFrame(
                "bad_request", f"after_seq must be a non-negative integer, got {value[:40]!r}"
            )
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise _BadFrame(
            "bad_request",
            f"after_seq must be an integer from 0 to 2**53, got {value!r:.40}",
        )
    return value
