"""``python -m router``: the ``agent-router`` command line."""

from router.cli import main

raise SystemExit(main())
