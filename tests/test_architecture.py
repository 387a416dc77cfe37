"""router.ids is the single source of truth for ids (DESIGN §1): nobody else builds or slices them.

Walks every module of ``router/`` and ``bridge/`` with :mod:`ast` and fails, listing
``file:line``, when a module other than ``router/ids.py``

* imports ``uuid`` or ``secrets`` (``import``, ``from ... import``, ``__import__`` or
  ``importlib.import_module``): every id the library mints comes from router.ids;
* holds a string literal (f-string constant parts included) that uses an id prefix.

The literal rule. Each literal is cut into words of ``[A-Za-z0-9_]``; a word is flagged when

* it starts with ``thread_`` or ``run_`` and is not a plain lowercase name: a bare prefix
  (``"run_"``, ``f"thread_{op}"``), a prefix followed by digits (an id pasted in), or
  anything starting ``run_thread`` (a run built from a thread);
* it contains ``run_thread`` anywhere, or starts or ends with ``_thread_`` / ``_run_``: the
  glue used to split or join ids (``s.split("_thread_")``, ``f"{x}_run_{y}"``).

So field names, reason codes and settings that merely start with the word (``"thread_id"``,
``"run_ids"``, ``"thread_mismatch"``, ``"run_ttl"``) stay allowed, as do messages that
mention them, grammar notation (``"run_<thread_id>_<hex8>"``) and docstrings, which
document ids rather than build them. Identifiers and
keyword-argument names are not literals and are never looked at.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("router", "bridge")
ID_MODULE = Path("router/ids.py")
BANNED_MODULES = frozenset({"uuid", "secrets"})

_WORD = re.compile(r"[A-Za-z0-9_]+")
_PLAIN_NAME = re.compile(r"(?:thread|run)_[a-z]+(?:_[a-z]+)*")


def _literal_problem(text: str) -> str | None:
    """Why ``text`` looks like it builds or slices an id, or None."""
    for match in _WORD.finditer(text):
        word = match.group()
        if text.startswith("<", match.end()):
            continue  # grammar notation, as in "run_<thread_id>_<hex8>": documentation
        if word.startswith(("thread_", "run_")):
            if word.startswith("run_thread") or not _PLAIN_NAME.fullmatch(word):
                return f"uses the id prefix {word!r}"
        if "run_thread" in word:
            return f"uses the id glue {word!r}"
        for glue in ("_thread_", "_run_"):
            if word.startswith(glue) or word.endswith(glue):
                return f"uses the id glue {word!r}"
    return None


def _docstring_nodes(tree: ast.AST) -> set[int]:
    found: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
        ):
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _dynamic_import(node: ast.Call) -> str | None:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in {"__import__", "import_module"} or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        root = first.value.split(".")[0]
        if root in BANNED_MODULES:
            return root
    return None


def check_source(source: str, filename: str) -> list[str]:
    """Every violation in one module's source, as ``filename:line: what``."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        return [f"{filename}:{exc.lineno}: cannot be parsed, so cannot be checked: {exc.msg}"]
    docstrings = _docstring_nodes(tree)
    problems: list[str] = []

    def report(node: ast.AST, what: str) -> None:
        problems.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in BANNED_MODULES:
                    report(node, f"imports {alias.name} (mint ids with router.ids)")
        elif isinstance(node, ast.ImportFrom):
            root = (node.module or "").split(".")[0]
            if node.level == 0 and root in BANNED_MODULES:
                report(node, f"imports from {node.module} (mint ids with router.ids)")
        elif isinstance(node, ast.Call):
            module = _dynamic_import(node)
            if module is not None:
                report(node, f"imports {module} dynamically (mint ids with router.ids)")
        elif isinstance(node, ast.Constant) and id(node) not in docstrings:
            value = node.value
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if isinstance(value, str):
                problem = _literal_problem(value)
                if problem is not None:
                    report(node, f"string literal {problem} (build and read ids with router.ids)")
    return sorted(set(problems), key=lambda p: (int(p.split(":")[1]), p))


def modules() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_no_module_but_router_ids_mints_builds_or_slices_ids() -> None:
    checked = 0
    problems: list[str] = []
    for path in modules():
        relative = path.relative_to(ROOT)
        if relative == ID_MODULE:
            continue
        checked += 1
        problems += check_source(path.read_text(encoding="utf-8"), str(relative))
    assert checked >= 3, "the walk found almost nothing: is the tree where the test thinks?"
    assert not problems, "ids built or sliced outside router/ids.py:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- the checker itself

BAD_MODULE = '''\
"""A module that gets ids wrong in every way the rule knows."""
import uuid
import secrets as s
from secrets import token_hex
import importlib

def mint(t, op, ms):
    a = f"run_{t}_abc"
    b = "thread_" + op
    c = "run_" + t + "_" + token_hex(4)
    d = t.startswith("run_")
    e = t.split("_thread_")
    f = t[len("run_thread_"):]
    g = "run_thread_chat_1757361062151_7_90c65fe4_1a2b3c4d"
    h = f"{op}_run_{ms}"
    i = importlib.import_module("uuid")
    j = __import__("secrets")
    k = b"run_" + t.encode()
    m = "thread_websocket_factory_1757361062151_7_90c65fe4"
    return a, b, c, d, e, f, g, h, i, j, k, m
'''
BAD_LINES = [2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]

GOOD_MODULE = '''\
"""Ids such as run_thread_chat_1757361062151_7_90c65fe4_1a2b3c4d are documented here."""
from .ids import extract_thread_id, new_run_id

REASONS = ("invalid_id", "thread_mismatch", "thread_not_found", "not_owner")
COLUMNS = "id, run_id, thread_id, user_id, created_at"


class Record:
    """Keeps run_id and thread_id; see new_run_id("thread_...")."""

    def frame(self, thread_prefix, run_id, thread_id, thread_ids, run_ids):
        message = f"run_id {run_id!r} embeds thread {extract_thread_id(run_id)!r}"
        return {"thread_id": thread_id, "run_id": run_id, "thread_ids": thread_ids,
                "run_ids": run_ids, "run_ttl": 900, "message": message,
                "hint": "call extract_thread_id() or new_run_id()"}


def build(uuid_like, secrets_count):
    return new_run_id(thread_id=uuid_like)
'''


def _lines(problems: list[str]) -> list[int]:
    return sorted({int(p.split(":")[1]) for p in problems})


def test_checker_flags_a_bad_module() -> None:
    problems = check_source(BAD_MODULE, "bad.py")
    assert _lines(problems) == BAD_LINES, "\n".join(problems)
    assert all(p.startswith("bad.py:") for p in problems)


def test_checker_allows_field_names_reason_codes_and_docstrings() -> None:
    assert check_source(GOOD_MODULE, "good.py") == []


def test_checker_flags_the_real_id_module() -> None:
    # router/ids.py is the one exemption; the checker must see what it does (it
    # draws random bytes from secrets and os.urandom; uuid is caught in bad.py).
    problems = check_source((ROOT / ID_MODULE).read_text(encoding="utf-8"), str(ID_MODULE))
    assert any("imports secrets" in p for p in problems)
    assert any("'thread_'" in p for p in problems)
    assert any("'run_'" in p for p in problems)


def test_checker_reports_a_module_it_cannot_parse() -> None:
    assert _lines(check_source("x = (\n", "broken.py")) != []


@pytest.mark.parametrize(
    ("literal", "flagged"),
    [
        ("thread_", True),
        ("run_", True),
        ("run_thread_", True),
        ("_thread_", True),
        ("_run_", True),
        ("x_thread_", True),
        ("run_1", True),
        ("thread_chat_1757361062151_7_90c65fe4", True),
        ("see run_thread_chat", True),
        ("thread_Chat", True),
        ("thread_id", False),
        ("run_id", False),
        ("thread_ids", False),
        ("run_ids", False),
        ("thread_mismatch", False),
        ("not_owner", False),
        ("thread not found", False),
        ("extract_thread_id", False),
        ("the thread_id of the run_id", False),
        ("running", False),
        ("rerun_id", False),
        ("", False),
        ("Canonical run id (run_<thread_id>_<hex8>).", False),
        ("thread_<operation>_<millis>_<counter>_<hex8>", False),
    ],
)
def test_literal_rule(literal: str, flagged: bool) -> None:
    assert (_literal_problem(literal) is not None) is flagged
