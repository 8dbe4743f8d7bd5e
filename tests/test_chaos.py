"""A short chaos run (bench/chaos.py): a real job over three agent processes while an agent is killed mid-unit, a
Celery worker is killed and Redis restarts empty; no item is lost or duplicated, nothing is paid twice, the ledger
balances."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ZERO = ("items_lost", "items_duplicated", "double_payments", "ledger_imbalance")
FAULTS = ("kills_agent", "kills_worker", "redis_restarts")


def test_a_short_chaos_run_loses_no_item_and_pays_once(tmp_path):
    # The run brings its own database, Redis and Stripe: it must not be pointed at the test environment's.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    report = tmp_path / "chaos.json"
    command = [sys.executable, "bench/chaos.py", "--cars", "3", "--seconds", "90", "--items", "600",
               "--json", str(report)]  # fmt: skip
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        try:
            stdout, stderr = run.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            run.terminate()  # SIGTERM, not SIGKILL: the script then stops every process it started
            stdout, stderr = run.communicate(timeout=60)
            pytest.fail(f"the chaos run took over 300 s:\n{stdout[-6000:]}\n{stderr[-6000:]}")
    output = stdout[-6000:] + stderr[-6000:]
    summary_lines = [line for line in stdout.splitlines() if line.startswith("chaos: ")]
    assert len(summary_lines) == 1, output
    summary = dict(field.split("=", 1) for field in summary_lines[0].removeprefix("chaos: ").split())

    assert run.returncode == 0, output
    assert summary["bid"] == "completed", output
    assert {name: summary[name] for name in ZERO} == dict.fromkeys(ZERO, "0"), output
    assert all(int(summary[name]) >= 1 for name in FAULTS), output
    assert int(summary["items"]) == 600
    written = json.loads(report.read_text())
    assert written["ok"] and written["settled"]
    assert {k: str(v) for k, v in written["summary"].items()} == summary
