"""The demo agent: scripted, multi-step runs with tools, published through the bridge.

No model and no network: each scenario is a short script of what a real agent
does (think, call tools, sometimes fail and recover) with small pauses between
steps, so a person watching the demo page can follow it. ``speed`` scales every
pause (``0`` runs a scenario as fast as the router takes it; the tests use that).

Scenarios, by name (:data:`SCENARIOS`):

``research``   web search, two page fetches, a summary
``analysis``   a SQL query, a computation, a chart
``flaky``      a tool that times out, a retry that works
``failure``    a tool refused for lack of permission: the run ends with ``agent_error``
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from bridge import AgentWebSocketBridge, Run

__all__ = ["SCENARIOS", "DemoAgent", "Pace", "Scenario", "ScenarioFailed"]

logger = logging.getLogger("router.demo")


class ScenarioFailed(Exception):
    """Raised on purpose by a scenario that demonstrates a failing run."""


class Pace:
    """``await pace(seconds)``: a pause of ``seconds * speed`` (a bare checkpoint at 0)."""

    def __init__(self, speed: float) -> None:
        if speed < 0:
            raise ValueError("speed must be at least 0")
        self.speed = speed

    async def __call__(self, seconds: float) -> None:
        await anyio.sleep(seconds * self.speed)


Script = Callable[[Run, Pace, str], Awaitable[Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """A named script: ``script(run, pace, prompt)`` returns the run's result."""

    name: str
    title: str
    agent_name: str
    prompt: str
    script: Script

    def describe(self) -> dict[str, str]:
        return {
            "name": self.name,
            "title": self.title,
            "agent_name": self.agent_name,
            "prompt": self.prompt,
        }


# --------------------------------------------------------------------------- scripts


async def _research(run: Run, pace: Pace, prompt: str) -> Any:
    await run.thinking(
        "Splitting the question into searchable parts", step_number=1, progress_percentage=5
    )
    await pace(0.3)
    async with run.tool("web_search", {"query": prompt, "top_k": 3}) as search:
        await pace(0.4)
        search.result = [
            {"title": "Correlation ids in event-driven systems", "url": "https://example.org/ids"},
            {"title": "Why WebSocket fan-out loses messages", "url": "https://example.org/fanout"},
            {"title": "Dead-letter queues, explained", "url": "https://example.org/dlq"},
        ]
    await run.thinking(
        "Two results look primary; reading them", step_number=2, progress_percentage=35
    )
    await pace(0.2)
    for source in search.result[:2]:
        async with run.tool("fetch_page", {"url": source["url"]}) as page:
            await pace(0.35)
            page.result = {"url": source["url"], "status": 200, "words": 1840}
        await run.progress({"stage": "reading", "done": source["url"]})
        await pace(0.15)
    await run.thinking(
        "Cross-checking the two accounts against each other", step_number=3, progress_percentage=70
    )
    await pace(0.3)
    async with run.tool("summarise", {"sources": 2, "style": "bullets"}) as summary:
        await pace(0.4)
        summary.result = {"bullets": 3, "tokens": 212}
    await run.progress({"stage": "writing", "percentage": 100})
    await pace(0.15)
    return {
        "answer": (
            "Events go astray when ids are minted in several places: a run id that embeds "
            "one thread, an event that names another. Mint ids in one module, validate "
            "every event at the edge, and keep what fails as a dead letter."
        ),
        "sources": [source["url"] for source in search.result[:2]],
    }


async def _analysis(run: Run, pace: Pace, prompt: str) -> Any:
    await run.thinking(
        "Finding the table that holds signups", step_number=1, progress_percentage=10
    )
    await pace(0.25)
    query = (
        "SELECT date_trunc('week', created_at) AS week, channel, count(*) "
        "FROM signups GROUP BY 1, 2 ORDER BY 1"
    )
    async with run.tool("sql_query", {"database": "analytics", "sql": query}) as rows:
        await pace(0.45)
        rows.result = {"rows": 24, "columns": ["week", "channel", "count"]}
    await run.thinking(
        "Computing week-over-week growth per channel", step_number=2, progress_percentage=45
    )
    await pace(0.2)
    async with run.tool("python", {"code": "df.pivot('week', 'channel').pct_change()"}) as calc:
        await pace(0.3)
        calc.result = {"organic": "+12.4%", "paid": "-3.1%", "referral": "+27.0%"}
    await run.progress({"stage": "charting", "percentage": 80})
    await pace(0.15)
    async with run.tool("render_chart", {"kind": "line", "series": 3}) as chart:
        await pace(0.3)
        chart.result = {"image": "signups-by-channel.png", "width": 960, "height": 540}
    return {
        "answer": "Referral grows fastest (+27% w/w); paid is flat to slightly down.",
        "chart": chart.result["image"],
    }


async def _flaky(run: Run, pace: Pace, prompt: str) -> Any:
    await run.thinking(
        "Looking up the customer and their latest order", step_number=1, progress_percentage=10
    )
    await pace(0.2)
    async with run.tool("crm_lookup", {"email": "dana@example.com"}) as customer:
        await pace(0.3)
        customer.result = {"customer_id": "C-1042", "latest_order": "A-77310"}
    try:
        async with run.tool("shipping_status", {"order": "A-77310"}):
            await pace(0.4)
            raise TimeoutError("the carrier API did not answer within 2 s")
    except TimeoutError:
        await run.thinking(
            "The carrier API timed out; retrying once with a longer deadline", step_number=2
        )
        await pace(0.3)
    async with run.tool("shipping_status", {"order": "A-77310", "timeout_s": 8}) as status:
        await pace(0.35)
        status.result = {"status": "in transit", "eta": "Thursday"}
    async with run.tool("draft_reply", {"tone": "friendly"}) as reply:
        await pace(0.3)
        reply.result = {"characters": 412}
    return {"answer": "Order A-77310 is in transit and should arrive on Thursday."}


async def _failure(run: Run, pace: Pace, prompt: str) -> Any:
    await run.thinking(
        "Checking the team calendar for a free slot", step_number=1, progress_percentage=20
    )
    await pace(0.25)
    async with run.tool("calendar_freebusy", {"team": "platform", "days": 5}) as slots:
        await pace(0.35)
        slots.result = {"free_slots": 3}
    await run.thinking("Booking the first free slot", step_number=2, progress_percentage=60)
    await pace(0.2)
    async with run.tool("calendar_book", {"slot": "Tue 10:00", "attendees": 6}):
        await pace(0.3)
        raise ScenarioFailed("calendar_book was refused: the agent's token lacks calendar.write")
    return None  # pragma: no cover - the block above always raises


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "research",
            "Research question",
            "researcher",
            "Why do agent events get lost or misrouted?",
            _research,
        ),
        Scenario(
            "analysis",
            "Data analysis",
            "analyst",
            "How did weekly signups change, by channel?",
            _analysis,
        ),
        Scenario(
            "flaky",
            "Flaky tool, then retry",
            "support-bot",
            "Where is my order?",
            _flaky,
        ),
        Scenario(
            "failure",
            "Run that fails",
            "planner",
            "Book a meeting with the platform team",
            _failure,
        ),
    )
}


# --------------------------------------------------------------------------- the agent


class DemoAgent:
    """Runs scenarios through an :class:`~bridge.AgentWebSocketBridge`.

    ``run`` publishes a whole scenario: ``agent_started``, the scenario's steps,
    then ``agent_completed`` (or ``agent_error`` when the scenario fails). It is
    meant for a background task: a failing scenario is logged, not raised, and
    cancelling it (server shutdown) ends the run with ``agent_error``.
    """

    def __init__(self, bridge: AgentWebSocketBridge, *, speed: float = 1.0) -> None:
        self.bridge = bridge
        self.pace = Pace(speed)

    async def run(
        self, scenario_name: str, *, thread_id: str, user_id: str, prompt: str | None = None
    ) -> None:
        """Run one scenario in ``thread_id`` for ``user_id``.

        Raises ``KeyError`` for an unknown scenario and, before anything is
        published, what ``bridge.start_run`` raises (``NotThreadOwner``...).
        """
        scenario = SCENARIOS[scenario_name]
        prompt = prompt or scenario.prompt
        try:
            async with self.bridge.run(
                thread_id=thread_id,
                user_id=user_id,
                agent_name=scenario.agent_name,
                context={"scenario": scenario.name, "prompt": prompt},
            ) as run:
                await self.pace(0.2)
                run.result = await scenario.script(run, self.pace, prompt)
                await self.pace(0.1)
        except ScenarioFailed as failed:
            # Published as agent_error by bridge.run; nothing else to do.
            logger.info("demo run in %s failed on purpose: %s", thread_id, failed)
