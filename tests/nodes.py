"""Processes for the multi-process tests: a server node and an agent worker.

python -m tests.nodes server --backend URL --prefix P [--dead-letters URL]
    prints "READY <port>" once it accepts connections
python -m tests.nodes worker --backend URL --prefix P --plan FILE
    publishes the events of a JSON plan, prints "DONE <stats json>"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection

from bridge import AgentWebSocketBridge
from router import EventRouter, EventRouterMiddleware
from router.serving import uvicorn_settings


def _auth(conn: HTTPConnection) -> str | None:
    token = conn.query_params.get("token") or ""
    return token[4:] if token.startswith("tok-") else None


def _router(args: argparse.Namespace) -> EventRouter:
    return EventRouter(
        backend=args.backend,
        dead_letters=args.dead_letters,
        spool_dead_letters=args.spool,
        backend_options={"prefix": args.prefix, "probe_interval": 0.5, "probe_timeout": 2.0},
    )


async def _serve(args: argparse.Namespace) -> None:
    router = _router(args)
    app = Starlette(
        middleware=[
            Middleware(
                EventRouterMiddleware, router=router, authenticate=_auth, admin_token="admin"
            )
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_settings())
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            return
        await asyncio.sleep(0.01)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await task


async def _work(args: argparse.Namespace, plan: dict[str, Any]) -> None:
    router = _router(args)
    async with router:
        for thread_id, user_id in plan.get("threads", []):
            await router.threads.create(thread_id, user_id)
        # Race other processes for threads: each claim answers the owner that won.
        owners = [
            await router.threads.store.claim(thread_id, user_id)
            for thread_id, user_id in plan.get("claims", [])
        ]
        print("STARTED", flush=True)
        if plan.get("wait_for_go"):
            sys.stdin.readline()
        runs = [await _bridge_run(router, spec) for spec in plan.get("bridge_runs", [])]
        results = []
        for event in plan.get("events", []):
            result = await router.publish(event)
            results.append(
                {
                    "accepted": result.accepted,
                    "seq": result.seq,
                    "reason": result.reason,
                    "spooled": result.spooled,
                }
            )
        print(
            "DONE "
            + json.dumps(
                {"stats": router.snapshot(), "results": results, "owners": owners, "runs": runs}
            ),
            flush=True,
        )


async def _bridge_run(router: EventRouter, spec: dict[str, Any]) -> str:
    """An agent using the bridge in this process: a run with a thought and a tool."""
    bridge = AgentWebSocketBridge(router)
    async with bridge.run(
        thread_id=spec["thread_id"], user_id=spec["user_id"], agent_name="worker"
    ) as run:
        await run.thinking("looking it up", step_number=1)
        async with run.tool("search", {"q": spec["query"]}) as call:
            call.result = {"hits": 3}
        run.result = {"answer": spec["query"].upper()}
    return run.run_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "worker"])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--dead-letters", default="memory://")
    parser.add_argument("--spool", default="memory://")
    parser.add_argument("--plan")
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(_serve(args))
    else:
        asyncio.run(_work(args, json.loads(Path(args.plan).read_text())))


if __name__ == "__main__":
    main()
