"""``agent-router dead-letters`` and ``agent-router events``: inspect, replay, purge.

Every command works against one of two targets:

* ``--store URL`` reads and changes a dead-letter store directly (``sqlite:///path``,
  ``redis://…``); the default is the router's default store,
  ``sqlite:///./agent-router.db``. A SQLite file that does not exist is an error,
  never created. Replay is refused here: it needs the router's pipeline (thread
  ownership, run lifecycle), which only a running server has.
* ``--server URL --token T`` goes through the admin API of a running app (``URL`` is
  the app's base URL; the API is under ``--admin-path``, default ``/_router``). The
  token may come from ``AGENT_ROUTER_TOKEN`` instead, which keeps it out of the
  process list and the shell history.

Human tables (rich) by default; ``--json`` prints JSON for scripts (an array of
records for ``list``, one object otherwise).

Exit codes: 0 done; 1 not found, or a replay was rejected again; 2 usage error
(bad arguments, or arguments the server refused with 400); 3 the server or the
store cannot be reached or refused us (connection error, 401, admin API off, 5xx).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .cli import Subparsers, command
from .deadletters import REASONS, InvalidFilter, parse_duration, parse_since

__all__: list[str] = []

_T = TypeVar("_T")

EXIT_OK, EXIT_NO, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

DEFAULT_STORE = "sqlite:///./agent-router.db"
TOKEN_ENV = "AGENT_ROUTER_TOKEN"
#: Records one request asks for (the admin API's page limit).
_PAGE = 1000


class _Failure(Exception):
    """The command cannot do what was asked: a message and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- parsers


def _target_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("target")
    exclusive = where.add_mutually_exclusive_group()
    exclusive.add_argument(
        "--store",
        metavar="URL",
        help=f"read the dead-letter store directly (default {DEFAULT_STORE})",
    )
    exclusive.add_argument(
        "--server", metavar="URL", help="go through the admin API of the app at URL"
    )
    where.add_argument(
        "--token", metavar="T", help=f"admin token for --server (default: ${TOKEN_ENV})"
    )
    where.add_argument("--admin-path", default="/_router", metavar="PATH", help="default /_router")
    where.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="HTTP timeout (default 30)"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return common


def _filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason",
        choices=REASONS,
        metavar="REASON",
        help=f"only records with this reason: {', '.join(REASONS)}",
    )
    parser.add_argument("--thread", metavar="THREAD_ID", help="only records of this thread")
    parser.add_argument("--user", metavar="USER_ID", help="only records of this user")
    parser.add_argument("--run", metavar="RUN_ID", help="only records of this run")
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="created since: a duration back from now (30s, 15m, 2h, 7d), an ISO time or "
        "unix seconds",
    )


@command("dead-letters")
def _register_dead_letters(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "dead-letters",
        help="list, show, replay and purge dead letters",
        description="Inspect rejected events and replay them once the cause is fixed. "
        "Exit status: 0 done, 1 not found or rejected again, 2 usage error, 3 server or "
        "store unreachable.",
    )
    commands = parser.add_subparsers(
        title="commands", dest="dead_letters_command", metavar="COMMAND", required=True
    )
    common = _target_options()

    listing = commands.add_parser(
        "list",
        parents=[common],
        help="records, newest first",
        description="Records, newest first. --json prints a JSON array of records.",
    )
    _filter_options(listing)
    listing.add_argument("--limit", type=_positive, default=100, metavar="N", help="default 100")
    listing.set_defaults(handler=_handle(_list))

    show = commands.add_parser("show", parents=[common], help="one record, in full")
    show.add_argument("record_id", metavar="ID")
    show.set_defaults(handler=_handle(_show))

    replay = commands.add_parser(
        "replay",
        parents=[common],
        help="run records through the pipeline again (--server only)",
        description="Replay one record (ID) or every record matching the filters, oldest "
        "first. Accepted: the record is removed. Rejected again: it stays with attempts + 1. "
        "Needs --server: only a running router can run the pipeline.",
    )
    replay.add_argument("record_id", metavar="ID", nargs="?")
    _filter_options(replay)
    replay.add_argument("--all", action="store_true", help="every record (no filter)")
    replay.add_argument("--dry-run", action="store_true", help="count matches, replay nothing")
    replay.add_argument("--max", type=_positive, default=1000, metavar="N", help="default 1000")
    replay.add_argument(
        "--rate", type=float, default=500.0, metavar="R", help="replays per second (500)"
    )
    replay.set_defaults(handler=_handle(_replay))

    delete = commands.add_parser("delete", parents=[common], help="discard one record")
    delete.add_argument("record_id", metavar="ID")
    delete.set_defaults(handler=_handle(_delete))

    purge = commands.add_parser(
        "purge",
        parents=[common],
        help="discard records by age and filter",
        description="Discard every record matching the filters and older than --older-than. "
        "At least one is needed; --older-than 0s discards everything.",
    )
    purge.add_argument(
        "--older-than", metavar="AGE", help="created more than AGE ago: 30s, 15m, 2h, 7d"
    )
    _filter_options(purge)
    purge.set_defaults(handler=_handle(_purge))


@command("events")
def _register_events(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "events",
        help="what became of an event",
        description="Answer 'why did the user not get event E'.",
    )
    commands = parser.add_subparsers(
        title="commands", dest="events_command", metavar="COMMAND", required=True
    )
    show = commands.add_parser(
        "show",
        parents=[_target_options()],
        help="accepted (thread, seq, connections) or dead-lettered (the record)",
        description="With --server: accepted (thread, seq, how many connections it was "
        "handed to) or dead-lettered (the record). With --store: dead letters only.",
    )
    show.add_argument("event_id", metavar="EVENT_ID")
    show.add_argument("--thread", metavar="THREAD_ID", help="search this thread's history too")
    show.set_defaults(handler=_handle(_event))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _handle(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a failure into its message on stderr and its exit code."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except _Failure as failure:
            print(f"agent-router: {failure.message}", file=sys.stderr)
            return failure.code
        except InvalidFilter as exc:
            print(f"agent-router: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return handler


# --------------------------------------------------------------------------- targets


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filter fields of the admin API from the command line (None left out)."""
    values: dict[str, Any] = {
        "reason": args.reason,
        "thread_id": args.thread,
        "user_id": args.user,
        "run_id": args.run,
        "since": None if args.since is None else parse_since(args.since),
    }
    return {name: value for name, value in values.items() if value is not None}


class _Store:
    """A dead-letter store opened for each call, in a fresh event loop."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, work: Callable[[Any], Awaitable[_T]]) -> _T:
        import anyio

        from .deadletters import open_dead_letter_store, sqlite_path

        try:
            if self.url.startswith("sqlite:") and not os.path.isfile(sqlite_path(self.url)):
                raise _Failure(
                    EXIT_UNREACHABLE,
                    f"no dead-letter store at {sqlite_path(self.url)} (give --store URL, "
                    "or --server URL for a running app)",
                )
            store = open_dead_letter_store(self.url)
        except ValueError as exc:
            raise _Failure(EXIT_USAGE, str(exc)) from None
        except ImportError as exc:
            raise _Failure(EXIT_UNREACHABLE, f"cannot open {self.url}: {exc}") from None

        async def session() -> _T:
            await store.open()
            try:
                return await work(store)
            finally:
                await store.close()

        try:
            return anyio.run(session)
        except (_Failure, InvalidFilter):
            raise
        except Exception as exc:  # sqlite3.Error, OSError, BackendDown (redis)...
            raise _Failure(EXIT_UNREACHABLE, f"cannot use the store {self.url}: {exc}") from None

    def list(self, filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        from .deadletters import DeadLetterFilter

        where = DeadLetterFilter(**filters)

        async def work(store: Any) -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            cursor = None
            while len(items) < limit:
                page = await store.list(where, limit=min(_PAGE, limit - len(items)), cursor=cursor)
                items.extend(record.to_dict() for record in page.items)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            return items

        return self._call(work)

    def show(self, record_id: str) -> dict[str, Any]:
        async def work(store: Any) -> dict[str, Any] | None:
            record = await store.get(record_id)
            return None if record is None else dict(record.to_dict())

        found = self._call(work)
        if found is None:
            raise _Failure(EXIT_NO, f"no dead letter with id {record_id!r} in {self.url}")
        return found

    def replay(self, body: dict[str, Any] | None, record_id: str | None) -> dict[str, Any]:
        raise _Failure(
            EXIT_USAGE,
            "replay needs a running router to run the pipeline again (thread ownership, run "
            "lifecycle), which a store alone does not have: use --server URL --token T",
        )

    def delete(self, record_id: str) -> dict[str, Any]:
        async def work(store: Any) -> bool:
            return bool(await store.delete(record_id))

        if not self._call(work):
            raise _Failure(EXIT_NO, f"no dead letter with id {record_id!r} in {self.url}")
        return {"deleted": 1}

    def purge(self, filters: dict[str, Any], older_than: float | None) -> dict[str, Any]:
        from .deadletters import DeadLetterFilter

        # An age of 0 means everything there is now (no time bound at all).
        before = None if not older_than else time.time() - older_than
        where = DeadLetterFilter(**filters, before=before)

        async def work(store: Any) -> int:
            return int(await store.purge(where))

        return {"deleted": self._call(work)}

    def lookup(self, event_id: str, thread_id: str | None) -> dict[str, Any]:
        from .deadletters import DeadLetterFilter
        from .ids import is_event_id

        if not is_event_id(event_id):
            raise _Failure(EXIT_USAGE, f"{event_id!r} is not an event id")
        where = DeadLetterFilter(event_id=event_id)

        async def work(store: Any) -> list[dict[str, Any]]:
            page = await store.list(where, limit=100)
            return [record.to_dict() for record in page.items]

        records = self._call(work)
        if not records:
            raise _Failure(
                EXIT_NO,
                f"event {event_id!r} is not in the dead-letter store {self.url}; whether it "
                "was accepted only a running router knows: use --server URL",
            )
        return {
            "event_id": event_id,
            "status": "dead_lettered",
            "accepted": None,
            "dead_letters": records,
            "explanation": " ".join(
                f"Dead letter {r['id']}: {r['reason']}: {r['detail']}." for r in records
            ),
        }


class _Server:
    """The admin API of a running app, over HTTP (httpx, synchronous)."""

    def __init__(self, url: str, token: str | None, admin_path: str, timeout: float) -> None:
        self.base = url.rstrip("/") + "/" + admin_path.strip("/")
        self.token = token
        self.timeout = timeout

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        timeout: float | None = -1.0,
    ) -> Any:
        try:
            import httpx
        except ImportError:
            raise _Failure(
                EXIT_UNREACHABLE, "--server needs httpx: pip install 'agent-event-router[cli]'"
            ) from None
        headers = {"accept": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        url = self.base + path
        try:
            with httpx.Client(timeout=self.timeout if timeout == -1.0 else timeout) as client:
                response = client.request(method, url, params=params, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _Failure(EXIT_UNREACHABLE, f"cannot reach {url}: {exc}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code in (200, 202) and answer is not None:
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        code = answer.get("code") if isinstance(answer, dict) else None
        status = response.status_code
        if status == 401:
            raise _Failure(
                EXIT_UNREACHABLE,
                f"{url}: the server refused the token (401): give --token T or set {TOKEN_ENV}",
            )
        if code == "not_found":
            raise _Failure(EXIT_NO, str(error))
        if status == 400:
            raise _Failure(EXIT_USAGE, f"the server refused the request: {error}")
        if code == "disabled":
            raise _Failure(
                EXIT_UNREACHABLE, f"{url}: the admin API is not enabled (no admin token set)"
            )
        if status == 404:
            raise _Failure(
                EXIT_UNREACHABLE,
                f"{url}: 404, not an agent-router admin API: is --server the app's base URL "
                "and --admin-path right?",
            )
        raise _Failure(EXIT_UNREACHABLE, f"{url}: HTTP {status}: {error or response.text[:200]}")

    def list(self, filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while len(items) < limit:
            params = {**filters, "limit": min(_PAGE, limit - len(items))}
            if cursor is not None:
                params["cursor"] = cursor
            page = self._request("GET", "/dead-letters", params=params)
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return items

    def show(self, record_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._request("GET", f"/dead-letters/{record_id}")
        return answer

    def replay(self, body: dict[str, Any] | None, record_id: str | None) -> dict[str, Any]:
        answer: dict[str, Any]
        if record_id is not None:
            answer = self._request("POST", f"/dead-letters/{record_id}/replay")
        else:
            # Synchronous on the server and paced by the rate: no read timeout.
            answer = self._request("POST", "/dead-letters/replay", body=body, timeout=None)
        return answer

    def delete(self, record_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._request("DELETE", f"/dead-letters/{record_id}")
        return answer

    def purge(self, filters: dict[str, Any], older_than: float | None) -> dict[str, Any]:
        body = dict(filters)
        if older_than is not None:
            body["older_than"] = older_than
        answer: dict[str, Any] = self._request("POST", "/dead-letters/purge", body=body)
        return answer

    def lookup(self, event_id: str, thread_id: str | None) -> dict[str, Any]:
        params = {} if thread_id is None else {"thread_id": thread_id}
        answer: dict[str, Any] = self._request("GET", f"/events/{event_id}", params=params)
        return answer


def _target(args: argparse.Namespace) -> _Store | _Server:
    if args.server is not None:
        token = args.token or os.environ.get(TOKEN_ENV)
        return _Server(args.server, token, args.admin_path, args.timeout)
    if args.token is not None:
        raise _Failure(EXIT_USAGE, "--token goes with --server URL")
    return _Store(args.store or DEFAULT_STORE)


# --------------------------------------------------------------------------- commands


def _list(args: argparse.Namespace) -> int:
    records = _target(args).list(_filters(args), args.limit)
    if args.json:
        _print_json(records)
    else:
        _records_table(records, args.limit)
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    record = _target(args).show(args.record_id)
    if args.json:
        _print_json(record)
    else:
        _record_view(record)
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    filters = _filters(args)
    if args.record_id is not None and (filters or args.all or args.dry_run):
        raise _Failure(EXIT_USAGE, "replay takes an ID or filters (--reason...), not both")
    if args.record_id is None and not filters and not args.all:
        raise _Failure(EXIT_USAGE, "replay needs an ID, a filter (--reason, --thread...), or --all")
    if not 0 < args.rate <= 10_000:
        raise _Failure(EXIT_USAGE, f"--rate must be above 0 and at most 10000, got {args.rate}")
    target = _target(args)
    if args.record_id is not None:
        result = target.replay(None, args.record_id)
        if args.json:
            _print_json(result)
        else:
            _replay_view(args.record_id, result)
        return EXIT_OK if result["accepted"] else EXIT_NO
    body = {**filters, "dry_run": args.dry_run, "max": args.max, "rate": args.rate}
    report = target.replay(body, None)
    if args.json:
        _print_json(report)
    else:
        _counts_table("bulk replay" + (" (dry run)" if args.dry_run else ""), report)
    return EXIT_NO if report["rejected"] else EXIT_OK


def _delete(args: argparse.Namespace) -> int:
    answer = _target(args).delete(args.record_id)
    if args.json:
        _print_json(answer)
    else:
        print(f"deleted {args.record_id}")
    return EXIT_OK


def _purge(args: argparse.Namespace) -> int:
    filters = _filters(args)
    older_than = None if args.older_than is None else parse_duration(args.older_than)
    if older_than is None and not filters:
        raise _Failure(
            EXIT_USAGE, "purge needs --older-than AGE or a filter (--older-than 0s: everything)"
        )
    answer = _target(args).purge(filters, older_than)
    if args.json:
        _print_json(answer)
    else:
        print(f"deleted {answer['deleted']} record(s)")
    return EXIT_OK


def _event(args: argparse.Namespace) -> int:
    answer = _target(args).lookup(args.event_id, args.thread)
    if args.json:
        _print_json(answer)
        return EXIT_OK

    console = _console()
    console.print(answer["explanation"], markup=False, highlight=False)
    accepted = answer.get("accepted")
    if accepted is not None:
        _counts_table("accepted", accepted, console)
    for record in answer["dead_letters"]:
        _record_view(record, console)
    return EXIT_OK


# --------------------------------------------------------------------------- output


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _console() -> Any:
    """A rich console; when stdout is not a terminal (a pipe, a file), a wide one, so
    that tables are not squeezed to 80 columns."""
    from rich.console import Console

    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console()
    return Console(width=200)


def _records_table(records: list[dict[str, Any]], limit: int) -> None:
    from rich import box
    from rich.table import Table

    console = _console()
    if not records:
        console.print("no dead letters match")
        return
    # A narrow terminal gets what is needed to act (id, reason), with the detail
    # under the id; a wide one gets a column each.
    wide = console.width >= 150
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id" if wide else "id / detail", overflow="fold", min_width=32, ratio=1)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("reason", no_wrap=True)
    if wide:
        table.add_column("type", no_wrap=True)
        table.add_column("thread", overflow="fold")
        table.add_column("user", overflow="fold")
    table.add_column("tries", justify="right")
    if wide:
        table.add_column("detail", overflow="fold", ratio=2)
    for record in records:
        created = record["created_at"][:19].replace("T", " ")
        if wide:
            cells = [
                record["id"],
                created,
                record["reason"],
                *(_cell(record[name]) for name in ("event_type", "thread_id", "user_id")),
                str(record["attempts"]),
                _cell(record["detail"]),
            ]
        else:
            cells = [
                f"{record['id']}\n[dim]{_cell(record['detail'])}[/dim]",
                created[5:16],
                record["reason"],
                str(record["attempts"]),
            ]
        table.add_row(*cells)
    console.print(table)
    more = " (there may be more: raise --limit)" if len(records) >= limit else ""
    console.print(f"{len(records)} record(s){more}", highlight=False)


def _record_view(record: dict[str, Any], console: Any = None) -> None:
    from rich.json import JSON
    from rich.table import Table

    console = console or _console()
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column()
    for name in (
        "id",
        "reason",
        "detail",
        "event_id",
        "event_type",
        "run_id",
        "thread_id",
        "user_id",
        "created_at",
        "attempts",
    ):
        fields.add_row(name, _cell(record.get(name)))
    console.print(fields)
    if record.get("event_raw"):
        console.print("event (not JSON, kept as text):", style="bold")
        console.print(str(record["event"]), markup=False, highlight=False)
    else:
        console.print("event:", style="bold")
        console.print(JSON.from_data(record["event"]))
    if record.get("history"):
        history = Table(title="earlier attempts")
        for column in ("at", "reason", "detail"):
            history.add_column(column)
        for item in record["history"]:
            history.add_row(
                _cell(item.get("at")), _cell(item.get("reason")), _cell(item.get("detail"))
            )
        console.print(history)


def _replay_view(record_id: str, result: dict[str, Any]) -> None:

    console = _console()
    record: dict[str, Any] = result.get("dead_letter") or {}
    if result["accepted"] and not record:
        console.print(f"accepted: {record_id} replayed as seq {result['seq']}; record removed")
    elif result["accepted"]:
        console.print(f"accepted (seq {result['seq']}); the record stays: {record['detail']}")
    else:
        attempts = record.get("attempts", "?")
        detail = record.get("detail", "")
        console.print(
            f"rejected again as {result['reason']} (attempts {attempts}): {detail}",
            markup=False,
        )


def _counts_table(title: str, counts: dict[str, Any], console: Any = None) -> None:
    from rich.table import Table

    console = console or _console()
    table = Table(title=title)
    for name in counts:
        table.add_column(name, justify="right")
    table.add_row(*(_cell(value) for value in counts.values()))
    console.print(table)


def _cell(value: Any) -> str:
    """Table text for a value; rich markup in data (a "[bold]" in a detail) stays text."""
    from rich.markup import escape

    return "-" if value is None else escape(str(value))
