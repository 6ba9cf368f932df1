"""Network ACLs of the ``linux`` datapath on real kernels (nftables, conntrack zones).

Two nodes in namespaces, networks A (198.51.100.0/24) and B (203.0.113.0/24) on both, routes
leaked between them, a policy allowing TCP/5432 from A to B only (``>``).  Every namespace is
created by the test (``tga-`` + a random suffix) and removed in a ``finally``; the TCP servers
are processes the test starts and kills.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.integration.netnskit import UL, add_two_nodes, sh, teardown
from tungsten.agent.state import ifname_for
from tungsten.datapath.base import DatapathState, LocalPort, NextHop, Vrf

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

linux = pytest.importorskip("tungsten.datapath.linux")
plumb = pytest.importorskip("tungsten.datapath.linux.plumb")
pytest.importorskip("tungsten.datapath.linux.nftlib")

NETS = {  # vni -> (fq name, gateway)
    4201: ("default-domain:p:A", "198.51.100.254"),
    4202: ("default-domain:p:B", "203.0.113.254"),
}
MTU = 1500 - 50

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"ok"); c.close()
"""
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    c.settimeout(2)
    print(c.recv(2).decode())
except OSError as e:
    print("fail", e)
"""


def ping(ns: str, dst: str) -> bool:
    r = sh("ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1",
           dst, check=False)
    return r.returncode == 0


def connects(ns: str, dst: str, port: int) -> bool:
    r = sh("ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, dst, str(port))
    return r.stdout.strip() == "ok"


def acl_rule(src: str, dst: str, proto: str = "any", dport: int = -1, action: str = "pass"
             ) -> dict[str, Any]:
    def addr(a: str) -> dict[str, Any]:
        return {"virtual_network": a}
    any_port = {"start_port": -1, "end_port": -1}
    return {
        "match_condition": {"protocol": proto, "src_address": addr(src), "src_port": any_port,
                            "dst_address": addr(dst),
                            "dst_port": {"start_port": dport, "end_port": dport},
                            "ethertype": "IPv4"},
        "action_list": {"simple_action": action},
        "rule_uuid": str(uuid.uuid4()),
        "direction": ">",
    }


def policy_acl(me: str) -> tuple[dict[str, Any], ...]:
    """What the transformer emits for a network with 'pass tcp A > B 5432' attached."""
    a, b = NETS[4201][0], NETS[4202][0]
    return (acl_rule(me, me), acl_rule(a, b, "6", 5432), acl_rule("any", "any", action="deny"))


@dataclass
class Port:
    uuid: str
    node: str
    vni: int
    ip: str
    mac: str
    ns: str

    @property
    def local(self) -> LocalPort:
        return LocalPort(uuid=self.uuid, network=f"net-{self.vni}", vni=self.vni, mac=self.mac,
                         ips=(self.ip,), ifname=ifname_for(self.uuid), mtu=MTU)


@dataclass
class Lab:
    tag: str
    nodes: dict[str, str] = field(default_factory=dict)
    ports: dict[str, Port] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def state(self, node: str, with_acl: bool = True) -> DatapathState:
        """Both networks on ``node``, every port's route in both VRFs (leaked)."""
        ports = {p.uuid: p.local for p in self.ports.values() if p.node == node}
        vrfs: dict[str, Vrf] = {}
        for vni, (name, gw) in NETS.items():
            routes: dict[str, tuple[NextHop, ...]] = {}
            for p in self.ports.values():
                if p.node == node:
                    nh = NextHop(kind="local", port=p.uuid, mac=p.mac, node=node)
                else:
                    nh = NextHop(kind="remote", vtep=UL[p.node], vni=p.vni, mac=p.mac,
                                 node=p.node)
                routes[f"{p.ip}/32"] = (nh,)
            vrfs[f"net-{vni}"] = Vrf(network=f"net-{vni}", name=name, vni=vni, routes=routes,
                                     gateways=(gw,), acl=policy_acl(name) if with_acl else ())
        return DatapathState(node=node, underlay_ip=UL[node], ports=ports, vrfs=vrfs)

    def serve(self, name: str, port: int) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", self.ports[name].ns, sys.executable, "-c",
                              SERVER, str(port)], stdout=subprocess.PIPE, text=True)
        self.servers.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(tag="tga-" + secrets.token_hex(3))
    try:
        add_two_nodes(lab.tag, lab.nodes, lab.namespaces)
        m = secrets.token_hex(2)
        specs = [("a1", "n1", 4201, "198.51.100.1"), ("a2", "n2", 4201, "198.51.100.2"),
                 ("b1", "n1", 4202, "203.0.113.1"), ("b2", "n2", 4202, "203.0.113.2")]
        for i, (name, node, vni, ip) in enumerate(specs):
            ns = f"{lab.tag}-{name}"
            sh("ip", "netns", "add", ns)
            lab.namespaces.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            p = Port(uuid=str(uuid.uuid4()), node=node, vni=vni, ip=ip,
                     mac=f"02:00:{m[:2]}:{m[2:]}:01:{i + 1:02x}", ns=ns)
            plumb.plug(lab.nodes[node], ns, p.local.ifname, p.mac, p.local.ips,
                       NETS[vni][1], MTU)
            lab.ports[name] = p
        yield lab
    finally:
        teardown(lab.servers, lab.namespaces)


def datapath(lab: Lab, node: str) -> linux.LinuxDatapath:
    return linux.LinuxDatapath(lab.nodes[node], "ul0", UL[node], prefix="tga")


def tables(ns: str) -> set[tuple[str, str]]:
    """(family, name) of every nftables table in ``ns``, through the JSON API."""
    from tungsten.datapath.linux.netlink import in_netns
    from tungsten.datapath.linux.nftlib import Nftables

    with in_netns(ns):
        rc, out, err = Nftables().json_cmd({"nftables": [{"list": {"tables": None}}]})
    assert rc == 0, err
    return {(t["table"]["family"], t["table"]["name"]) for t in out["nftables"]
            if "table" in t}


def test_policy_is_enforced_statefully(lab: Lab) -> None:
    a1, a2, b1, b2 = (lab.ports[k] for k in ("a1", "a2", "b1", "b2"))
    for n in ("n1", "n2"):  # a table of someone else's, which must survive everything
        sh("ip", "netns", "exec", lab.nodes[n], "nft", "add", "table", "inet", "other")
    for name in ("a1", "b1", "b2"):
        lab.serve(name, 5432)
    lab.serve("b2", 5433)
    dps = {n: datapath(lab, n) for n in lab.nodes}
    try:
        for n, dp in dps.items():
            dp.apply(lab.state(n))
            assert dp.last_nft, "the first apply installs the table"

        # the allowed port passes, across nodes and on one node
        assert connects(a1.ns, b2.ip, 5432)
        assert connects(a1.ns, b1.ip, 5432)
        # other ports and ICMP drop
        assert not connects(a1.ns, b2.ip, 5433)
        assert not ping(a1.ns, b2.ip)
        assert not ping(a1.ns, b1.ip)
        # a '>' rule admits the replies only: B cannot open a connection to A
        assert not connects(b2.ns, a1.ip, 5432)
        assert not connects(b1.ns, a1.ip, 5432)
        # inside a network everything passes (the implicit allow-self rule)
        assert ping(a1.ns, a2.ip)
        assert ping(b2.ns, b1.ip)

        # idempotent: a second apply changes nothing, in netlink or nftables
        for n, dp in dps.items():
            dp.apply(lab.state(n))
            assert dp.last_changes == [], dp.last_changes
            assert dp.last_nft == [], dp.last_nft

        # a restarted datapath adopts the table as it is
        dps["n1"].close()
        dps["n1"] = datapath(lab, "n1")
        dps["n1"].apply(lab.state("n1"))
        assert dps["n1"].last_nft == []

        # empty ACLs: everything passes
        for n, dp in dps.items():
            dp.apply(lab.state(n, with_acl=False))
            assert dp.last_nft
        assert ping(a1.ns, b2.ip)
        assert connects(a1.ns, b2.ip, 5433)
        assert connects(b2.ns, a1.ip, 5432)
        assert connects(b1.ns, a1.ip, 5432)
        for n, dp in dps.items():
            dp.apply(lab.state(n, with_acl=False))
            assert dp.last_nft == []

        # and back: the policy applies again
        for n, dp in dps.items():
            dp.apply(lab.state(n))
        assert not connects(b2.ns, a1.ip, 5432)
        assert connects(a1.ns, b2.ip, 5432)

        # nothing on the node: our table goes, the other one stays
        for n, dp in dps.items():
            dp.apply(DatapathState(node=n, underlay_ip=UL[n]))
            assert tables(lab.nodes[n]) == {("inet", "other")}
    finally:
        for dp in dps.values():
            dp.close()


def test_conntrack_zones_per_network(lab: Lab) -> None:
    """A network's devices put packets in its zone (the VNI); traffic between two networks
    takes the lower of their zones, in both directions, on both nodes."""
    dps = {n: datapath(lab, n) for n in lab.nodes}
    try:
        for n, dp in dps.items():
            dp.apply(lab.state(n, with_acl=False))
        plan = dps["n1"].acl_plan(lab.state("n1"))
        assert plan is not None and dict(plan.zones) == {4201: 4201, 4202: 4202}
        a1, b1, b2 = lab.ports["a1"], lab.ports["b1"], lab.ports["b2"]
        assert ping(a1.ns, b2.ip)
        assert ping(b1.ns, b2.ip)
        for n in ("n1", "n2"):
            r = sh("ip", "netns", "exec", lab.nodes[n], "cat", "/proc/net/nf_conntrack",
                   check=False)
            if r.returncode != 0:
                pytest.skip("no /proc/net/nf_conntrack to inspect")
            cross = [ln for ln in r.stdout.splitlines() if f"src={a1.ip} dst={b2.ip}" in ln]
            inner = [ln for ln in r.stdout.splitlines() if f"src={b1.ip} dst={b2.ip}" in ln]
            assert len(cross) == 1 and "zone=4201" in cross[0], (n, r.stdout)
            assert len(inner) == 1 and "zone=4202" in inner[0], (n, r.stdout)
    finally:
        for dp in dps.values():
            dp.close()
