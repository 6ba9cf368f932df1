"""The config API benchmark runs end to end in --quick mode and writes its report.

Shape only: timings depend on the machine, so nothing here asserts a speed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def quick_run(bench: str, tmp_path: Path, timeout: float, *, prints_json: bool = True
              ) -> dict[str, Any]:
    """``bench/<bench>/run.py --quick`` into ``tmp_path``: the report it wrote (the same as it
    printed with ``--json``, where the benchmark has that), after checking its chart."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / bench / "run.py"), "--quick",
         *(["--json"] if prints_json else []), "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads((tmp_path / f"{bench}-latest.json").read_text())
    if prints_json:
        assert json.loads(proc.stdout) == result
    assert (tmp_path / f"{bench}-latest.png").stat().st_size > 0
    return result


@pytest.mark.timeout(180)
def test_bench_api_quick(tmp_path: Path) -> None:
    result = quick_run("api", tmp_path, 150, prints_json=False)
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


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
@pytest.mark.timeout(600)
def test_bench_cni_quick(tmp_path: Path) -> None:
    result = quick_run("cni", tmp_path, 540)
    assert {"cpu", "cores", "ram_gb", "kernel", "python"} <= result["machine"].keys()
    measured = ["reference", "reference_plain"]
    if (REPO / ".venv" / "bin" / "tungsten-cni").is_file():
        measured.append("tungsten")
        assert {"sequential_add_p50", "parallel_add_p99"} <= result["ratios"].keys()
        assert len(result["goals"]) == 2
        assert result["startup"]["tungsten_cni_version"]["p50_ms"] > 0
        assert result["startup"]["importtime"]["top"]
        # the launcher `tungsten-cni --install` writes is what ran; the agent's phases
        assert result["tungsten_binary"] == "launcher"
        assert result["startup"]["tungsten_cni_launcher_version"]["p50_ms"] > 0
        phases = result["tungsten"]["phases"]
        assert phases["sequential"]["ADD"]["n"] == 10 and phases["parallel"]["ADD"]["n"] == 20
        assert list(phases["sequential"]["ADD"])[2:] == [
            "queued", "checks", "record", "create", "config", "plug", "install", "commit"]
        assert phases["sequential"]["DEL"]["unplug"]["p50_ms"] > 0
    else:
        assert "skipped" in result["tungsten"]
    for label in measured:
        for mode, runs in (("sequential", 10), ("parallel", 20)):
            for cmd in ("add", "del"):
                s = result[label][mode][cmd]
                assert s["n"] == runs == len(s["samples_ms"])
                assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert result["startup"]["reference_bridge_version"]["p50_ms"] > 0


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
@pytest.mark.timeout(600)
def test_bench_datapath_quick(tmp_path: Path) -> None:
    """The datapath benchmark's smoke run: a lab and the hand-built path, 0 and 100 rules.
    Shape and sanity only (every ratio a positive finite number), no speed threshold; the
    run leaves none of its namespaces behind."""
    result = quick_run("datapath", tmp_path, 540)
    assert {"cpu", "cores", "kernel", "python"} <= result["machine"].keys()
    assert [ph["rules"] for ph in result["phases"]] == [0, 100]
    metrics = {"tcp1_gbps", "tcp4_gbps", "udp_zero_loss_pps", "udp_max_pps", "ping_p50_ms",
               "ping_p99_ms", "ping_new_ms"}
    for ph in result["phases"]:
        for pair in ("cross-node", "same-node"):
            figures = ph["pairs"][pair]
            for path in ("baseline", "tungsten"):
                assert metrics <= figures[path].keys(), (pair, path)
                assert figures[path]["ping_received"] > 0
            assert figures["ratios"].keys() == metrics
            for name, r in figures["ratios"].items():
                assert isinstance(r, float) and math.isfinite(r) and r > 0, (pair, name, r)
    assert result["phases"][1]["apply_s"] > 0
    assert result["goal"]["rules"] == 100 and isinstance(result["goal"]["met"], bool)
    ours = (result["baseline_namespaces"].rstrip("*"), f"tl-{result['lab']}-")
    assert not [n for n in os.listdir("/run/netns") if n.startswith(ours)]
