"""The benchmark suite runs: ``python -m benchmarks --quick`` writes valid JSON in which
every scenario completed and every run was verified (nothing lost, leaked or
reordered). Timings and targets are never judged here: benchmarks are not tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"small", "fan", "agents", "paced", "many", "inproc", "inproc-agents"}


def run_quick(out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Any, str]:
    """``python -m benchmarks --quick`` with ``args``: the process, its JSON, its log."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    log = proc.stderr[-4000:] + proc.stdout[-2000:]
    assert out.is_file(), log
    return proc, json.loads(out.read_text()), log


@pytest.mark.timeout(180)
def test_quick_benchmarks_run_verified_and_write_json(tmp_path: Path) -> None:
    proc, data, log = run_quick(tmp_path / "bench" / "results.json")
    assert data["meta"]["quick"] is True
    assert set(data["scenarios"]) == SCENARIOS, log
    for name, scenario in data["scenarios"].items():
        assert scenario["ok"], (name, scenario["errors"], log)
        assert scenario["verified"], (name, log)
        assert "router" in scenario["systems"], name
        for system, result in scenario["systems"].items():
            assert result["ok"] and result["verified"], (name, system)
            assert len(result["reps"]) == scenario["params"]["reps"] >= 3, (name, system)
            for rep in result["reps"]:
                assert rep["verified"], (name, system, rep)
                assert rep["delivered"] > 0, (name, system)
                assert rep.get("lost", 0) == 0 and rep.get("leaks", 0) == 0, (name, system)
                assert rep.get("order_errors", 0) == 0, (name, system)
    for name in ("small", "fan"):
        # The validation floor runs beside the baselines, and the router is compared to it.
        assert data["scenarios"][name]["systems"]["validated"]["verified"], (name, log)
        assert data["scenarios"][name]["ratios"]["server_cpu_us_per_event_vs_validated"] > 0
        assert "validated vs bare" in proc.stdout, log
    for target in data["targets"]:
        assert target["pass"] in (True, False, None)
    assert proc.returncode == 0, log


@pytest.mark.timeout(30)
async def test_validation_floor_validates_and_sends_the_routers_frame() -> None:
    """The floor system is only a floor if it really runs the router's stage 1: a bad
    event is refused, a good one becomes the router's own frame."""
    from benchmarks.servers import ValidatedSystem

    system = ValidatedSystem()
    thread_id, run_id, _ = await system.create_thread("user0001")
    sent: list[str] = []

    class Socket:
        async def send_text(self, text: str) -> None:
            sent.append(text)

    system.sockets["user0001"] = {Socket()}  # type: ignore[arg-type]
    # NaN is no JSON: the payload fails validation, nothing is sent.
    assert await system.emit("user0001", thread_id, run_id, float("nan")) is False  # type: ignore[arg-type]
    assert sent == []
    assert await system.emit("user0001", thread_id, run_id, 7) is True
    frame = json.loads(sent[0])
    assert frame["seq"] == 1 and frame["thread_id"] == thread_id and frame["run_id"] == run_id
    assert frame["payload"]["data"]["n"] == 7 and frame["type"] == "custom"


@pytest.mark.timeout(180)
def test_quick_benchmarks_on_redis_add_verified_redis_rows(tmp_path: Path, redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    local_redis = Path(f"/proc/{pid}/exe").exists()
    proc, data, log = run_quick(
        tmp_path / "bench" / "redis.json",
        "--scenarios",
        "agents,small,inproc-agents",
        "--redis",
        redis_url,
    )
    for name in ("agents", "small"):
        scenario = data["scenarios"][name]
        row = scenario["systems"]["router:redis"]
        assert row["ok"] and row["verified"], (name, log)
        for rep in row["reps"]:
            assert rep["delivered"] == rep["expected"] > 0, (name, rep)
        if not local_redis:
            continue  # Redis elsewhere (another host, a container): no CPU figures
        # Redis runs on this host: its CPU time is counted beside the server's, and
        # the ceiling follows from the three.
        assert all(rep["redis_cpu_us_per_event"] > 0 for rep in row["reps"]), name
        budget = scenario["redis_vs_memory"]["cpu_budget"]
        memory_rate = scenario["systems"]["router"]["median"]["delivered_per_s"]
        assert budget["ceiling_per_s"] <= budget["cpus"] * 1e6 / budget["all_us"] * 1.0001
        assert budget["ceiling_per_s"] <= 1e6 / budget["server_us"] * 1.0001
        assert budget["ceiling_vs_memory"] == pytest.approx(budget["ceiling_per_s"] / memory_rate)
    pipe = data["scenarios"]["inproc-agents"]
    assert pipe["systems"]["router:redis"]["verified"], log
    assert pipe["redis_vs_memory"]["published_per_s"] > 0
    if local_redis:
        assert pipe["redis_vs_memory"]["redis_cpu_us_per_event"] > 0
        assert "router:redis CPU us/ev" in proc.stdout, log
    assert proc.returncode == 0, log


@pytest.mark.timeout(60)
def test_profile_without_py_spy_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing on it, py-spy least of all
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--profile", str(tmp_path / "p")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 2
    assert "--profile needs py-spy" in proc.stderr
    assert not (tmp_path / "p").exists()
