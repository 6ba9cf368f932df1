"""What the lab tests share: driving `tungsten lab` in a private state directory (a lab per
test, up and removed again by ``lab_session``), traffic between its workloads, and finding
what a lab left behind (namespaces, processes).  Bounded waits are in ``tests/waits.py``."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from tungsten.demo.run import LISTENER
from tungsten.lab.state import LabState, Proc

NEEDS_ROOT = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

# Two networks, one per node, joined by one policy rule ``tcp red > blue`` on ``{port}``.
# red only on compute1, blue only on compute2: the leaked route goes out through a send-only
# VXLAN device of the other network, and the ACL names a network with no port on the node.
RED_BLUE_POLICY = """\
name: {name}
nodes: [compute1, compute2]
projects: [acme]
networks:
  - {{name: red,  project: acme, subnet: 198.51.100.0/24}}
  - {{name: blue, project: acme, subnet: 203.0.113.0/24}}
workloads:
  - {{name: web1, node: compute1, network: red}}
  - {{name: db1,  node: compute2, network: blue}}
policies:
  - name: red-to-blue
    project: acme
    networks: [red, blue]
    rules:
      - {{action: pass, protocol: tcp, src: red, dst: blue, dst_ports: "{port}", direction: ">"}}
"""

# One connection: exits 0 if the server (``LISTENER`` answering "hi") answers "hi".
CLIENT = """\
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.settimeout(3)
        sys.exit(0 if s.recv(2) == b"hi" else 1)
except OSError:
    sys.exit(1)
"""


def stop(p: subprocess.Popen[str]) -> None:
    """Kill ``p`` (if it still runs) and reap it."""
    if p.poll() is None:
        p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.communicate(timeout=30)


def started(p: subprocess.Popen[str], word: str, failed: str) -> subprocess.Popen[str]:
    """``p`` once its first line of output is ``word`` (bounded: it prints or dies); else
    it is killed and the test fails with ``failed``."""
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != word:
        p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            _, err = p.communicate(timeout=30)
            line += err
        raise AssertionError(f"{failed}: {line!r}")
    return p


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

    def popen(self, workload: str, *cmd: str) -> subprocess.Popen[str]:
        """``cmd`` in the workload's namespace, output piped (`lab exec` execs `ip netns
        exec`, which execs cmd: the pid is cmd's)."""
        return subprocess.Popen(self.cmd("exec", "--lab", self.name, workload, "--", *cmd),
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def server(self, workload: str, *ports: int) -> subprocess.Popen[str]:
        """A server in the workload answering "hi" on each connection to ``ports``, once it
        listens; named after the lab directory, so that `lab down` stops it as well."""
        p = self.popen(workload, sys.executable, "-c", LISTENER, str(self.labdir / "server"),
                       "hi", *map(str, ports))
        return started(p, "ready", f"server in {workload} did not start")

    def tcp(self, src: str, dst_ip: str, port: int) -> bool:
        """A connection from ``src`` to a ``server`` at ``dst_ip:port`` is answered."""
        return self.exec(src, sys.executable, "-c", CLIENT, dst_ip, str(port)).returncode == 0

    @contextlib.contextmanager
    def serving(self, ports: Mapping[str, Sequence[int]]) -> Iterator[None]:
        """A ``server`` in each workload on its ports for the time of the block."""
        servers: list[subprocess.Popen[str]] = []
        try:
            for workload, its_ports in ports.items():
                servers.append(self.server(workload, *its_ports))
            yield
        finally:
            for p in servers:
                stop(p)
            for proc in psutil.process_iter(["cmdline"]):  # `ip netns exec` execs it; in case
                if str(self.labdir / "server") in (proc.info.get("cmdline") or []):
                    with contextlib.suppress(psutil.Error):
                        proc.kill()

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

    def remove(self) -> list[str]:
        """Take the lab down (if it is up) and remove whatever is left of it, failures
        included; what `lab down` left behind."""
        # the test's own processes first (e.g. an iperf3): a namespace `lab down` deletes
        # would hide them; the lab's own processes are for `lab down` to stop
        kill_in_namespaces(self.name, spare={p.pid for p in our_processes(self.labdir)})
        left: list[str] = []
        if self.labdir.exists():
            r = self.run("down", self.name)
            if r.returncode != 0:
                left.append(f"lab down: {r.stderr.strip()}")
        procs = our_processes(self.labdir)
        left += [f"process {p.pid}" for p in procs] + our_namespaces(self.name)
        for p in procs:  # safety net: nothing of ours may outlive us
            with contextlib.suppress(psutil.Error):
                p.kill()
        for ns in our_namespaces(self.name):
            subprocess.run(["ip", "netns", "del", ns], check=False)
        return left


def kill_in_namespaces(name: str, spare: set[int]) -> None:
    """Kill whatever runs in the lab's namespaces but the processes ``spare``."""
    for ns in our_namespaces(name):
        r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                           check=False)
        for pid in r.stdout.split():
            with contextlib.suppress(psutil.Error, ValueError):
                if int(pid) not in spare:
                    psutil.Process(int(pid)).kill()


def assert_nothing_left(lab: Lab) -> None:
    """The lab is gone: no namespace, process or state directory of it."""
    assert our_namespaces(lab.name) == []
    assert our_processes(lab.labdir) == []
    assert not lab.labdir.exists()


L = TypeVar("L", bound=Lab)


@contextlib.contextmanager
def lab_session(tmp_path: Path, topology: str, prefix: str, cls: type[L], *, up: bool = False,
                **fields: object) -> Iterator[L]:
    """A lab named ``<prefix><random>`` from ``topology`` (formatted with its name and
    ``fields``), up if ``up``; afterwards taken down and removed, and, unless the block
    raised, checked that `lab down` left nothing behind."""
    name = prefix + secrets.token_hex(3)
    file = tmp_path / "lab.yaml"
    file.write_text(topology.format(name=name, **fields))
    lab = cls(name, tmp_path / "state", file)
    try:
        if up:
            r = lab.run("up", str(file))
            assert r.returncode == 0, r.stderr
        yield lab
    except BaseException:
        lab.remove()
        raise
    left = lab.remove()
    assert left == [], f"lab down left {left}"
