"""``agent-router dead-letters`` and ``events show``, against a store and a running server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from router import EventRouter, PublishResult, cli, new_run_id, new_thread_id

from .conftest import ADMIN_TOKEN, Server, serve
from .helpers import ev, thinking

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Filled:
    """What ``fill`` published: three rejections of different reasons."""

    thread: str
    lost: PublishResult  # thread_not_found, agent_started of ``thread``
    invalid: PublishResult  # invalid_id
    raw: PublishResult  # malformed_event, not JSON


async def fill(router: EventRouter) -> Filled:
    thread = new_thread_id("cli")
    lost = await router.publish(ev("agent_started", new_run_id(thread)))
    invalid = await router.publish(thinking("registry", user_id="bob"))
    raw = await router.publish(b"[bold]not json")
    return Filled(thread, lost, invalid, raw)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def run_async(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI in a worker thread: it is synchronous, and the server runs on this loop."""
    code = await anyio.to_thread.run_sync(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- --store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[str, Filled]]:
    url = f"sqlite:///{tmp_path / 'dead.db'}"
    router = EventRouter(dead_letters=url, spool_dead_letters="memory://")
    async with router:
        filled = await fill(router)
    yield url, filled


async def test_list_against_a_store(
    store: tuple[str, Filled], capsys: pytest.CaptureFixture[str]
) -> None:
    url, filled = store
    code, out, _ = await run_async(capsys, "dead-letters", "list", "--store", url, "--json")
    assert code == 0
    records = json.loads(out)
    assert [r["id"] for r in records] == [
        filled.raw.dead_letter_id,
        filled.invalid.dead_letter_id,
        filled.lost.dead_letter_id,
    ]
    assert records[0]["event"] == "[bold]not json" and records[0]["event_raw"] is True

    code, out, _ = await run_async(
        capsys, "dead-letters", "list", "--store", url, "--json", "--reason", "invalid_id"
    )
    assert [r["id"] for r in json.loads(out)] == [filled.invalid.dead_letter_id]
    code, out, _ = await run_async(
        capsys, "dead-letters", "list", "--store", url, "--json", "--user", "bob", "--since", "1h"
    )
    assert [r["id"] for r in json.loads(out)] == [filled.invalid.dead_letter_id]
    code, out, _ = await run_async(
        capsys, "dead-letters", "list", "--store", url, "--json", "--thread", filled.thread
    )
    assert [r["id"] for r in json.loads(out)] == [filled.lost.dead_letter_id]
    code, out, _ = await run_async(
        capsys, "dead-letters", "list", "--store", url, "--json", "--limit", "2"
    )
    assert len(json.loads(out)) == 2

    # The human table names every record and its reason; markup in data stays text.
    code, out, _ = await run_async(capsys, "dead-letters", "list", "--store", url)
    assert code == 0
    for result in (filled.raw, filled.invalid, filled.lost):
        assert result.dead_letter_id is not None and result.dead_letter_id in out
        assert result.reason in out
    assert "3 record(s)" in out


async def test_show_against_a_store(
    store: tuple[str, Filled], capsys: pytest.CaptureFixture[str]
) -> None:
    url, filled = store
    record_id = filled.lost.dead_letter_id or ""
    code, out, _ = await run_async(
        capsys, "dead-letters", "show", record_id, "--store", url, "--json"
    )
    assert code == 0
    record = json.loads(out)
    assert record["id"] == record_id and record["reason"] == "thread_not_found"
    assert record["event"]["type"] == "agent_started" and record["attempts"] == 1

    code, out, _ = await run_async(capsys, "dead-letters", "show", record_id, "--store", url)
    assert code == 0 and "thread_not_found" in out and "agent_started" in out

    code, out, err = await run_async(capsys, "dead-letters", "show", "0" * 32, "--store", url)
    assert code == 1 and out == "" and "no dead letter" in err


async def test_replay_against_a_store_is_refused_and_points_to_the_server(
    store: tuple[str, Filled], capsys: pytest.CaptureFixture[str]
) -> None:
    url, filled = store
    for argv in (
        ["dead-letters", "replay", filled.lost.dead_letter_id or "", "--store", url],
        ["dead-letters", "replay", "--reason", "thread_not_found", "--store", url],
    ):
        code, out, err = await run_async(capsys, *argv)
        assert code == 2 and "--server" in err
    code, out, _ = await run_async(capsys, "dead-letters", "list", "--store", url, "--json")
    assert len(json.loads(out)) == 3  # untouched


async def test_delete_and_purge_against_a_store(
    store: tuple[str, Filled], capsys: pytest.CaptureFixture[str]
) -> None:
    url, filled = store
    record_id = filled.raw.dead_letter_id or ""
    code, out, _ = await run_async(
        capsys, "dead-letters", "delete", record_id, "--store", url, "--json"
    )
    assert (code, json.loads(out)) == (0, {"deleted": 1})
    code, _, err = await run_async(capsys, "dead-letters", "delete", record_id, "--store", url)
    assert code == 1 and "no dead letter" in err

    code, out, _ = await run_async(
        capsys, "dead-letters", "purge", "--older-than", "7d", "--store", url, "--json"
    )
    assert (code, json.loads(out)) == (0, {"deleted": 0})
    code, out, _ = await run_async(
        capsys, "dead-letters", "purge", "--reason", "invalid_id", "--store", url
    )
    assert code == 0 and "deleted 1 record(s)" in out
    code, out, _ = await run_async(
        capsys, "dead-letters", "purge", "--older-than", "0s", "--store", url, "--json"
    )
    assert (code, json.loads(out)) == (0, {"deleted": 1})


async def test_events_show_against_a_store_finds_dead_letters_only(
    store: tuple[str, Filled], capsys: pytest.CaptureFixture[str]
) -> None:
    url, filled = store
    code, out, _ = await run_async(
        capsys, "events", "show", filled.invalid.event_id, "--store", url, "--json"
    )
    assert code == 0
    answer = json.loads(out)
    assert answer["status"] == "dead_lettered"
    assert [r["id"] for r in answer["dead_letters"]] == [filled.invalid.dead_letter_id]
    code, _, err = await run_async(capsys, "events", "show", "never-seen", "--store", url)
    assert code == 1 and "--server" in err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["list", "--since", "yesterday"], 2, "bad since"),
        (["list", "--limit", "0"], 2, "at least 1"),
        (["list", "--reason", "nope"], 2, "invalid choice"),
        (["purge"], 2, "purge needs --older-than"),
        (["purge", "--older-than", "a week"], 2, "bad duration"),
        (["replay"], 2, "replay needs an ID"),
        (["replay", "0" * 32, "--reason", "invalid_id"], 2, "not both"),
        (["list", "--token", "t"], 2, "--token goes with --server"),
        (["list", "--store", "ftp://x"], 2, "unknown dead-letter store URL"),
        (["list", "--store", "sqlite:///{tmp}/missing.db"], 3, "no dead-letter store at"),
        (["list", "--store", "x", "--server", "y"], 2, "not allowed with"),
    ],
)
def test_usage_errors_and_missing_stores(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    code: int,
    message: str,
) -> None:
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    if "--store" not in argv and "--server" not in argv:
        argv += ["--store", f"sqlite:///{tmp_path / 'none.db'}"]
    got, out, err = run(capsys, "dead-letters", *argv)
    assert (got, out) == (code, "")
    assert message in err
    assert not (tmp_path / "missing.db").exists()  # never created by a read


# --------------------------------------------------------------------------- --server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Server, Filled]]:
    router = EventRouter(
        dead_letters=f"sqlite:///{tmp_path / 'dead.db'}", spool_dead_letters="memory://"
    )
    async with serve(router) as server:
        yield server, await fill(router)


def remote(server: Server, *argv: str, token: str = ADMIN_TOKEN) -> list[str]:
    return [*argv, "--server", server.http, "--token", token]


async def test_list_show_replay_purge_against_a_server(
    server: tuple[Server, Filled], capsys: pytest.CaptureFixture[str]
) -> None:
    srv, filled = server
    router = srv.router
    assert router is not None
    code, out, _ = await run_async(capsys, *remote(srv, "dead-letters", "list", "--json"))
    assert code == 0
    assert [r["reason"] for r in json.loads(out)] == [
        "malformed_event",
        "invalid_id",
        "thread_not_found",
    ]
    code, out, _ = await run_async(
        capsys, *remote(srv, "dead-letters", "show", filled.raw.dead_letter_id or "", "--json")
    )
    assert code == 0 and json.loads(out)["event"] == "[bold]not json"

    # Rejected again: exit 1, the record keeps attempts 2 and a history entry.
    lost_id = filled.lost.dead_letter_id or ""
    code, out, _ = await run_async(
        capsys, *remote(srv, "dead-letters", "replay", lost_id, "--json")
    )
    answer = json.loads(out)
    assert code == 1 and answer["accepted"] is False and answer["reason"] == "thread_not_found"
    assert answer["dead_letter"]["attempts"] == 2
    assert [h["reason"] for h in answer["dead_letter"]["history"]] == ["thread_not_found"]

    # Fixed: the single replay is accepted and the record is gone.
    await router.threads.create(filled.thread, "alice")
    code, out, _ = await run_async(capsys, *remote(srv, "dead-letters", "replay", lost_id))
    assert code == 0 and "replayed as seq 1" in out
    assert await router.dead_letters.get(lost_id) is None

    # Bulk: a dry run, then the real one; the invalid id is rejected again: exit 1.
    code, out, _ = await run_async(
        capsys, *remote(srv, "dead-letters", "replay", "--all", "--dry-run", "--json")
    )
    assert (code, json.loads(out)) == (
        0,
        {"matched": 2, "accepted": 0, "rejected": 0, "skipped": 2},
    )
    code, out, _ = await run_async(
        capsys, *remote(srv, "dead-letters", "replay", "--reason", "invalid_id", "--json")
    )
    assert (code, json.loads(out)) == (
        1,
        {"matched": 1, "accepted": 0, "rejected": 1, "skipped": 0},
    )
    code, out, _ = await run_async(
        capsys, *remote(srv, "dead-letters", "replay", "--reason", "malformed_event")
    )
    assert code == 1 and "rejected" in out

    code, out, _ = await run_async(
        capsys, *remote(srv, "dead-letters", "purge", "--older-than", "0s", "--json")
    )
    assert (code, json.loads(out)) == (0, {"deleted": 2})
    code, out, _ = await run_async(capsys, *remote(srv, "dead-letters", "list"))
    assert code == 0 and "no dead letters match" in out


async def test_events_show_against_a_server(
    server: tuple[Server, Filled], capsys: pytest.CaptureFixture[str]
) -> None:
    srv, filled = server
    router = srv.router
    assert router is not None
    await router.threads.create(filled.thread, "alice")
    accepted = await router.publish(ev("agent_started", new_run_id(filled.thread)))
    code, out, _ = await run_async(
        capsys, *remote(srv, "events", "show", accepted.event_id, "--json")
    )
    answer = json.loads(out)
    assert code == 0 and answer["status"] == "accepted"
    assert answer["accepted"]["thread_id"] == filled.thread
    assert answer["accepted"]["delivered_to"] == 0
    code, out, _ = await run_async(capsys, *remote(srv, "events", "show", filled.invalid.event_id))
    assert code == 0 and "rejected as invalid_id" in out
    code, _, err = await run_async(capsys, *remote(srv, "events", "show", "never-seen"))
    assert code == 1 and "never-seen" in err


async def test_server_errors_map_to_exit_codes(
    server: tuple[Server, Filled], capsys: pytest.CaptureFixture[str], unused_port: int
) -> None:
    srv, _ = server
    code, out, err = await run_async(capsys, *remote(srv, "dead-letters", "list", token="wrong"))
    assert (code, out) == (3, "") and "refused the token" in err
    code, _, err = await run_async(
        capsys, "dead-letters", "list", "--server", f"http://127.0.0.1:{unused_port}"
    )
    assert code == 3 and "cannot reach" in err
    code, _, err = await run_async(
        capsys, *remote(srv, "dead-letters", "list", "--admin-path", "/elsewhere")
    )
    assert code == 3 and "not an agent-router admin API" in err
    code, _, err = await run_async(capsys, *remote(srv, "dead-letters", "show", "0" * 32))
    assert code == 1 and "no dead letter" in err
    code, _, err = await run_async(capsys, *remote(srv, "dead-letters", "show", "nope"))
    assert code == 2 and "not a dead-letter id" in err


async def test_token_from_the_environment(
    server: tuple[Server, Filled],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv, _ = server
    monkeypatch.setenv("AGENT_ROUTER_TOKEN", ADMIN_TOKEN)
    code, out, _ = await run_async(capsys, "dead-letters", "list", "--server", srv.http, "--json")
    assert code == 0 and len(json.loads(out)) == 3


async def test_admin_api_off_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    router = EventRouter(dead_letters="memory://", spool_dead_letters="memory://")
    async with serve(router, admin_token=None) as srv:
        code, _, err = await run_async(capsys, *remote(srv, "dead-letters", "list"))
    assert code == 3 and "not enabled" in err


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --------------------------------------------------------------------------- a real process


def test_the_command_as_a_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dead.db'}"

    async def make() -> Filled:
        router = EventRouter(dead_letters=url, spool_dead_letters="memory://")
        async with router:
            return await fill(router)

    filled = anyio.run(make)
    script = shutil.which("agent-router")
    command = [script] if script else [sys.executable, "-m", "router"]
    env: dict[str, Any] = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [*command, "dead-letters", "list", "--store", url, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in json.loads(done.stdout)][-1] == filled.lost.dead_letter_id
