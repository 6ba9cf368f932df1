"""What the lab tests share: driving `tungsten lab` in a private state directory and finding
what a lab left behind (namespaces, processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


def our_namespaces(name: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(f"tl-{name}-"))
    except FileNotFoundError:
        return []


def our_processes(labdir: Path) -> list[psutil.Process]:
    needle = str(labdir) + "/"
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if any(needle in part for part in p.info.get("cmdline") or []):
            out.append(p)
    return out


@dataclass
class Lab:
    name: str
    state_dir: Path
    file: Path

    @property
    def labdir(self) -> Path:
        return self.state_dir / "labs" / self.name

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TUNGSTEN_STATE_DIR": str(self.state_dir)}

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tungsten", "lab", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), env=self.env, capture_output=True, text=True,
                              timeout=300, check=False)

    def exec(self, workload: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return self.run("exec", "--lab", self.name, workload, "--", *cmd)

    def ping(self, src: str, dst_ip: str) -> bool:
        r = self.exec(src, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", dst_ip)
        return r.returncode == 0

    def status(self) -> dict[str, Any]:
        r = self.run("status", self.name, "--json")
        assert r.returncode == 0, r.stderr
        data: dict[str, Any] = json.loads(r.stdout)
        return data

    def ips(self) -> dict[str, str]:
        return {w["name"]: w["ip"].split("/")[0] for w in self.status()["workloads"]}
