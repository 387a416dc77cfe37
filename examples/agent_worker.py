"""An agent in another process: it publishes over HTTP, ``POST /_router/publish``.

    python examples/agent_worker.py http://127.0.0.1:8000 --token PUBLISH_TOKEN --thread THREAD_ID

The web application owns the threads (it created ``THREAD_ID`` for its user);
this worker only needs the thread id and the router's publish token (or the
admin token). It mints the run id from the thread with
:func:`router.ids.new_run_id` (the only place ids are made: the router would
reject a run id that names another thread as ``thread_mismatch``), then
publishes one run: ``agent_started``, thinking, a tool call, ``agent_completed``.

Each event carries its own ``event_id``, so re-sending it after a timeout is
safe: browsers deduplicate by ``event_id``. The router answers 202 with the
result when it accepted the event, 422 when it rejected it (the event is then a
dead letter with the reason: see ``GET /_router/dead-letters``).

Standard library only (urllib): any language that can POST JSON can do this.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from router.errors import InvalidId
from router.ids import new_event_id, new_run_id


class Rejected(Exception):
    """The router refused the event (HTTP 422): it is now a dead letter."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(f"{result.get('reason')}: {result.get('detail')}")
        self.result = result


class Publisher:
    """POSTs events to ``{server}/_router/publish``, retrying network failures."""

    def __init__(self, server: str, token: str, *, attempts: int = 3, timeout: float = 10) -> None:
        self.endpoint = server.rstrip("/") + "/_router/publish"
        self.token = token
        self.attempts = attempts
        self.timeout = timeout

    def publish(self, event: dict[str, Any]) -> dict[str, Any]:
        """The router's result for ``event``; raises :class:`Rejected` on 422."""
        event.setdefault("event_id", new_event_id())  # idempotency key for retries
        request = urllib.request.Request(
            self.endpoint,
            data=json.dumps(event).encode(),
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
            method="POST",
        )
        for attempt in range(1, self.attempts + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    result: dict[str, Any] = json.load(response)
                    return result
            except urllib.error.HTTPError as exc:
                body = json.load(exc)
                exc.close()
                if exc.code == 422:
                    raise Rejected(body) from None
                raise RuntimeError(f"HTTP {exc.code}: {body}") from None
            except (urllib.error.URLError, TimeoutError):
                if attempt == self.attempts:
                    raise
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")


def run_agent(publisher: Publisher, thread_id: str, question: str) -> str:
    """Publish one run in ``thread_id``; return its run id."""
    run_id = new_run_id(thread_id)
    agent = "worker"
    started = time.perf_counter()

    def emit(kind: str, **payload: Any) -> None:
        result = publisher.publish(
            {
                "type": kind,
                "run_id": run_id,
                "thread_id": thread_id,
                "agent_name": agent,
                "payload": payload,
            }
        )
        print(f"{kind:<16} seq {result['seq']}", flush=True)

    emit("agent_started", context={"question": question})
    emit("agent_thinking", reasoning="Planning the lookup", step_number=1)
    call = new_event_id()
    emit("tool_executing", tool_name="lookup", tool_call_id=call, parameters={"q": question})
    tool_started = time.perf_counter()
    found = {"hits": 2}  # the real work of the tool goes here
    emit(
        "tool_completed",
        tool_name="lookup",
        tool_call_id=call,
        result=found,
        success=True,
        execution_time_ms=round((time.perf_counter() - tool_started) * 1000, 3),
    )
    emit(
        "agent_completed",
        result={"answer": f"{found['hits']} hits for {question!r}"},
        execution_time_ms=round((time.perf_counter() - started) * 1000, 3),
    )
    return run_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Publish one agent run over HTTP.")
    parser.add_argument("server", help="the application's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", required=True, help="the router's publish (or admin) token")
    parser.add_argument("--thread", required=True, help="a thread the web application created")
    parser.add_argument("--question", default="what changed since yesterday?")
    args = parser.parse_args(argv)
    publisher = Publisher(args.server, args.token)
    try:
        run_id = run_agent(publisher, args.thread, args.question)
    except InvalidId as exc:
        print(f"--thread: {exc}", file=sys.stderr)
        return 2
    except Rejected as exc:
        print(f"rejected: {exc} (dead letter {exc.result.get('dead_letter_id')})", file=sys.stderr)
        return 1
    print(f"run {run_id} published", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
