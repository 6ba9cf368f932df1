"""``tungsten demo --down --json`` for real (root): the measured matrix and nothing left."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


def _ours(name: str) -> list[str]:
    try:
        return [n for n in os.listdir("/run/netns") if n.startswith(f"tl-{name}-")]
    except FileNotFoundError:
        return []


def test_demo_down_json(tmp_path: Path) -> None:
    name = "d" + secrets.token_hex(3)
    env = {**os.environ, "TUNGSTEN_STATE_DIR": str(tmp_path / "state")}
    try:
        r = subprocess.run([sys.executable, "-m", "tungsten", "demo", "--down", "--json",
                            "--name", name], env=env, capture_output=True, text=True,
                           timeout=600, check=False)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["agrees"] is True
        cell = {(c["src"], c["dst"], c["probe"]): c for c in out["matrix"]}
        for probe in ("ping", "tcp/5432", "tcp/80"):  # same network, also cross-node
            for a, b in (("web1", "web2"), ("web2", "web1"), ("db1", "db2"), ("db2", "db1")):
                assert cell[a, b, probe]["reached"], (a, b, probe)
        for a in ("web1", "web2"):
            for b in ("db1", "db2"):
                assert cell[a, b, "tcp/5432"]["reached"]
                assert not cell[a, b, "tcp/80"]["reached"]
                assert not cell[a, b, "ping"]["reached"]
                assert not cell[b, a, "tcp/5432"]["reached"]  # `>`: not the reverse
            for probe in ("ping", "tcp/5432", "tcp/80"):  # the green twin: never
                assert not cell[a, "twin", probe]["reached"]
                assert cell[a, "twin", probe]["answered_by"] != "twin"
        assert "policy red-to-blue rule 1" in cell["web1", "db1", "tcp/5432"]["reason"]
        assert "no route" in cell["db1", "twin", "ping"]["reason"]
        assert _ours(name) == []
        assert not (tmp_path / "state" / "labs" / name).exists()
    finally:
        subprocess.run([sys.executable, "-m", "tungsten", "lab", "down", name], env=env,
                       capture_output=True, timeout=300, check=False)
        for ns in _ours(name):
            subprocess.run(["ip", "netns", "del", ns], check=False)
