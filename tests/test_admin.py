"""The admin HTTP API (DESIGN §6, §7, §10), in process through httpx's ASGI transport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router import EventRouter, new_run_id, new_thread_id
from router._sqlite_store import SQLiteDeadLetterStore
from router.admin import AdminAPI
from router.deadletters import RAW_EVENT_LIMIT, DeadLetterRecord
from router.ids import dead_letter_id_time, new_dead_letter_id

from .conftest import ADMIN_TOKEN, make_app
from .helpers import (
    close_connection,
    drain,
    ev,
    new_thread,
    open_connection,
    start_run,
    thinking,
)

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
BASE = "http://admin.test"


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


def close_all(router: EventRouter) -> None:
    """Close the in-process connections a test opened (their outboxes too)."""
    for conn in router.hub.connections():
        close_connection(conn)


@pytest.fixture
async def router() -> AsyncIterator[EventRouter]:
    router = EventRouter(dead_letters="memory://", spool_dead_letters="memory://")
    async with router:
        yield router
        close_all(router)


@pytest.fixture
async def client(router: EventRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(router, publish_token="pub-secret")) as client:
        yield client


async def lost_events(router: EventRouter, count: int) -> tuple[str, str, list[str]]:
    """``count`` events of one run, rejected as thread_not_found: (thread, run, event ids)."""
    thread = new_thread_id("later")
    run = new_run_id(thread)
    event_ids = []
    for index in range(count):
        event = ev("agent_started", run) if index == 0 else thinking(run, f"step {index}")
        result = await router.publish(event)
        assert result.reason == "thread_not_found"
        event_ids.append(result.event_id)
    return thread, run, event_ids


# --------------------------------------------------------------------------- authentication

ENDPOINTS = [
    ("GET", "/_router/dead-letters"),
    ("GET", "/_router/dead-letters/{id}"),
    ("DELETE", "/_router/dead-letters/{id}"),
    ("POST", "/_router/dead-letters/{id}/replay"),
    ("POST", "/_router/dead-letters/replay"),
    ("POST", "/_router/dead-letters/purge"),
    ("GET", "/_router/events/{event_id}"),
    ("GET", "/_router/stats"),
    ("GET", "/_router/metrics"),
    ("POST", "/_router/publish"),
]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-token"},
        {"authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"authorization": f"Basic {ADMIN_TOKEN}"},
        {"authorization": ADMIN_TOKEN},
        {"authorization": "Bearer "},
    ],
    ids=["none", "wrong", "longer", "basic", "no-scheme", "empty"],
)
async def test_without_the_admin_token_every_endpoint_is_401_and_shows_no_record(
    router: EventRouter, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    secret = "a-secret-in-the-payload"
    result = await router.publish(thinking("registry", secret))
    assert result.dead_letter_id is not None
    for method, template in ENDPOINTS:
        path = template.format(id=result.dead_letter_id, event_id=result.event_id)
        body = json.dumps({"older_than": 0}) if method == "POST" else None
        response = await client.request(method, path, headers=headers, content=body)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json() == {
            "error": "unauthorized: send Authorization: Bearer <admin token>",
            "code": "unauthorized",
        }
        for leaked in (secret, result.dead_letter_id, result.event_id, "registry"):
            assert leaked not in response.text
    # Nothing was replayed, deleted or purged by the refused requests.
    assert await router.dead_letters.get(result.dead_letter_id) is not None
    assert router.stats.published == 1


async def test_admin_api_is_off_without_a_token_or_hook(router: EventRouter) -> None:
    async with client_for(make_app(router, admin_token=None)) as client:
        for method, template in ENDPOINTS:
            if template.endswith("/publish"):
                continue
            path = template.format(id=new_dead_letter_id(), event_id="e1")
            response = await client.request(method, path, headers=AUTH)
            assert response.status_code == 404, path
            assert response.json()["code"] == "disabled"
        assert (await client.get("/_router/openapi.json")).status_code == 404


async def test_authorize_admin_hook_replaces_the_token(router: EventRouter) -> None:
    async def allow(conn: Any) -> bool:
        return conn.headers.get("x-role") == "operator"

    async with client_for(make_app(router, admin_token=None, authorize_admin=allow)) as client:
        assert (await client.get("/_router/stats")).status_code == 401
        response = await client.get("/_router/stats", headers={"x-role": "operator"})
        assert response.status_code == 200


async def test_publish_token_publishes_but_reads_nothing(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    thread = await new_thread(router, "alice")
    headers = {"authorization": "Bearer pub-secret"}
    response = await client.post(
        "/_router/publish", json=ev("agent_started", new_run_id(thread)), headers=headers
    )
    assert response.status_code == 202 and response.json()["seq"] == 1
    rejected = await client.post("/_router/publish", json=thinking("registry"), headers=headers)
    assert rejected.status_code == 422 and rejected.json()["reason"] == "invalid_id"
    assert (await client.get("/_router/dead-letters", headers=headers)).status_code == 401
    assert (await client.get("/_router/stats", headers=headers)).status_code == 401


# --------------------------------------------------------------------------- listing


async def test_list_is_newest_first_with_cursor_paging_while_records_are_added(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    first = [(await router.publish(thinking("registry"))).dead_letter_id for _ in range(5)]
    page = (await client.get("/_router/dead-letters?limit=2", headers=AUTH)).json()
    assert [item["id"] for item in page["items"]] == first[::-1][:2]
    # Newer records arrive between pages: later pages neither shift nor repeat.
    for _ in range(3):
        await router.publish(thinking("registry"))
    seen = [item["id"] for item in page["items"]]
    while page["next_cursor"] is not None:
        page = (
            await client.get(
                "/_router/dead-letters",
                params={"limit": 2, "cursor": page["next_cursor"]},
                headers=AUTH,
            )
        ).json()
        seen += [item["id"] for item in page["items"]]
    assert seen == first[::-1]


async def test_list_filters_by_reason_user_thread_run_and_time(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    thread = await new_thread(router, "alice")
    run = await start_run(router, thread)
    not_owner = await router.publish(thinking(run, user_id="bob"))
    invalid = await router.publish(thinking("registry"))
    lost_thread, lost_run, _ = await lost_events(router, 2)

    async def ids(**params: Any) -> list[str]:
        response = await client.get("/_router/dead-letters", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await ids(reason="not_owner") == [not_owner.dead_letter_id]
    assert await ids(user_id="bob") == [not_owner.dead_letter_id]
    assert await ids(thread_id=thread) == [not_owner.dead_letter_id]
    assert len(await ids(run_id=lost_run)) == 2
    assert len(await ids(thread_id=lost_thread, reason="thread_not_found")) == 2
    assert await ids(reason="invalid_id", since="1h") == [invalid.dead_letter_id]
    assert await ids(since="2000-01-01T00:00:00Z", reason="invalid_id") == [invalid.dead_letter_id]
    assert await ids(since="2999-01-01T00:00:00Z") == []
    assert await ids(since="4102444800") == []  # unix seconds, 2100
    assert len(await ids(reason="", since="")) == 4  # empty values are no filter


async def test_get_and_delete_one_record(router: EventRouter, client: httpx.AsyncClient) -> None:
    result = await router.publish(thinking("registry"))
    response = await client.get(f"/_router/dead-letters/{result.dead_letter_id}", headers=AUTH)
    record = response.json()
    assert response.status_code == 200
    assert set(record) == {
        "id", "reason", "detail", "event", "event_raw", "event_id", "event_type", "run_id",
        "thread_id", "user_id", "created_at", "attempts", "history",
    }  # fmt: skip
    assert record["reason"] == "invalid_id" and record["event_id"] == result.event_id
    assert record["event"]["run_id"] == "registry" and record["event_raw"] is False
    assert record["attempts"] == 1 and record["history"] == []

    deleted = await client.delete(f"/_router/dead-letters/{result.dead_letter_id}", headers=AUTH)
    assert deleted.json() == {"deleted": 1}
    again = await client.delete(f"/_router/dead-letters/{result.dead_letter_id}", headers=AUTH)
    assert again.status_code == 404 and again.json()["code"] == "not_found"
    missing = await client.get(f"/_router/dead-letters/{result.dead_letter_id}", headers=AUTH)
    assert missing.status_code == 404
    assert result.dead_letter_id in missing.json()["error"]


async def test_an_event_that_is_not_json_is_kept_as_capped_text_with_a_flag(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    short = await client.post("/_router/publish", content=b"{not json", headers=AUTH)
    long_text = "x" * (RAW_EVENT_LIMIT + 5000)
    long = await client.post("/_router/publish", content=long_text.encode(), headers=AUTH)
    assert short.status_code == long.status_code == 422
    records = {}
    for answer in (short.json(), long.json()):
        response = await client.get(
            f"/_router/dead-letters/{answer['dead_letter_id']}", headers=AUTH
        )
        records[answer["dead_letter_id"]] = response.json()
    first, second = records[short.json()["dead_letter_id"]], records[long.json()["dead_letter_id"]]
    assert first["event"] == "{not json" and first["event_raw"] is True
    assert first["reason"] == "malformed_event"
    assert second["event_raw"] is True and second["event"] == "x" * RAW_EVENT_LIMIT
    assert f"first {RAW_EVENT_LIMIT} of {len(long_text)} characters" in second["detail"]


# --------------------------------------------------------------------------- replay


async def test_replay_one_accepted_removes_the_record(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    thread, _, event_ids = await lost_events(router, 1)
    [record] = (await client.get("/_router/dead-letters", headers=AUTH)).json()["items"]
    await router.threads.create(thread, "alice")
    alice = open_connection(router, "alice")
    response = await client.post(f"/_router/dead-letters/{record['id']}/replay", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"accepted": True, "seq": 1, "reason": None, "dead_letter": None}
    [frame] = drain(alice)
    assert frame["event_id"] == event_ids[0] and frame["seq"] == 1
    assert await router.dead_letters.get(record["id"]) is None


async def test_replay_that_fails_again_keeps_the_record_with_attempts_2_and_history(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    thread, _, _ = await lost_events(router, 1)
    [record] = (await client.get("/_router/dead-letters", headers=AUTH)).json()["items"]
    first_detail = record["detail"]
    # Still missing: the same reason again.
    response = await client.post(f"/_router/dead-letters/{record['id']}/replay", headers=AUTH)
    answer = response.json()
    assert response.status_code == 200
    assert answer["accepted"] is False and answer["seq"] is None
    assert answer["reason"] == "thread_not_found"
    again = answer["dead_letter"]
    assert again["id"] == record["id"] and again["attempts"] == 2
    assert [item["reason"] for item in again["history"]] == ["thread_not_found"]
    assert again["history"][0]["detail"] == first_detail and again["history"][0]["at"]

    # Now the thread exists but belongs to bob while the event names alice: a new reason.
    await router.threads.create(thread, "bob")
    event = dict(again["event"], user_id="alice")
    stored = await router.dead_letters.get(record["id"])
    assert stored is not None
    stored.event = event
    await router.dead_letters.update(stored)
    answer = (
        await client.post(f"/_router/dead-letters/{record['id']}/replay", headers=AUTH)
    ).json()
    assert answer["reason"] == "not_owner"
    assert answer["dead_letter"]["attempts"] == 3
    assert [h["reason"] for h in answer["dead_letter"]["history"]] == [
        "thread_not_found",
        "thread_not_found",
    ]
    assert answer["dead_letter"]["event_id"] == record["event_id"]


async def test_bulk_replay_by_reason_with_dry_run_max_and_report(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    thread, _, event_ids = await lost_events(router, 4)
    stuck = await router.publish(thinking("registry"))

    dry = await client.post(
        "/_router/dead-letters/replay",
        json={"reason": "thread_not_found", "dry_run": True},
        headers=AUTH,
    )
    assert dry.json() == {"matched": 4, "accepted": 0, "rejected": 0, "skipped": 4}
    assert router.stats.published == 5  # a dry run replays nothing

    await router.threads.create(thread, "alice")
    alice = open_connection(router, "alice")
    some = await client.post(
        "/_router/dead-letters/replay",
        json={"reason": "thread_not_found", "dry_run": False, "max": 3, "rate": 1000},
        headers=AUTH,
    )
    # The oldest three, so the run's agent_started goes first; matched shows the backlog.
    assert some.json() == {"matched": 4, "accepted": 3, "rejected": 0, "skipped": 0}
    rest = await client.post(
        "/_router/dead-letters/replay", json={"thread_id": thread}, headers=AUTH
    )
    assert rest.json() == {"matched": 1, "accepted": 1, "rejected": 0, "skipped": 0}
    frames = drain(alice)
    assert [f["event_id"] for f in frames] == event_ids  # oldest first: in order
    assert [f["seq"] for f in frames] == [1, 2, 3, 4]

    everything = await client.post("/_router/dead-letters/replay", json={}, headers=AUTH)
    assert everything.json() == {"matched": 1, "accepted": 0, "rejected": 1, "skipped": 0}
    record = await router.dead_letters.get(stuck.dead_letter_id or "")
    assert record is not None and record.attempts == 2


# --------------------------------------------------------------------------- purge


async def test_purge_everything_includes_a_record_of_this_very_millisecond(
    router: EventRouter, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = await router.publish(thinking("registry"))
    record = await router.dead_letters.get(kept.dead_letter_id or "")
    assert record is not None
    # The purge runs in the millisecond the record was written in.
    frozen = dead_letter_id_time(record.id)
    monkeypatch.setattr("router.admin.time.time", lambda: frozen)
    everything = await client.post(
        "/_router/dead-letters/purge", json={"older_than": 0}, headers=AUTH
    )
    assert everything.json() == {"deleted": 1}


async def test_purge_by_filter_and_age(router: EventRouter, client: httpx.AsyncClient) -> None:
    await lost_events(router, 2)
    kept = await router.publish(thinking("registry"))
    young = await client.post(
        "/_router/dead-letters/purge", json={"older_than": "1h"}, headers=AUTH
    )
    assert young.json() == {"deleted": 0}
    by_reason = await client.post(
        "/_router/dead-letters/purge", json={"reason": "thread_not_found"}, headers=AUTH
    )
    assert by_reason.json() == {"deleted": 2}
    assert await router.dead_letters.counts() == {"invalid_id": 1}
    everything = await client.post(
        "/_router/dead-letters/purge", json={"older_than": 0}, headers=AUTH
    )
    assert everything.json() == {"deleted": 1}
    assert await router.dead_letters.get(kept.dead_letter_id or "") is None


# --------------------------------------------------------------------------- bad input

BAD_REQUESTS = [
    ("GET", "/_router/dead-letters?cursor=not-a-cursor", None, "cursor"),
    ("GET", "/_router/dead-letters?cursor=" + "0" * 31, None, "cursor"),
    ("GET", "/_router/dead-letters?reason=nope", None, "unknown reason 'nope'"),
    ("GET", "/_router/dead-letters?limit=-1", None, "limit must be an integer from 1 to 1000"),
    ("GET", "/_router/dead-letters?limit=0", None, "limit"),
    ("GET", "/_router/dead-letters?limit=1001", None, "limit"),
    ("GET", "/_router/dead-letters?limit=ten", None, "limit"),
    ("GET", "/_router/dead-letters?limit=99999999999999999999999", None, "limit"),
    ("GET", "/_router/dead-letters?since=yesterday", None, "bad since"),
    ("GET", "/_router/dead-letters?since=nan", None, "since"),
    ("GET", "/_router/dead-letters?user_id=" + "u" * 600, None, "user_id"),
    ("GET", "/_router/dead-letters?reasons=invalid_id", None, "unknown query parameter"),
    ("GET", "/_router/dead-letters?limit=1&limit=2", None, "given twice"),
    ("GET", "/_router/dead-letters/not-an-id", None, "not a dead-letter id"),
    ("DELETE", "/_router/dead-letters/xyz", None, "not a dead-letter id"),
    ("POST", "/_router/dead-letters/xyz/replay", None, "not a dead-letter id"),
    ("POST", "/_router/dead-letters/replay", b"{not json", "not valid JSON"),
    ("POST", "/_router/dead-letters/replay", b"[1, 2]", "JSON object"),
    ("POST", "/_router/dead-letters/replay", b'"reason"', "JSON object"),
    ("POST", "/_router/dead-letters/replay", b"[" * 100_000, "not valid JSON"),
    ("POST", "/_router/dead-letters/replay", b'{"reason": "nope"}', "unknown reason"),
    ("POST", "/_router/dead-letters/replay", b'{"reason": 5}', "unknown reason"),
    ("POST", "/_router/dead-letters/replay", b'{"dry_run": "yes"}', "dry_run"),
    ("POST", "/_router/dead-letters/replay", b'{"max": -1}', "max must be"),
    ("POST", "/_router/dead-letters/replay", b'{"max": 1.5}', "max must be"),
    ("POST", "/_router/dead-letters/replay", b'{"max": true}', "max must be"),
    ("POST", "/_router/dead-letters/replay", b'{"rate": 0}', "rate must be"),
    ("POST", "/_router/dead-letters/replay", b'{"since": "soon"}', "bad since"),
    ("POST", "/_router/dead-letters/replay", b'{"thread_id": ""}', "thread_id"),
    ("POST", "/_router/dead-letters/replay", b'{"reasons": "x"}', "unknown field 'reasons'"),
    ("POST", "/_router/dead-letters/purge", b"{}", "purge needs a filter"),
    ("POST", "/_router/dead-letters/purge", b"", "purge needs a filter"),
    ("POST", "/_router/dead-letters/purge", b"{oops", "not valid JSON"),
    ("POST", "/_router/dead-letters/purge", b'{"older_than": "7 days"}', "bad duration"),
    ("POST", "/_router/dead-letters/purge", b'{"older_than": -5}', "bad duration"),
    ("POST", "/_router/dead-letters/purge", b'{"older_than": null, "x": 1}', "unknown field"),
    ("POST", f"/_router/dead-letters/{'0' * 32}/replay", b"{bad", "not valid JSON"),
    ("GET", "/_router/events/bad%20id", None, "not an event id"),
    ("GET", "/_router/events/e1?thread_id=nope", None, "not a thread id"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    BAD_REQUESTS,
    ids=[f"{method} {path[9:40]} {body!r:.20}" for method, path, body, _ in BAD_REQUESTS],
)
async def test_bad_input_is_a_400_with_a_clear_message(
    router: EventRouter,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: bytes | None,
    message: str,
) -> None:
    await router.publish(thinking("registry"))
    response = await client.request(method, path, content=body, headers=AUTH)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["code"] == "bad_request"
    assert message in answer["error"]
    assert router.stats.published == 1  # nothing was replayed


async def test_unknown_paths_and_methods_answer_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/_router/nothing-here", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong = await client.put("/_router/stats", headers=AUTH)
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
    assert "GET" in wrong.headers["allow"]


async def test_a_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/_router/dead-letters/replay", content=b" " * (1024 * 1024 + 1), headers=AUTH
    )
    assert response.status_code == 413 and response.json()["code"] == "too_large"


# --------------------------------------------------------------------------- the spool store


async def test_spool_records_are_listed_shown_replayed_and_purged_with_the_others(
    tmp_path: Path,
) -> None:
    # Records an earlier run wrote to the spool file while its Redis was down.
    spool_url = f"sqlite:///{tmp_path / 'spool.db'}"
    thread = new_thread_id("spooled")
    run = new_run_id(thread)
    earlier = SQLiteDeadLetterStore(spool_url)
    await earlier.open()
    spooled_ids = []
    for index, event in enumerate([ev("agent_started", run), thinking(run)]):
        record = DeadLetterRecord(
            id=new_dead_letter_id(),
            reason="backend_unavailable",
            detail="backend unreachable and the spool is full",
            event={**event, "event_id": f"spooled-{index}"},
            event_raw=False,
            event_id=f"spooled-{index}",
            event_type=event["type"],
            run_id=run,
            thread_id=thread,
            user_id=None,
            created_at=0.0,
        )
        await earlier.add(record)
        spooled_ids.append(record.id)
    await earlier.close()

    router = EventRouter(dead_letters="memory://", spool_dead_letters=spool_url)
    async with router, client_for(make_app(router)) as client:
        ordinary = await router.publish(thinking("registry"))
        listed = (await client.get("/_router/dead-letters", headers=AUTH)).json()["items"]
        assert [item["id"] for item in listed] == [ordinary.dead_letter_id, *spooled_ids[::-1]]
        shown = await client.get(f"/_router/dead-letters/{spooled_ids[0]}", headers=AUTH)
        assert shown.json()["reason"] == "backend_unavailable"
        stats = (await client.get("/_router/stats", headers=AUTH)).json()
        assert stats["dead_letters_stored"] == {"backend_unavailable": 2, "invalid_id": 1}

        await router.threads.create(thread, "alice")
        alice = open_connection(router, "alice")
        report = await client.post(
            "/_router/dead-letters/replay", json={"reason": "backend_unavailable"}, headers=AUTH
        )
        assert report.json() == {"matched": 2, "accepted": 2, "rejected": 0, "skipped": 0}
        assert [f["event_id"] for f in drain(alice)] == ["spooled-0", "spooled-1"]
        assert router.spool_dead_letters is not None
        assert await router.spool_dead_letters.counts() == {}

        purged = await client.post(
            "/_router/dead-letters/purge", json={"older_than": 0}, headers=AUTH
        )
        assert purged.json() == {"deleted": 1}
        close_all(router)


# --------------------------------------------------------------------------- event lookup


async def test_event_lookup_accepted_with_the_connections_it_was_handed_to(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    thread = await new_thread(router, "alice")
    run = await start_run(router, thread)
    open_connection(router, "alice")
    open_connection(router, "alice", threads=[thread])
    open_connection(router, "alice", threads=[new_thread_id()])  # another thread: not handed
    result = await router.publish(thinking(run))
    response = await client.get(f"/_router/events/{result.event_id}", headers=AUTH)
    answer = response.json()
    assert response.status_code == 200
    assert answer["status"] == "accepted" and answer["dead_letters"] == []
    assert answer["accepted"] == {
        "thread_id": thread,
        "seq": 2,
        "delivered_to": 2,
        "owner_connected": True,
        "in_history": True,
    }
    assert "queued for 2 connection(s)" in answer["explanation"]


async def test_event_lookup_explains_a_final_event_that_reached_nobody(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    thread = await new_thread(router, "carol")
    run = await start_run(router, thread)
    result = await router.publish(ev("agent_completed", run))
    assert result.accepted and result.dead_letter_id is not None
    answer = (await client.get(f"/_router/events/{result.event_id}", headers=AUTH)).json()
    assert answer["status"] == "accepted"
    assert answer["accepted"]["delivered_to"] == 0 and answer["accepted"]["seq"] == 2
    assert answer["accepted"]["owner_connected"] is False
    assert [r["reason"] for r in answer["dead_letters"]] == ["no_recipient"]
    assert "no connection of the thread's owner" in answer["explanation"]


async def test_event_lookup_of_a_rejected_event_answers_the_record(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    thread = await new_thread(router, "alice")
    run = await start_run(router, thread)
    result = await router.publish(thinking(run, user_id="bob", event_id="why-not-bob"))
    answer = (await client.get("/_router/events/why-not-bob", headers=AUTH)).json()
    assert answer["status"] == "dead_lettered" and answer["accepted"] is None
    [record] = answer["dead_letters"]
    assert record["id"] == result.dead_letter_id and record["reason"] == "not_owner"
    assert "rejected as not_owner" in answer["explanation"]


async def test_event_lookup_searches_a_threads_history_when_told_the_thread(
    tmp_path: Path,
) -> None:
    # A second router over the same backend stands for another process: it never saw
    # the publish, so it finds the event through the thread's history only.
    first = EventRouter(dead_letters="memory://", spool_dead_letters="memory://")
    async with first:
        thread = await new_thread(first, "alice")
        run = await start_run(first, thread)
        result = await first.publish(thinking(run, event_id="seen-elsewhere"))
        other = EventRouter(
            backend=first.backend, dead_letters="memory://", spool_dead_letters="memory://"
        )
        api = AdminAPI(other, admin_token=ADMIN_TOKEN, root_path="")
        async with client_for(api) as client:
            unknown = await client.get("/events/seen-elsewhere", headers=AUTH)
            assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
            assert "thread_id" in unknown.json()["error"]
            found = await client.get(
                "/events/seen-elsewhere", params={"thread_id": thread}, headers=AUTH
            )
            assert found.status_code == 200
            assert found.json()["accepted"] == {
                "thread_id": thread,
                "seq": result.seq,
                "delivered_to": None,
                "owner_connected": None,
                "in_history": True,
            }


# --------------------------------------------------------------------------- stats, metrics


async def test_stats_add_up(router: EventRouter, client: httpx.AsyncClient) -> None:
    thread = await new_thread(router, "alice")
    run = await start_run(router, thread)
    open_connection(router, "alice")
    await router.publish(thinking(run))
    await router.publish(thinking("registry"))
    await router.publish(b"nope")
    carol = await start_run(router, await new_thread(router, "carol"))
    await router.publish(ev("agent_completed", carol))
    stats = (await client.get("/_router/stats", headers=AUTH)).json()
    assert stats["published"] == 6
    assert stats["accepted"] == 4
    assert stats["rejected"] == {"invalid_id": 1, "malformed_event": 1}
    assert stats["published"] == stats["accepted"] + sum(stats["rejected"].values())
    assert stats["dead_letters"] == {"invalid_id": 1, "malformed_event": 1, "no_recipient": 1}
    assert stats["dead_letters_stored"] == stats["dead_letters"]
    assert stats["delivered"] == 1 and stats["connections"] == 1
    assert stats["process_id"].endswith(f":{__import__('os').getpid()}")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_in_prometheus_text_format(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    thread = await new_thread(router, "alice")
    run = await start_run(router, thread)
    await router.publish(thinking(run))
    await router.publish(thinking("registry"))
    response = await client.get("/_router/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples[("agent_router_published_total", ())] == 3
    assert samples[("agent_router_accepted_total", ())] == 2
    assert samples[("agent_router_rejected_total", (("reason", "invalid_id"),))] == 1
    assert samples[("agent_router_dead_letters_total", (("reason", "invalid_id"),))] == 1
    assert samples[("agent_router_dead_letters_stored", (("reason", "invalid_id"),))] == 1
    assert samples[("agent_router_connections", ())] == 0
    assert samples[("agent_router_publish_latency_seconds_count", ())] == 3
    assert samples[("agent_router_publish_latency_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("agent_router_publish_latency_seconds_sum", ())] > 0


async def test_metrics_public_and_two_routers_do_not_clash() -> None:
    one = EventRouter(dead_letters="memory://", spool_dead_letters="memory://")
    two = EventRouter(dead_letters="memory://", spool_dead_letters="memory://")
    async with one, two:
        await one.publish(thinking("registry"))
        async with (
            client_for(make_app(one, metrics_public=True)) as first,
            client_for(make_app(two)) as second,
        ):
            open_metrics = await first.get("/_router/metrics")
            assert open_metrics.status_code == 200
            assert _samples(open_metrics.text)[("agent_router_published_total", ())] == 1
            assert (await first.get("/_router/stats")).status_code == 401
            assert (await second.get("/_router/metrics")).status_code == 401
            closed = await second.get("/_router/metrics", headers=AUTH)
            assert _samples(closed.text)[("agent_router_published_total", ())] == 0


# --------------------------------------------------------------------------- OpenAPI


async def test_openapi_describes_every_route_and_is_valid(
    router: EventRouter, client: httpx.AsyncClient
) -> None:
    response = await client.get("/_router/openapi.json")  # no token needed: no data in it
    assert response.status_code == 200
    document = response.json()
    assert document["servers"] == [{"url": "/_router"}]
    described = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    api = AdminAPI(router, admin_token="x")
    served = {
        (method, route.path)
        for route in api.routes()
        for method in (route.methods or ())
        if method != "HEAD"
    }
    assert described == served
    import openapi_spec_validator as validator
    validator.validate(document)
