"""The benchmark suite runs: ``python -m benchmarks --quick`` writes valid JSON in which
every scenario completed and every run was verified (nothing lost, leaked or
reordered). Timings and targets are never judged here: benchmarks are not tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"small", "fan", "agents", "paced", "many", "inproc"}


@pytest.mark.timeout(180)
def test_quick_benchmarks_run_verified_and_write_json(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    log = proc.stderr[-4000:] + proc.stdout[-2000:]
    assert out.is_file(), log
    data = json.loads(out.read_text())
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
    for target in data["targets"]:
        assert target["pass"] in (True, False, None)
    assert proc.returncode == 0, log
