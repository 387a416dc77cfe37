"""router.cli: ``agent-router`` in process, and once as a real process."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from router import cli
from router.events import inbound_schema, outbound_schema
from router.ids import new_run_id, new_thread_id

ROOT = Path(__file__).resolve().parent.parent
FIELD_THREAD = "thread_websocket_factory_1757361062151_7_90c65fe4"
FIELD_RUN = "run_websocket_factory_1757361062151_8_1a2b3c4d"
FIELD_EMBEDDED = "websocket_factory_1757361062151_8"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- ids check


def test_ids_check_a_valid_run(capsys: pytest.CaptureFixture[str]) -> None:
    thread = new_thread_id("cli")
    code, out, err = run(capsys, "ids", "check", new_run_id(thread))
    assert code == 0
    assert thread in out and "canonical" in out
    assert err == ""


def test_ids_check_a_consistent_pair(capsys: pytest.CaptureFixture[str]) -> None:
    thread = new_thread_id("cli")
    code, out, _ = run(capsys, "ids", "check", new_run_id(thread), thread)
    assert code == 0
    assert "consistent" in out


def test_ids_check_the_field_mismatch(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ids", "check", FIELD_RUN, FIELD_THREAD)
    assert code == 1
    assert FIELD_RUN in out and FIELD_THREAD in out and FIELD_EMBEDDED in out
    assert "mismatch" in out


def test_ids_check_a_run_of_another_minted_thread(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ids", "check", new_run_id(new_thread_id()), new_thread_id())
    assert code == 1
    assert "mismatch" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["registry"],
        [""],
        ["run_"],
        [FIELD_RUN],
        [FIELD_THREAD],
        ["run_thread_chat_1_2_90c65fe4_1a2b3c4d "],
        ["registry", FIELD_THREAD],
        [new_run_id(FIELD_THREAD), "not a thread"],
        [new_run_id(FIELD_THREAD), ""],
    ],
)
def test_ids_check_invalid_ids(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, _ = run(capsys, "ids", "check", *argv)
    assert code == 1
    assert repr(argv[0]) in out or "not usable" in out


def test_ids_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ids", "check", "--json", FIELD_RUN, FIELD_THREAD)
    assert code == 1
    result = json.loads(out)
    assert result["valid"] is False
    assert result["reason"] == "thread_mismatch"
    assert result["embedded"] == FIELD_EMBEDDED
    assert result["run_id"] == FIELD_RUN and result["thread_id"] == FIELD_THREAD
    assert FIELD_RUN in result["explanation"]

    code, out, _ = run(capsys, "ids", "check", "--json", "registry")
    assert code == 1
    assert json.loads(out)["reason"] == "invalid_id"

    thread = new_thread_id()
    code, out, _ = run(capsys, "ids", "check", "--json", new_run_id(thread))
    assert code == 0
    result = json.loads(out)
    assert result["valid"] is True and result["reason"] is None
    assert result["embedded"] == thread and result["thread_id"] is None


@pytest.mark.parametrize(
    "argv",
    [
        ["ids", "check"],
        ["ids", "check", "a", "b", "c"],
        ["ids"],
        ["ids", "nope"],
        ["ids", "check", "--bogus", FIELD_RUN],
        [],
        ["nope"],
        ["schema", "sideways"],
        ["schema", "inbound", "outbound"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert "usage:" in err
    assert out == ""


# --------------------------------------------------------------------------- schema


def test_schema_prints_both_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0
    assert json.loads(out) == {"inbound": inbound_schema(), "outbound": outbound_schema()}
    assert out.startswith('{\n  "inbound": {\n    "')


@pytest.mark.parametrize(
    ("which", "schema"), [("inbound", inbound_schema), ("outbound", outbound_schema)]
)
def test_schema_prints_one(capsys: pytest.CaptureFixture[str], which: str, schema: Any) -> None:
    code, out, _ = run(capsys, "schema", which)
    assert code == 0
    assert json.loads(out) == schema()
    assert out == json.dumps(schema(), indent=2) + "\n"


# --------------------------------------------------------------------------- help and registry


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert set(cli.COMMANDS) >= {"ids", "schema"}
    for name in cli.COMMANDS:
        assert re.search(rf"^ {{4}}{re.escape(name)}\b", out, re.M), name
    code, out, _ = run(capsys, "ids", "--help")
    assert code == 0 and "check" in out
    code, out, _ = run(capsys, "ids", "check", "--help")
    assert code == 0 and "RUN_ID" in out and "THREAD_ID" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("agent-router ")


def test_a_registered_command_is_listed_and_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    seen: list[argparse.Namespace] = []

    def handler(args: argparse.Namespace) -> int:
        seen.append(args)
        print(f"hello {args.name}")
        return 3

    @cli.command("greet")
    def register(subparsers: cli.Subparsers) -> None:
        parser = subparsers.add_parser("greet", help="say hello to someone")
        parser.add_argument("name")
        parser.set_defaults(handler=handler)

    code, out, _ = run(capsys, "--help")
    assert "greet" in out and "say hello to someone" in out
    code, out, _ = run(capsys, "greet", "ada")
    assert (code, out) == (3, "hello ada\n")
    assert seen[0].name == "ada"


def test_interrupt_exits_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    @cli.command("wait")
    def register(subparsers: cli.Subparsers) -> None:
        subparsers.add_parser("wait").set_defaults(handler=interrupted)

    assert run(capsys, "wait")[0] == 130


# --------------------------------------------------------------------------- a real process


def _command() -> list[str]:
    script = shutil.which("agent-router")
    return [script] if script else [sys.executable, "-m", "router"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run_process(argv: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "argv",
    [_command(), [sys.executable, "-m", "router"]],
    ids=["console-script" if shutil.which("agent-router") else "console-script-missing", "-m"],
)
def test_the_command_line_as_a_process(argv: list[str]) -> None:
    mismatch = _run_process(argv, "ids", "check", FIELD_RUN, FIELD_THREAD)
    assert mismatch.returncode == 1, mismatch.stderr
    assert FIELD_EMBEDDED in mismatch.stdout

    thread = new_thread_id()
    valid = _run_process(argv, "ids", "check", new_run_id(thread), thread)
    assert valid.returncode == 0, valid.stderr

    usage = _run_process(argv, "ids", "check")
    assert usage.returncode == 2
    assert "usage:" in usage.stderr

    schema = _run_process(argv, "schema", "outbound")
    assert schema.returncode == 0, schema.stderr
    assert json.loads(schema.stdout) == outbound_schema()

    helped = _run_process(argv, "--help")
    assert helped.returncode == 0
    assert "ids" in helped.stdout and "schema" in helped.stdout


# --------------------------------------------------------------------------- bench


def test_bench_hands_its_arguments_to_the_suite(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    code, out, _ = run(capsys, "bench", "--help")
    assert code == 0
    assert "--quick" in out and "--scenarios" in out and "--redis" in out
    code, _, err = run(capsys, "bench", "--scenarios")  # the suite's own usage error
    assert code == 2 and "--scenarios" in err


def test_bench_passes_its_arguments_in_order(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    import benchmarks.__main__ as suite

    seen: list[list[str]] = []
    monkeypatch.setattr(suite, "main", lambda argv: seen.append(list(argv)) or 0)
    argv = ["--scenarios", "small,fan", "--reps", "5", "--variant", "before=/tmp/x", "--quick"]
    code, _, _ = run(capsys, "bench", *argv)
    assert code == 0 and seen == [argv]


def test_bench_outside_a_source_checkout_says_where_to_run_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(
        cli.importlib, "import_module", _refuse("benchmarks.__main__", cli.importlib.import_module)
    )
    code, out, err = run(capsys, "bench", "--quick")
    assert code == 2 and out == ""
    assert "source checkout" in err and "repository root" in err


def _refuse(name: str, real: Any) -> Any:
    def import_module(module: str, *args: Any) -> Any:
        if module == name:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(module, *args)

    return import_module
