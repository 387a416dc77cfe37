"""The demo page and examples/browser_client.js in a real browser: Debian's Chromium,
driven by Playwright (never a downloaded browser).

Screenshots of the demo page are saved under ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import FileResponse, HTMLResponse, Response
from websockets.asyncio.client import connect

from router import new_event_id, new_run_id
from router.demo.app import DemoState, create_app

from .conftest import Server, need, recv_json, recv_until
from .helpers import ev
from .test_examples import EXAMPLES, PortServer, example, new_run, started

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
VIEWPORT = {"width": 1600, "height": 1000}
WAIT_MS = 15_000


def require_browser() -> None:
    """Skip (fail under CI=true) without Debian's Chromium or the playwright package."""
    need(os.path.exists(CHROMIUM), f"Debian's chromium at {CHROMIUM}")
    need(importlib.util.find_spec("playwright") is not None, "the playwright package")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


class Page:
    """A browser context with one page, recording the page's script errors."""

    def __init__(self, context: Any, page: Any) -> None:
        self.context = context
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # A refused reconnection attempt is logged by the browser itself: expected
        # while a server restarts, and not an error of the page.
        if message.type == "error" and "WebSocket connection to" not in message.text:
            self.errors.append(message.text)


@contextlib.asynccontextmanager
async def new_page(browser: Any) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=VIEWPORT)
    try:
        page = Page(context, await context.new_page())
        page.page.set_default_timeout(WAIT_MS)
        yield page
    finally:
        await context.close()


async def open_demo(page: Page, server: Server, user: str) -> None:
    await page.page.goto(f"{server.http}/?user={user}")
    await page.page.wait_for_selector('[data-testid="conn-status"][data-state="connected"]')


async def timeline(page: Page) -> list[list[Any]]:
    """The event rows shown: [seq, type, event_id, agent, tool]."""
    rows: list[list[Any]] = await page.page.eval_on_selector_all(
        "#timeline tr.event",
        """rows => rows.map(r => [Number(r.dataset.seq), r.dataset.type, r.dataset.eventId,
                                 r.querySelector('.agent').textContent,
                                 r.querySelector('.tool').textContent])""",
    )
    return rows


def is_final(frame: dict[str, Any]) -> bool:
    return frame.get("type") in ("agent_completed", "agent_error")


@contextlib.asynccontextmanager
async def demo_server() -> AsyncIterator[tuple[Server, DemoState]]:
    state = DemoState()
    async with Server(create_app(store="memory://", speed=0, state=state)) as server:
        yield server, state


async def test_demo_page_isolates_users_and_shows_mismatch_and_replay() -> None:
    from playwright.async_api import expect

    async with (
        demo_server() as (server, state),
        chromium() as browser,
        new_page(browser) as alice,
        new_page(browser) as bob,
    ):
        await open_demo(alice, server, "alice")
        await open_demo(bob, server, "bob")
        # A plain client of Alice's too: what the page shows must be what the router sent.
        watcher = await connect(
            f"{server.ws}/ws?token={state.users['alice'].token}", open_timeout=10
        )
        assert (await recv_json(watcher))["op"] == "welcome"

        # Alice creates a thread and starts a run: every event, in order, live.
        await alice.page.click('[data-testid="new-thread"]')
        thread = await alice.page.get_attribute(".thread.active", "data-thread")
        assert thread is not None and thread.startswith("thread_demo_")
        await alice.page.select_option('[data-testid="scenario"]', "research")
        await alice.page.click('[data-testid="start-run"]')
        await alice.page.wait_for_selector('#timeline tr.event[data-type="agent_completed"]')
        frames = await recv_until(watcher, is_final)
        rows = await timeline(alice)
        assert [row[:3] for row in rows] == [[f["seq"], f["type"], f["event_id"]] for f in frames]
        assert [row[0] for row in rows] == list(range(1, len(frames) + 1))
        assert {row[3] for row in rows} == {"researcher"}
        assert any(row[4].startswith("web_search") and "ms" in row[4] for row in rows)
        await expect(alice.page.locator('[data-testid="timeline-thread"]')).to_have_text(thread)

        # Bob, in his own browser context, got none of it: not an event frame, not a row,
        # not the thread. The ping is a barrier: whatever was queued for him came first.
        await bob.page.evaluate("demo.ping()")
        assert await bob.page.evaluate("demo.state.eventFrames") == 0
        assert await bob.page.locator("#timeline tr.event").count() == 0
        assert await bob.page.locator("#threads .thread").count() == 0
        assert thread not in await bob.page.content()

        # The mismatch button: a thread_mismatch record appears in the panel.
        await alice.page.click('[data-testid="send-mismatch"]')
        record = alice.page.locator('.dl-item[data-reason="thread_mismatch"]')
        await expect(record).to_have_count(1)
        await record.click()
        attempts = alice.page.locator('[data-testid="dl-attempts"]')
        await expect(attempts).to_have_text("attempts 1")
        detail = alice.page.locator('[data-testid="dl-detail-text"]')
        await expect(detail).to_contain_text("embeds thread 'websocket_factory_1757361062151_8'")
        # Replaying it is rejected again: attempts 2.
        await alice.page.click('[data-testid="dl-replay"]')
        await expect(attempts).to_have_text("attempts 2")
        result = alice.page.locator('[data-testid="dl-replay-result"]')
        await expect(result).to_contain_text("Rejected again: thread_mismatch")
        await expect(record).to_have_attribute("data-attempts", "2")
        # Counters from /_router/stats: the mismatch and its replay, both rejected.
        await expect(alice.page.locator('[data-stat="rejected"]')).to_have_text("2")
        await expect(alice.page.locator('[data-stat="accepted"]')).to_have_text(str(len(frames)))

        # Bob's panel lists his records only: none.
        await bob.page.click("#btn-dl-refresh")
        await expect(bob.page.locator(".dl-item")).to_have_count(0)

        ARTIFACTS.mkdir(exist_ok=True)
        await alice.page.screenshot(path=str(ARTIFACTS / "demo-alice.png"), full_page=True)
        await bob.page.screenshot(path=str(ARTIFACTS / "demo-bob.png"), full_page=True)
        await watcher.close()
        assert alice.errors == [] and bob.errors == []


async def test_demo_page_reconnect_resumes_with_after_seq_and_no_gap() -> None:
    from playwright.async_api import expect

    async with demo_server() as (server, state), chromium() as browser, new_page(browser) as alice:
        await open_demo(alice, server, "alice")
        await alice.page.click('[data-testid="new-thread"]')
        thread = await alice.page.get_attribute(".thread.active", "data-thread")
        await alice.page.click('[data-testid="start-run"]')
        await alice.page.wait_for_selector('#timeline tr.event[data-type="agent_completed"]')
        seen_before = len(await timeline(alice))

        # Offline: a whole run is published meanwhile (a plain client of Alice's
        # watches it happen, so the page is the only one that missed it).
        await alice.page.click('[data-testid="disconnect"]')
        status = alice.page.locator('[data-testid="conn-status"]')
        await expect(status).to_have_attribute("data-state", "offline")
        token = state.users["alice"].token
        watcher = await connect(f"{server.ws}/ws?token={token}", open_timeout=10)
        assert (await recv_json(watcher))["op"] == "welcome"
        async with httpx.AsyncClient(base_url=server.http) as http:
            response = await http.post(
                "/api/runs",
                headers={"authorization": f"Bearer {token}"},
                json={"thread_id": thread, "scenario": "flaky"},
            )
            assert response.status_code == 202
        missed = await recv_until(watcher, is_final)
        await watcher.close()
        assert await alice.page.locator("#timeline tr.event").count() == seen_before

        await alice.page.click('[data-testid="reconnect"]')
        await expect(status).to_have_attribute("data-state", "connected")
        banner = alice.page.locator('[data-testid="resume-banner"]')
        await expect(banner).to_contain_text(f"after #{seen_before}")
        await expect(banner).to_contain_text(f"{len(missed)} missed events replayed")
        await expect(banner).to_contain_text("no gap")
        rows = await timeline(alice)
        total = seen_before + len(missed)
        assert [row[0] for row in rows] == list(range(1, total + 1))
        assert [row[2] for row in rows[seen_before:]] == [f["event_id"] for f in missed]
        resumed = alice.page.locator("#timeline tr.event .tag")
        await expect(resumed).to_have_count(len(missed))
        assert await alice.page.locator("#timeline tr.gap").count() == 0
        ARTIFACTS.mkdir(exist_ok=True)
        await alice.page.screenshot(path=str(ARTIFACTS / "demo-resume.png"), full_page=True)
        assert alice.errors == []


# --------------------------------------------------------------------------- browser_client.js

HARNESS = """<!doctype html>
<meta charset="utf-8"><title>browser_client.js</title><link rel="icon" href="data:,">
<script src="/browser_client.js"></script>
<script>
  window.received = [];
  window.statuses = [];
  window.client = followAgentEvents({
    url: `ws://${location.host}/ws`,
    token: "token-alice",
    onEvent: (event) => window.received.push(event),
    onStatus: (status) => window.statuses.push(status),
  });
</script>
"""


def with_harness(app: Any) -> Any:
    """``app``, plus ``GET /harness`` (the page above) and ``GET /browser_client.js``."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        response: Response | None = None
        if scope["type"] == "http" and scope["path"] == "/harness":
            response = HTMLResponse(HARNESS)
        elif scope["type"] == "http" and scope["path"] == "/browser_client.js":
            response = FileResponse(EXAMPLES / "browser_client.js", media_type="text/javascript")
        if response is None:
            await app(scope, receive, send)
        else:
            await response(scope, receive, send)

    return asgi


async def test_browser_client_js_resumes_after_a_restart_and_drops_duplicates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with example("starlette_app", monkeypatch) as app:
        router = app.router
        # The harness is served by the same server: Chromium's local-network checks
        # keep a page from elsewhere (a route-fulfilled one, say) off 127.0.0.1.
        served = with_harness(app.app)
        async with started(router), chromium() as browser, new_page(browser) as tab:
            first = PortServer(served)
            origin = first.http
            thread, run = await new_run(router, "alice")

            async def received(count: int) -> None:
                await tab.page.wait_for_function(f"window.received.length === {count}")

            async with first:
                await tab.page.goto(f"{origin}/harness")
                await tab.page.wait_for_function("window.statuses.includes('open')")
                await router.publish(ev("agent_started", run))
                await router.publish(ev("agent_thinking", run))
                await received(2)
            # Server gone, agent still publishing: the client will resume after seq 2.
            await router.publish(ev("tool_executing", run))
            await router.publish(ev("tool_completed", run))
            await router.publish(ev("agent_completed", run))
            async with PortServer(served, first.port):
                await received(5)
                # An agent retrying a publish: the second copy has a new seq, the same
                # event_id, and is dropped.
                second_run = new_run_id(thread)
                retried = ev("agent_thinking", second_run, event_id=new_event_id())
                for event in (ev("agent_started", second_run), retried, dict(retried)):
                    await router.publish(event)
                await router.publish(ev("agent_completed", second_run))
                await received(8)
                events = await tab.page.evaluate("window.received")
                statuses = await tab.page.evaluate("window.statuses")
                last_seq = await tab.page.evaluate("Object.fromEntries(window.client.lastSeq)")
                await tab.page.evaluate("window.client.close()")
            assert tab.errors == []
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6, 7, 9]
    assert len({e["event_id"] for e in events}) == 8
    assert statuses.count("open") == 2 and "closed" in statuses
    assert last_seq == {thread: 9}
