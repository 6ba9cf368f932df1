"""A two-node linux-datapath lab for security tests: workloads with SGs and tags, and probes
that open many TCP connections at once.

Networks A (198.51.100.0/24, VNI 4301) and B (203.0.113.0/24, VNI 4302) exist on both
nodes with every port's route in both VRFs (as if a policy leaked them).  Each workload
runs one helper process that listens on ``PORTS`` and, on a line of ``ip:port`` targets,
opens all of them in parallel and answers which connected within the timeout: a dropped SYN
times out, an admitted one connects (replies pass through conntrack).  Namespaces are named
``<tag>-...`` with a random tag and removed by ``close`` (call it in a ``finally``).
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.integration.netnskit import UL, add_two_nodes, sh, teardown
from tungsten.agent.state import ifname_for
from tungsten.datapath.base import DatapathState, EndpointInfo, LocalPort, NextHop, Vrf
from tungsten.security.verdict import Side, evaluate

NETS = {  # vni -> (fq name, gateway, uuid)
    4301: ("default-domain:p:A", "198.51.100.254", "net-a"),
    4302: ("default-domain:p:B", "203.0.113.254", "net-b"),
}
MTU = 1500 - 50
PORTS = (22, 80, 5432, 8080)

PROBER = r"""
import select, socket, sys, threading, time
ports = [int(p) for p in sys.argv[1].split(",")]
timeout = float(sys.argv[2])

def serve(s):
    while True:
        c, _ = s.accept()
        c.close()

for p in ports:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p))
    s.listen(128)
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    targets = line.split()
    socks = {}
    for t in targets:
        ip, port = t.rsplit(":", 1)
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((ip, int(port)))
        socks[s] = t
    ok = set()
    end = time.monotonic() + timeout
    while socks and time.monotonic() < end:
        _, w, _ = select.select([], list(socks), [], max(0.0, end - time.monotonic()))
        for s in w:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                ok.add(socks[s])
            s.close()
            del socks[s]
    for s in socks:
        s.close()
    print(" ".join(("1" if t in ok else "0") for t in targets), flush=True)
"""


@dataclass
class Workload:
    name: str
    node: str
    vni: int
    ip: str
    mac: str
    ns: str
    uuid: str
    sgs: tuple[int, ...] = ()
    tags: tuple[int, ...] = ()
    proc: subprocess.Popen[str] | None = None

    @property
    def network(self) -> str:
        return NETS[self.vni][2]

    def local(self) -> LocalPort:
        return LocalPort(uuid=self.uuid, network=self.network, vni=self.vni, mac=self.mac,
                         ips=(self.ip,), ifname=ifname_for(self.uuid), mtu=MTU,
                         sgs=self.sgs, tags=self.tags)


@dataclass
class Config:
    """The security config every node gets (as the control node would send it)."""

    acl: dict[int, tuple[dict[str, Any], ...]] = field(default_factory=dict)  # vni -> ACL
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    firewall: dict[str, Any] = field(default_factory=dict)


@dataclass
class SecLab:
    tag: str = field(default_factory=lambda: "tgs-" + secrets.token_hex(3))
    nodes: dict[str, str] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    workloads: dict[str, Workload] = field(default_factory=dict)
    dps: dict[str, Any] = field(default_factory=dict)
    timeout: float = 1.0

    def build(self, specs: list[tuple[str, str, int, str]]) -> None:
        """Workloads (name, node, vni, ip) plugged into both nodes, each with its prober."""
        from tungsten.datapath.linux import LinuxDatapath, plumb

        add_two_nodes(self.tag, self.nodes, self.namespaces)
        m = secrets.token_hex(2)
        for i, (name, node, vni, ip) in enumerate(specs):
            ns = f"{self.tag}-{name}"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            w = Workload(name, node, vni, ip, f"02:00:{m[:2]}:{m[2:]}:02:{i + 1:02x}", ns,
                         str(uuid.uuid4()))
            plumb.plug(self.nodes[node], ns, w.local().ifname, w.mac, (ip,), NETS[vni][1],
                       MTU)
            self.workloads[name] = w
            w.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", PROBER,
                 ",".join(map(str, PORTS)), str(self.timeout)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert w.proc.stdout is not None and w.proc.stdout.readline().strip() == "ready"
        for n in self.nodes:
            self.dps[n] = LinuxDatapath(self.nodes[n], "ul0", UL[n], prefix="tgs")

    def close(self) -> None:
        for dp in self.dps.values():
            dp.close()
        teardown([w.proc for w in self.workloads.values() if w.proc is not None],
                 self.namespaces)

    # -- state ------------------------------------------------------------------------------
    def state(self, node: str, cfg: Config) -> DatapathState:
        ports = {w.uuid: w.local() for w in self.workloads.values() if w.node == node}
        vrfs: dict[str, Vrf] = {}
        endpoints = {f"{w.ip}/32": EndpointInfo(NETS[w.vni][0], w.sgs, w.tags)
                     for w in self.workloads.values()}
        for vni, (name, gw, net) in NETS.items():
            routes: dict[str, tuple[NextHop, ...]] = {}
            for w in self.workloads.values():
                if w.node == node:
                    nh = NextHop(kind="local", port=w.uuid, mac=w.mac, node=node)
                else:
                    nh = NextHop(kind="remote", vtep=UL[w.node], vni=w.vni, mac=w.mac,
                                 node=w.node)
                routes[f"{w.ip}/32"] = (nh,)
            vrfs[net] = Vrf(network=net, name=name, vni=vni, routes=routes, gateways=(gw,),
                            acl=cfg.acl.get(vni, ()), endpoints=dict(endpoints))
        return DatapathState(node=node, underlay_ip=UL[node], ports=ports, vrfs=vrfs,
                             security_groups=cfg.groups, firewall=cfg.firewall,
                             network_names={v: n[0] for v, n in NETS.items()})

    def apply(self, cfg: Config) -> None:
        for n, dp in self.dps.items():
            dp.apply(self.state(n, cfg))

    # -- traffic ----------------------------------------------------------------------------
    def probe(self, flows: list[tuple[str, str, int]]) -> list[bool]:
        """Did each TCP connection (source workload, destination workload, port) open?"""
        by_src: dict[str, list[int]] = {}
        for i, (src, _, _) in enumerate(flows):
            by_src.setdefault(src, []).append(i)
        for src, idx in by_src.items():  # every source starts its batch at once
            proc = self.workloads[src].proc
            assert proc is not None and proc.stdin is not None
            proc.stdin.write(" ".join(f"{self.workloads[flows[i][1]].ip}:{flows[i][2]}"
                                      for i in idx) + "\n")
            proc.stdin.flush()
        out: list[bool] = [False] * len(flows)
        for src, idx in by_src.items():
            proc = self.workloads[src].proc
            assert proc is not None and proc.stdout is not None
            got = proc.stdout.readline().split()
            assert len(got) == len(idx), got
            for i, g in zip(idx, got, strict=True):
                out[i] = g == "1"
        return out

    def expected(self, cfg: Config, src: str, dst: str, port: int) -> bool:
        """The verdict of the evaluation core (what ``sim``'s trace says)."""
        s, d = self.workloads[src], self.workloads[dst]
        sst, dst_st = self.state(s.node, cfg), self.state(d.node, cfg)
        v = evaluate(6, ipaddress.ip_address(s.ip), 40000, ipaddress.ip_address(d.ip), port,
                     Side(sst, sst.ports[s.uuid]), Side(dst_st, dst_st.ports[d.uuid]))
        return v.allowed
