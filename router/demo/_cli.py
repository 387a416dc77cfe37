"""The ``demo`` command: serve :func:`router.demo.app.create_app` with uvicorn."""

from __future__ import annotations

import argparse
import errno
import socket
import sys

from ..cli import Subparsers, command

__all__ = ["banner", "serve"]

DEFAULT_STORE = "sqlite:///./agent-router.db"


@command("demo")
def _register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the demo: a page, two users, a scripted agent, the dead-letter panel",
        description=(
            "Serve the demo application: the router mounted on a small app with embedded "
            "defaults, a scripted demo agent (no model, no network) and a page at / to "
            "watch runs live, resume after a disconnect and inspect dead letters."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument("--port", type=int, default=8000, help="default: %(default)s (0: any)")
    parser.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="URL",
        help="dead-letter store: sqlite:///path.db or memory:// (default: %(default)s)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="scale the demo agent's pauses between steps (0: no pauses; default: 1)",
    )
    parser.set_defaults(handler=serve)


def banner(url: str, store: str, users: list[str]) -> str:
    """What ``agent-router demo`` prints once it listens."""
    first, second = users[0], users[min(1, len(users) - 1)]
    return "\n".join(
        [
            "",
            f"  agent-event-router demo    {url}",
            "",
            f"  users      {', '.join(users)}  (pick one on the page, or {url}?user={second})",
            f"  store      {store}  (dead letters)",
            f"  admin API  {url}_router/stats  (the page holds the demo admin token)",
            "",
            "  Try this:",
            f"    1. Open {url}?user={first}, create a thread and start a run:",
            "       the events arrive live, in seq order, with agent, tool and timing.",
            f"    2. Open {url}?user={second} in a second window: {second} sees none of them.",
            "    3. Disconnect during a run, then Reconnect: it resumes with after_seq, no gap.",
            "    4. Send the mismatched event: it lands in the dead-letter panel as",
            "       thread_mismatch; show it, replay it, and watch attempts go to 2.",
            *(
                [f"    5. Then: agent-router dead-letters list --store {store}"]
                if not store.startswith("memory:")
                else []
            ),
            "",
            "  Demo only: the page is handed the users' tokens and the admin token.",
            "  Ctrl+C stops the server.",
            "",
        ]
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listen now, so a client that reads the banner and connects at once is
        # queued until uvicorn accepts rather than refused.
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def serve(args: argparse.Namespace) -> int:
    """Bind, print the banner, serve until interrupted."""
    import uvicorn

    from ..serving import uvicorn_settings
    from .app import DemoState, create_app

    if args.speed < 0:
        print("agent-router demo: --speed must be at least 0", file=sys.stderr)
        return 2
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        hint = " (is another demo running? try --port 0)" if exc.errno == errno.EADDRINUSE else ""
        print(
            f"agent-router demo: cannot listen on {args.host}:{args.port}: {exc}{hint}",
            file=sys.stderr,
        )
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"agent-router demo: warning: on {args.host}, anyone who can reach this port can "
            "read the demo users' tokens and the admin token (GET /api/users)",
            file=sys.stderr,
        )
    with sock:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/"
        state = DemoState()

        def ready() -> None:
            # Printed once the router runs: whoever reads the URL can use it at once.
            print(banner(url, args.store, list(state.users)), flush=True)

        try:
            app = create_app(store=args.store, speed=args.speed, state=state, on_ready=ready)
        except ValueError as exc:
            print(f"agent-router demo: {exc}", file=sys.stderr)
            return 2
        config = uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            access_log=False,
            **uvicorn_settings(),
        )
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
    # uvicorn has logged why when the app could not start (a bad --store, say).
    return 0 if server.started else 1
