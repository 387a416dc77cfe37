"""The ``agent-router`` command line.

Commands are registered, not hard-wired: a command is a function that takes the
``subparsers`` of the top-level parser, adds its own parser and sets a ``handler``
default (``handler(args) -> int``, the exit code). Register one with
:func:`command`; modules named in :data:`COMMAND_MODULES` are imported when the
parser is built, so a command can live next to the code it drives::

    from router.cli import Subparsers, command

    @command("dead-letters")
    def _register(subparsers: Subparsers) -> None:
        parser = subparsers.add_parser("dead-letters", help="inspect and replay dead letters")
        parser.set_defaults(handler=_run)

A command's module should import heavy dependencies inside its handler, so that
``agent-router --help`` stays fast and works without the optional extras.

Exit codes: 0 success, 1 the command ran and the answer is "no" (an invalid id, a
mismatched pair) or it failed, 2 a usage error (argparse's own), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from . import ids
from .errors import InvalidId, ThreadMismatch
from .events import inbound_schema, outbound_schema

__all__ = ["COMMANDS", "COMMAND_MODULES", "Subparsers", "build_parser", "command", "main"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Register: TypeAlias = Callable[[Subparsers], None]
Handler: TypeAlias = Callable[[argparse.Namespace], int]

#: Registered commands, by name, in the order ``--help`` lists them.
COMMANDS: dict[str, Register] = {}

#: Modules imported by :func:`build_parser` so that their ``@command`` functions run.
COMMAND_MODULES: tuple[str, ...] = ("router._cli_deadletters", "router.demo")


def command(name: str) -> Callable[[Register], Register]:
    """Register ``register(subparsers)`` as the top-level command ``name``.

    Registering the same name twice replaces the first (the last import wins).
    """

    def decorator(register: Register) -> Register:
        COMMANDS[name] = register
        return register

    return decorator


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agent-event-router")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The full ``agent-router`` parser, with every registered command."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(
        prog="agent-router",
        description=(
            "Validated, per-user isolated routing of AI-agent events to WebSocket clients."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    for register in COMMANDS.values():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``agent-router`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Never raises ``SystemExit`` itself: usage errors and ``--help`` return argparse's
    code, so a console script's ``sys.exit(main())`` and a test's ``main([...])`` both work.
    """
    parser = build_parser()
    raw = sys.argv[1:] if argv is None else list(argv)
    try:
        args, extra = parser.parse_known_args(raw)
        if getattr(args, "passthrough", False):
            # A command that hands its arguments, as given, to another program (bench).
            args.rest = raw[raw.index(args.command) + 1 :]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as stop:
        return _exit_code(stop.code)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (agent-router schema | head): not an error worth a traceback.
        # Point stdout at devnull so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- ids


@command("ids")
def _register_ids(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "ids",
        help="check run and thread ids",
        description="Check ids against the grammar of router.ids.",
    )
    ids_commands = parser.add_subparsers(
        title="commands", dest="ids_command", metavar="COMMAND", required=True
    )
    check = ids_commands.add_parser(
        "check",
        help="explain a run id, and whether it belongs to a thread",
        description=(
            "Explain RUN_ID and, when THREAD_ID is given, whether the run belongs to it. "
            "Exit status: 0 valid (and consistent), 1 invalid or mismatched, 2 usage error."
        ),
    )
    check.add_argument("run_id", metavar="RUN_ID")
    check.add_argument("thread_id", metavar="THREAD_ID", nargs="?", default=None)
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(handler=_ids_check)


def _ids_check(args: argparse.Namespace) -> int:
    run_id: str = args.run_id
    thread_id: str | None = args.thread_id
    reason: str | None = None
    embedded: str | None = None
    try:
        if thread_id is None:
            embedded = ids.extract_thread_id(run_id)
        else:
            embedded = ids.validate_id_pair(run_id, thread_id)
    except ThreadMismatch as exc:
        reason, embedded = "thread_mismatch", exc.embedded
    except InvalidId:
        reason = "invalid_id"
    explanation = ids.explain(run_id, thread_id)
    if args.json:
        result = {
            "valid": reason is None,
            "reason": reason,
            "run_id": run_id,
            "thread_id": thread_id,
            "embedded": embedded,
            "explanation": explanation,
        }
        print(json.dumps(result, indent=2))
    else:
        print(explanation)
    return 0 if reason is None else 1


# --------------------------------------------------------------------------- schema

_SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {
    "inbound": inbound_schema,
    "outbound": outbound_schema,
}


@command("schema")
def _register_schema(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of inbound events and outbound frames",
        description=(
            "Print the JSON Schema of inbound events (what agents publish), of outbound "
            'frames (what browsers receive), or of both as {"inbound": ..., "outbound": ...}.'
        ),
    )
    parser.add_argument("which", nargs="?", choices=sorted(_SCHEMAS), help="default: both")
    parser.set_defaults(handler=_schema)


def _schema(args: argparse.Namespace) -> int:
    which: str | None = args.which
    document: dict[str, Any]
    if which is None:
        document = {name: make() for name, make in _SCHEMAS.items()}
    else:
        document = _SCHEMAS[which]()
    print(json.dumps(document, indent=2))
    return 0


# --------------------------------------------------------------------------- bench


@command("bench")
def _register_bench(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run the benchmark suite (python -m benchmarks; from a source checkout)",
        description="Run benchmarks/ (python -m benchmarks) with the arguments given; "
        "'agent-router bench --help' lists them.",
        add_help=False,
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(handler=_bench, passthrough=True)


def _bench(args: argparse.Namespace) -> int:
    # The suite lives in the repository (benchmarks/), not in the installed package:
    # found when run from the repository root.
    if os.path.isfile(os.path.join("benchmarks", "__main__.py")) and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        bench = importlib.import_module("benchmarks.__main__")
    except ImportError:
        print(
            "agent-router bench: the benchmark suite (benchmarks/) is part of a source "
            "checkout, not of the installed package; run it from the repository root",
            file=sys.stderr,
        )
        return 2
    try:
        status: int = bench.main(list(args.rest))
    except SystemExit as stop:  # its --help, or a usage error
        return _exit_code(stop.code)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
