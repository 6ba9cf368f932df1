"""Measuring a lab's reachability matrix with real traffic.

A listener per workload (TCP 5432 and 80, answering each connection with its workload name, so
an overlapping twin address can never be mistaken for the right workload) and, per ordered pair,
a ping and a TCP connect per port, run with ``ip netns exec`` in the source's namespace.  Every
probe has a bounded timeout; a probe expected to pass is retried a few times (routes may still
be converging right after ``lab up``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tungsten.demo.matrix import PROBES, expect
from tungsten.lab.state import LabState
from tungsten.lab.topology import Topology

LISTENER = """\
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in sys.argv[3:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(64)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        c, _ = key.fileobj.accept()
        with c:
            c.sendall(sys.argv[2].encode())
"""

CLIENT = """\
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
        s.settimeout(2)
        print(s.recv(64).decode())
except OSError:
    sys.exit(1)
"""


@dataclass
class Cell:
    src: str
    dst: str
    dst_ip: str
    probe: str
    expected: bool  # the destination workload itself answers
    expected_by: str | None
    reason: str
    answered: bool
    answered_by: str | None  # TCP: the name the listener sent; ping cannot tell (None)
    reached: bool
    agrees: bool


def start_listeners(state: LabState) -> list[subprocess.Popen[str]]:
    procs: list[subprocess.Popen[str]] = []
    tag = str(Path(state.labdir) / "demo-listener")  # `lab down` stops it by its cmdline
    try:
        for w in state.workloads:
            p = subprocess.Popen(["ip", "netns", "exec", w["netns"], sys.executable, "-c",
                                  LISTENER, tag, w["name"], "5432", "80"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                p.kill()
                _, err = p.communicate(timeout=10)
                raise RuntimeError(f"listener in {w['name']} did not start: {err.strip()}")
    except BaseException:
        stop_listeners(procs)
        raise
    return procs


def stop_listeners(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.communicate(timeout=10)


def _probe(netns: str, ip: str, protocol: str, port: int | None) -> tuple[bool, str | None]:
    if protocol == "icmp":
        cmd = ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", ip]
    else:
        cmd = [sys.executable, "-c", CLIENT, ip, str(port)]
    r = subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True,
                       timeout=30, check=False)
    if r.returncode != 0:
        return False, None
    return True, (r.stdout.strip() or None) if protocol == "tcp" else None


def measure(topo: Topology, state: LabState, attempts: int = 4) -> list[Cell]:
    ips = {w["name"]: str(w["ip"]).split("/")[0] for w in state.workloads}
    ns = {w["name"]: str(w["netns"]) for w in state.workloads}
    jobs = [(s, d, name, proto, port) for s in ips for d in ips if s != d
            for name, proto, port in PROBES]

    def one(job: tuple[str, str, str, str, int | None]) -> Cell:
        src, dst, name, proto, port = job
        e = expect(topo, ips, src, dst, proto, port)
        for i in range(attempts if e.answers else 1):
            answered, by = _probe(ns[src], ips[dst], proto, port)
            if answered or i == attempts - 1:
                break
            time.sleep(0.5)
        reached = answered and (by == dst if by is not None else e.by == dst)
        agrees = answered == e.answers and (by is None or by == e.by)
        return Cell(src, dst, ips[dst], name, e.by == dst, e.by, e.reason, answered, by,
                    reached, agrees)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, jobs))


def as_json(cells: list[Cell]) -> list[dict[str, Any]]:
    return [asdict(c) for c in cells]


def table(cells: list[Cell]) -> str:
    names = [p[0] for p in PROBES]
    rows: dict[tuple[str, str], dict[str, Cell]] = {}
    for c in cells:
        rows.setdefault((c.src, c.dst), {})[c.probe] = c
    head = f"{'from':<8}{'to':<8}{'address':<17}" + "".join(f"{n:<10}" for n in names) + "why"
    out = [head, "-" * len(head)]
    for (src, dst), by in rows.items():
        marks = []
        for n in names:
            c = by[n]
            m = "yes" if c.reached else (f"->{c.answered_by or c.expected_by}" if c.answered
                                         else "no")
            marks.append(f"{m + ('' if c.agrees else ' !!'):<10}")
        reasons: dict[str, list[str]] = {}
        for n in names:
            reasons.setdefault(by[n].reason, []).append(n)
        why = by[names[0]].reason if len(reasons) == 1 else "; ".join(
            f"{', '.join(ns)}: {r}" for r, ns in reasons.items())
        out.append(f"{src:<8}{dst:<8}{by[names[0]].dst_ip:<17}" + "".join(marks) + why)
    return "\n".join(out)
