"""`tungsten sim` end to end at a small scale: every agent ends with exactly its routes."""

from __future__ import annotations

import json
import subprocess
import sys


def _sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tungsten", "sim", *args], text=True,
                          capture_output=True, timeout=240, check=False)


def test_sim_converges_and_reports_json() -> None:
    proc = _sim("--agents", "6", "--ports-per-agent", "4", "--networks", "3",
                "--networks-per-agent", "2", "--procs", "2", "--policy-change", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("agents", "ports", "routes_expected", "routes_installed", "create_s",
                "converge_s", "controller_rss_mb", "agent_rss_mb", "policy_change_s"):
        assert key in result, key
    assert result["agents"] == 6 and result["ports"] == 24
    assert result["routes_installed"] == result["routes_expected"] > 0
    assert len(result["agent_rss_mb"]) == 6
    assert "converged" in proc.stderr  # progress is shown while it runs


def test_sim_bad_arguments_fail_cleanly() -> None:
    proc = _sim("--agents", "0")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--agents" in proc.stderr
