"""``agent-router demo``: the demo server, its page and its scripted agent.

    agent-router demo [--host 127.0.0.1] [--port 8000] [--store URL] [--speed 1.0]

The application is :func:`router.demo.app.create_app`; the scripted agent is
:class:`router.demo.agent.DemoAgent`. Importing this package only registers the
command: the app and its dependencies are imported when the command runs.
"""

from __future__ import annotations

from . import _cli  # noqa: F401  (registers the "demo" command)

__all__: list[str] = []
