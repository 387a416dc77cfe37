"""The admin HTTP API, served by the middleware under ``admin_path`` (``/_router``).

JSON in and out. Every endpoint needs ``Authorization: Bearer <admin_token>``
(compared in constant time) or an ``authorize_admin(conn)`` hook that says yes;
``POST /publish`` also accepts the ``publish_token``; ``GET /metrics`` is open when
``metrics_public`` is set, and ``GET /openapi.json`` (a description, no data) is
open whenever the API is on. With neither an admin token nor a hook configured, the
API answers 404: it is off.

Endpoints (the OpenAPI document at ``GET /openapi.json`` has every shape)::

    GET    /dead-letters                 newest first, filtered, cursor paging
    GET    /dead-letters/{id}            one record
    DELETE /dead-letters/{id}            discard one record
    POST   /dead-letters/{id}/replay     re-run the pipeline on the original event
    POST   /dead-letters/replay          bulk replay (filter, dry_run, max, rate)
    POST   /dead-letters/purge           discard by filter and age
    GET    /events/{event_id}            what became of one event
    GET    /stats                        the figures of DESIGN section 10, as JSON
    GET    /metrics                      the same figures, Prometheus text format
    POST   /publish                      ingest an event (202 accepted, 422 rejected)
    GET    /openapi.json                 this API, described

Dead-letter endpoints see the router's store and its spool store (records written
while a scale-out backend was down) as one: listings merge both, newest first,
and a record id is looked up, replayed or deleted wherever it is.

Errors are ``{"error": sentence, "code": word}``: 400 ``bad_request`` for any
unusable input (never a 500), 401 ``unauthorized`` (nothing else in the body),
404 ``not_found`` or ``disabled``, 503 ``unavailable`` when a store or the backend
does not answer.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import math
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pydantic_core
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from ._admin_metrics import render_metrics
from ._admin_openapi import openapi_document
from .auth import authorization_bearer
from .backends.base import BackendDown
from .backends.memory import MemoryBackend
from .deadletters import (
    MAX_PAGE,
    DeadLetterFilter,
    DeadLetterRecord,
    DeadLetterStore,
    InvalidFilter,
    count_all,
    list_all,
    parse_duration,
    parse_since,
)
from .errors import BackendUnavailable, RouterNotStarted
from .ids import is_dead_letter_id, is_event_id, is_thread_id
from .router import EventRouter
from .types import Receive, Scope, Send

__all__ = ["AdminAPI"]

logger = logging.getLogger("router.admin")

_MAX_BODY = 1024 * 1024
#: Bulk replay bounds: records per request, and replays per second.
MAX_REPLAY = 10_000
DEFAULT_REPLAY = 1000
MAX_RATE = 10_000.0
DEFAULT_RATE = 500.0

_FILTER_FIELDS = ("reason", "user_id", "thread_id", "run_id", "since")
_LIST_PARAMS = frozenset({*_FILTER_FIELDS, "event_id", "limit", "cursor"})
_REPLAY_FIELDS = frozenset({*_FILTER_FIELDS, "dry_run", "max", "rate"})
_PURGE_FIELDS = frozenset({*_FILTER_FIELDS, "older_than"})
_INTEGER = re.compile(r"[+-]?\d{1,18}")
_UNAVAILABLE = (BackendDown, BackendUnavailable, RouterNotStarted, sqlite3.Error, OSError)


class _Problem(Exception):
    """A request that cannot be answered as asked: becomes a JSON error response."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra


def _error(status: int, detail: str, code: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": detail, "code": code, **extra}, status_code=status)


Endpoint = Callable[[Request], Awaitable[Response]]


class AdminAPI:
    """An ASGI app: the admin endpoints of one router."""

    def __init__(
        self,
        router: EventRouter,
        *,
        admin_token: str | None = None,
        authorize_admin: Callable[[HTTPConnection], Awaitable[bool] | bool] | None = None,
        publish_token: str | None = None,
        metrics_public: bool = False,
        root_path: str = "/_router",
    ) -> None:
        self.router = router
        self.admin_token = admin_token
        self.authorize_admin = authorize_admin
        self.publish_token = publish_token
        self.metrics_public = metrics_public
        self.root_path = root_path
        self.enabled = admin_token is not None or authorize_admin is not None
        # The exception middleware turns Starlette's own 404 and 405 into JSON here;
        # left to the host application they would reach its error middleware.
        self.app = ExceptionMiddleware(
            Router(routes=self.routes(), redirect_slashes=False),
            handlers={HTTPException: _http_exception},
        )

    def routes(self) -> list[Route]:
        """Every endpoint, with the methods it answers (the OpenAPI test walks these)."""
        guard = self._guard
        return [
            Route("/dead-letters", guard(self.list_dead_letters), methods=["GET"]),
            Route("/dead-letters/replay", guard(self.replay_many), methods=["POST"]),
            Route("/dead-letters/purge", guard(self.purge), methods=["POST"]),
            Route("/dead-letters/{record_id}", guard(self.get_dead_letter), methods=["GET"]),
            Route("/dead-letters/{record_id}", guard(self.delete_dead_letter), methods=["DELETE"]),
            Route("/dead-letters/{record_id}/replay", guard(self.replay_one), methods=["POST"]),
            Route("/events/{event_id}", guard(self.lookup_event), methods=["GET"]),
            Route("/stats", guard(self.stats), methods=["GET"]),
            Route("/metrics", guard(self.metrics), methods=["GET"]),
            Route("/publish", guard(self.publish), methods=["POST"]),
            Route("/openapi.json", guard(self.openapi), methods=["GET"]),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"][len(self.root_path) :] or "/"
        child = dict(scope)
        child["path"] = path
        child["root_path"] = scope.get("root_path", "") + self.root_path
        request = HTTPConnection(child)
        allowed = await self._allowed(request, path)
        if allowed is None:
            response: Response = _error(404, "the admin API is not enabled", "disabled")
        elif not allowed:
            response = JSONResponse(
                {
                    "error": "unauthorized: send Authorization: Bearer <admin token>",
                    "code": "unauthorized",
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="agent-router"'},
            )
        else:
            await self.app(child, receive, send)
            return
        await response(child, receive, send)

    async def _allowed(self, conn: HTTPConnection, path: str) -> bool | None:
        """None: API off; False: refused; True: go on."""
        if path == "/metrics" and self.metrics_public:
            return True
        token = authorization_bearer(conn)
        if path == "/publish" and self.publish_token is not None and token is not None:
            if hmac.compare_digest(token.encode(), self.publish_token.encode()):
                return True
        if not self.enabled:
            return None if path != "/publish" or self.publish_token is None else False
        if path == "/openapi.json":
            return True
        if self.admin_token is not None and token is not None:
            if hmac.compare_digest(token.encode(), self.admin_token.encode()):
                return True
        if self.authorize_admin is not None:
            answer = self.authorize_admin(conn)
            if inspect.isawaitable(answer):
                answer = await answer
            return bool(answer)
        return False

    def _guard(self, endpoint: Endpoint) -> Endpoint:
        """Bad input becomes a 400 and an unreachable store a 503, never a bare 500."""

        async def guarded(request: Request) -> Response:
            try:
                return await endpoint(request)
            except _Problem as problem:
                return _error(problem.status, problem.detail, problem.code, **problem.extra)
            except InvalidFilter as exc:
                return _error(400, str(exc), "bad_request")
            except _UNAVAILABLE as exc:
                logger.warning(
                    "admin %s %s: unavailable: %s", request.method, request.url.path, exc
                )
                return _error(503, f"unavailable: {exc}", "unavailable")

        return guarded

    # ------------------------------------------------------------------ dead letters

    async def list_dead_letters(self, request: Request) -> Response:
        params = _query(request, _LIST_PARAMS)
        where = _filter(params, event_id=params.get("event_id"))
        limit = _integer(params.get("limit"), "limit", 1, MAX_PAGE, default=100)
        stores = await self.router.dead_letter_stores()
        page = await list_all(stores, where, limit=limit, cursor=params.get("cursor"))
        return JSONResponse(
            {"items": [record.to_dict() for record in page.items], "next_cursor": page.next_cursor}
        )

    async def get_dead_letter(self, request: Request) -> Response:
        record, _ = await self._find(request)
        return JSONResponse(record.to_dict())

    async def delete_dead_letter(self, request: Request) -> Response:
        record, store = await self._find(request)
        deleted = await store.delete(record.id)
        return JSONResponse({"deleted": int(deleted)})

    async def replay_one(self, request: Request) -> Response:
        record_id = _record_id(request)
        await _json_object(request, frozenset())  # no fields; rejects a malformed body
        try:
            result = await self.router.replay(record_id)
        except KeyError:
            raise _not_found(record_id) from None
        dead_letter: dict[str, Any] | None = None
        if result.dead_letter_id is not None:
            found = await self.router.find_dead_letter(result.dead_letter_id)
            if found is not None:
                dead_letter = found[0].to_dict()
        return JSONResponse(
            {
                "accepted": result.accepted,
                "seq": result.seq,
                "reason": result.reason,
                "dead_letter": dead_letter,
            }
        )

    async def replay_many(self, request: Request) -> Response:
        body = await _json_object(request, _REPLAY_FIELDS)
        where = _filter(body)
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise _bad(f"dry_run must be true or false, got {_show(dry_run)}")
        limit = _integer(body.get("max"), "max", 1, MAX_REPLAY, default=DEFAULT_REPLAY)
        rate = _number(body.get("rate"), "rate", MAX_RATE, default=DEFAULT_RATE)
        report = await self.router.replay_many(where, dry_run=dry_run, limit=limit, rate=rate)
        return JSONResponse(report.to_dict())

    async def purge(self, request: Request) -> Response:
        body = await _json_object(request, _PURGE_FIELDS)
        before = None
        everything = False
        if body.get("older_than") is not None:
            age = parse_duration(body["older_than"])
            # An age of 0 is "everything there is now", not "strictly before this
            # millisecond", which would spare a record written in it.
            everything = age == 0
            before = None if everything else time.time() - age
        where = _filter(body, before=before)
        if where == DeadLetterFilter() and not everything:
            raise _bad(
                'purge needs a filter or older_than; to discard everything send {"older_than": 0}'
            )
        deleted = 0
        for store in await self.router.dead_letter_stores():
            deleted += await store.purge(where)
        return JSONResponse({"deleted": deleted})

    async def _find(self, request: Request) -> tuple[DeadLetterRecord, DeadLetterStore]:
        record_id = _record_id(request)
        found = await self.router.find_dead_letter(record_id)
        if found is None:
            raise _not_found(record_id)
        return found

    # ------------------------------------------------------------------ events

    async def lookup_event(self, request: Request) -> Response:
        """What became of one event: accepted (thread, seq, how many connections of
        this process it was queued for, whether history still holds it), dead-lettered
        (the records), or both (an accepted final event nobody received)."""
        event_id = request.path_params["event_id"]
        if not is_event_id(event_id):
            raise _bad(f"{_show(event_id)} is not an event id (1..128 of [A-Za-z0-9_.:-])")
        params = _query(request, frozenset({"thread_id"}))
        hint = params.get("thread_id")
        if hint is not None and not is_thread_id(hint):
            raise _bad(f"thread_id {_show(hint)} is not a thread id")
        accepted: dict[str, Any] | None = None
        known = self.router.accepted_event(event_id)
        if known is not None:
            thread_id, seq, queued, listening = known
            in_history = await self.router.backend.find_event(thread_id, event_id) is not None
            # The memory backend hands the frame to the connections inside commit, so
            # its count is exact; a scale-out backend fans out later, in every process.
            local = isinstance(self.router.backend, MemoryBackend)
            accepted = {
                "thread_id": thread_id,
                "seq": seq,
                "delivered_to": queued if local else None,
                "owner_connected": listening,
                "in_history": in_history,
            }
        elif hint is not None:
            seq_found = await self.router.backend.find_event(hint, event_id)
            if seq_found is not None:
                accepted = {
                    "thread_id": hint,
                    "seq": seq_found,
                    "delivered_to": None,
                    "owner_connected": None,
                    "in_history": True,
                }
        stores = await self.router.dead_letter_stores()
        page = await list_all(stores, DeadLetterFilter(event_id=event_id), limit=100)
        records = [record.to_dict() for record in page.items]
        if accepted is None and not records:
            raise _Problem(
                404,
                "not_found",
                f"event {event_id!r} is neither among the recently accepted events of this "
                "process nor in the dead-letter store; if it was accepted earlier, pass "
                "?thread_id= to search that thread's history",
                event_id=event_id,
            )
        return JSONResponse(
            {
                "event_id": event_id,
                "status": "accepted" if accepted is not None else "dead_lettered",
                "accepted": accepted,
                "dead_letters": records,
                "explanation": _explain(event_id, accepted, records),
            }
        )

    # ------------------------------------------------------------------ figures

    async def _stored(self) -> dict[str, int] | None:
        """Records in the stores now, by reason; None when a store does not answer."""
        try:
            return await count_all(await self.router.dead_letter_stores())
        except _UNAVAILABLE as exc:
            logger.warning("dead-letter counts unavailable: %s", exc)
            return None

    async def stats(self, request: Request) -> Response:
        figures = self.router.snapshot()
        figures["dead_letters_stored"] = await self._stored()
        return JSONResponse(figures)

    async def metrics(self, request: Request) -> Response:
        try:
            from prometheus_client import CONTENT_TYPE_LATEST
        except ImportError:
            raise _Problem(
                501,
                "unavailable",
                "GET /metrics needs prometheus-client: pip install 'agent-event-router[cli]'",
            ) from None
        text = render_metrics(self.router, await self._stored())
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(request.scope.get("root_path", self.root_path)))

    # ------------------------------------------------------------------ publish

    async def publish(self, request: Request) -> Response:
        body = await _read_body(request)
        if body is None:
            raise _Problem(413, "too_large", f"body over {_MAX_BODY} bytes")
        result = await self.router.publish(body)
        return JSONResponse(result.to_dict(), status_code=202 if result else 422)


# --------------------------------------------------------------------------- input


def _bad(detail: str) -> _Problem:
    return _Problem(400, "bad_request", detail)


def _not_found(record_id: str) -> _Problem:
    return _Problem(404, "not_found", f"no dead letter with id {record_id!r}", id=record_id)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _record_id(request: Request) -> str:
    record_id: str = request.path_params["record_id"]
    if not is_dead_letter_id(record_id):
        raise _bad(f"{_show(record_id)} is not a dead-letter id (32 hex characters)")
    return record_id


def _query(request: Request, allowed: frozenset[str]) -> dict[str, str]:
    """Query parameters, empty ones dropped; an unknown or repeated one is a 400."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise _bad(
                f"unknown query parameter {_show(name)}; expected {', '.join(sorted(allowed))}"
            )
        if name in params:
            raise _bad(f"query parameter {name!r} given twice")
        if value != "":
            params[name] = value
    return params


async def _json_object(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``); anything else is a 400."""
    body = await _read_body(request)
    if body is None:
        raise _Problem(413, "too_large", f"body over {_MAX_BODY} bytes")
    if not body.strip():
        return {}
    try:
        data = pydantic_core.from_json(body)
    except ValueError as exc:
        raise _bad(f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise _bad(f"body must be a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        expected = ", ".join(sorted(allowed)) or "no fields"
        raise _bad(f"unknown field {_show(unknown[0])} in the body; expected {expected}")
    return data


def _filter(
    values: Mapping[str, Any], *, before: float | None = None, event_id: str | None = None
) -> DeadLetterFilter:
    """A filter from query parameters or a body. Raises InvalidFilter (a 400)."""
    since = values.get("since")
    return DeadLetterFilter(
        reason=values.get("reason"),
        user_id=values.get("user_id"),
        thread_id=values.get("thread_id"),
        run_id=values.get("run_id"),
        since=None if since is None else parse_since(since),
        before=before,
        event_id=event_id,
    )


def _integer(value: Any, name: str, low: int, high: int, *, default: int) -> int:
    if value is None:
        return default
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value)
    if number is None or not low <= number <= high:
        raise _bad(f"{name} must be an integer from {low} to {high}, got {_show(value)}")
    return number


def _number(value: Any, name: str, high: float, *, default: float) -> float:
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= high
    ):
        raise _bad(f"{name} must be a number above 0 and at most {high:g}, got {_show(value)}")
    return float(value)


async def _read_body(request: Request) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's 404 (no such endpoint) and 405 (wrong method), as JSON."""
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    detail = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(
        {"error": detail, "code": code}, status_code=exc.status_code, headers=exc.headers
    )


# --------------------------------------------------------------------------- output


def _explain(event_id: str, accepted: dict[str, Any] | None, records: list[dict[str, Any]]) -> str:
    """One paragraph for "why did user U not get event E"."""
    sentences: list[str] = []
    if accepted is not None:
        where = f"accepted as seq {accepted['seq']} of thread {accepted['thread_id']!r}"
        handed = accepted["delivered_to"]
        connected = accepted["owner_connected"]
        if handed is None and connected is None:
            sentences.append(f"Event {event_id!r} was {where} (found in its history).")
        elif handed is None:
            sentences.append(
                f"Event {event_id!r} was {where} and fanned out through the scale-out "
                "backend; the thread's owner "
                + ("had" if connected else "had no")
                + " live connection in any process when it was published."
            )
        elif handed:
            sentences.append(
                f"Event {event_id!r} was {where} and queued for {handed} connection(s) of the "
                "thread's owner in this process."
            )
        else:
            sentences.append(
                f"Event {event_id!r} was {where}, but no connection of the thread's owner in "
                "this process was subscribed to that thread when it was published."
            )
        if accepted["in_history"]:
            sentences.append("It is still in history: a client resuming with after_seq gets it.")
        else:
            sentences.append("It is no longer in history (history_size / history_ttl).")
    for record in records:
        if record["reason"] == "no_recipient":
            sentences.append(f"Dead letter {record['id']}: {record['detail']}.")
        else:
            sentences.append(
                f"Event {event_id!r} was rejected as {record['reason']}: {record['detail']} "
                f"(dead letter {record['id']}, attempts {record['attempts']})."
            )
    return " ".join(sentences)
