"""The config API benchmark runs end to end in --quick mode and writes its report.

Shape only: timings depend on the machine, so nothing here asserts a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_bench_api_quick(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "api" / "run.py"), "--quick", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "api-latest.json").read_text())
    assert (tmp_path / "api-latest.png").stat().st_size > 0
    for key in ("machine", "config", "baseline", "create_raw", "create_vnc_api", "reads",
                "list", "rss", "ratios", "goals", "command"):
        assert key in result, key
    assert {"cpu", "cores", "ram_gb", "kernel", "python"} <= result["machine"].keys()
    for kind in ("create_raw", "create_vnc_api"):
        assert result[kind]["pairs_per_s"] > 0
        for req in ("vmi_create", "iip_create"):
            assert {"p50_ms", "p99_ms"} <= result[kind][req].keys()
    assert result["create_raw"]["pairs"] == 1000
    assert {"p50_ms", "p99_ms"} <= result["reads"]["read"].keys()
    for label in ("plain", "detail"):
        assert result["list"][label]["count"] == 1000
        assert result["list"][label]["bytes"] > 0
    assert result["rss"]["loaded_mb"] > 0
    assert {"post", "get"} <= result["baseline"]["http"].keys()
    assert result["baseline"]["sqlite"]["commits_per_s"] > 0
