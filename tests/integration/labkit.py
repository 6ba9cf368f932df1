"""What the lab tests share: driving `tungsten lab` in a private state directory and finding
what a lab left behind (namespaces, processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tungsten.lab.state import LabState, Proc


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

    def process(self, role: str) -> psutil.Process:
        """The lab's process with that role (controller | agent:<node>), from lab.json."""
        data = json.loads((self.labdir / "lab.json").read_text())
        for rec in data["processes"]:
            if rec["role"] == role:
                p = psutil.Process(rec["pid"])
                assert abs(p.create_time() - rec["create_time"]) < 1.0, "pid recycled"
                return p
        raise AssertionError(f"no {role} in lab.json: {data['processes']}")

    def kill9(self, role: str) -> list[str]:
        """``kill -9`` the lab's process with that role; its command line, to respawn it."""
        p = self.process(role)
        cmdline: list[str] = p.cmdline()
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        return cmdline

    def respawn(self, role: str, cmdline: list[str]) -> psutil.Process:
        """Start ``cmdline`` again as the lab's ``role`` (same log, recorded in lab.json so
        that `lab down` stops it), as `lab up` started it."""
        log = self.labdir / ("controller.log" if role == "controller"
                             else f"agent-{role.split(':', 1)[1]}.log")
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmdline, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        threading.Thread(target=proc.wait, daemon=True).start()  # reaped whenever it ends
        ps = psutil.Process(proc.pid)
        state = LabState.load(self.labdir)
        assert state is not None
        state.processes = [r for r in state.processes if r.role != role]
        state.processes.append(Proc(role, ps.pid, ps.create_time()))
        state.save()
        return ps

    def restart(self, role: str, down_for: float = 0.0) -> psutil.Process:
        """``kill -9`` the process with that role, wait ``down_for`` seconds, start it again
        with the same command line."""
        cmdline = self.kill9(role)
        time.sleep(down_for)
        return self.respawn(role, cmdline)
