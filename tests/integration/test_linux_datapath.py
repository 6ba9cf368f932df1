"""The ``linux`` datapath on real kernels: two nodes in namespaces, VXLAN between them.

Every namespace here is created by the test (``tgt-`` + a random suffix) and removed in a
``finally``, failures included.  Addresses are documentation ranges only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration.netnskit import UL, add_two_nodes, sh
from tungsten.agent.state import ifname_for
from tungsten.datapath.base import DatapathState, LocalPort, NextHop, Vrf

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

linux = pytest.importorskip("tungsten.datapath.linux")
plumb = pytest.importorskip("tungsten.datapath.linux.plumb")

VNI_A, VNI_B = 4101, 4102
GW = "198.51.100.254"
MTU = 1500 - 50


def ping(ns: str, dst: str) -> bool:
    """True when at least one of three echo requests is answered."""
    r = sh("ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1",
           dst, check=False)
    return r.returncode == 0


@contextlib.contextmanager
def deaf_to_pings(ns: str) -> Iterator[None]:
    """The namespace ignores echo requests for the time of the block."""
    def echo_ignore(ignore: bool) -> None:
        sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
           f"net.ipv4.icmp_echo_ignore_all={int(ignore)}")

    echo_ignore(True)
    try:
        yield
    finally:
        echo_ignore(False)


@dataclass
class Port:
    uuid: str
    node: str
    vni: int
    ip: str
    mac: str
    ns: str  # the workload namespace
    extra_ips: tuple[str, ...] = ()

    @property
    def local(self) -> LocalPort:
        return LocalPort(uuid=self.uuid, network=f"net-{self.vni}", vni=self.vni, mac=self.mac,
                         ips=(self.ip, *self.extra_ips), ifname=ifname_for(self.uuid), mtu=MTU)


@dataclass
class Lab:
    tag: str
    nodes: dict[str, str] = field(default_factory=dict)  # n1/n2 -> netns
    ports: dict[str, Port] = field(default_factory=dict)  # workload name -> port
    namespaces: list[str] = field(default_factory=list)

    def state(self, node: str, drop_remote: frozenset[str] = frozenset()) -> DatapathState:
        """This node's state: its local ports, and a route to every other port."""
        ports = {p.uuid: p.local for p in self.ports.values() if p.node == node}
        vrfs: dict[str, Vrf] = {}
        for vni in sorted({p.vni for p in self.ports.values() if p.node == node}):
            routes: dict[str, tuple[NextHop, ...]] = {}
            for name, p in self.ports.items():
                if p.vni != vni:
                    continue
                for ip in (p.ip, *p.extra_ips):
                    if p.node == node:
                        nh = NextHop(kind="local", port=p.uuid, mac=p.mac, node=node)
                    elif name in drop_remote:
                        continue
                    else:
                        nh = NextHop(kind="remote", vtep=UL[p.node], vni=vni, mac=p.mac,
                                     node=p.node)
                    routes[f"{ip}/32"] = (nh,)
            vrfs[f"net-{vni}"] = Vrf(network=f"net-{vni}", name=f"default:p:net-{vni}",
                                     vni=vni, routes=routes, gateways=(GW,))
        return DatapathState(node=node, underlay_ip=UL[node], ports=ports, vrfs=vrfs)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(tag="tgt-" + secrets.token_hex(3))
    try:
        add_two_nodes(lab.tag, lab.nodes, lab.namespaces)
        m = secrets.token_hex(2)
        specs = [  # name, node, vni, ip, extra ips
            ("a1", "n1", VNI_A, "198.51.100.1", ()),
            ("a2", "n2", VNI_A, "198.51.100.2", ()),
            ("b1", "n1", VNI_B, "198.51.100.1", ()),  # twins of a1/a2 in network B
            ("b2", "n2", VNI_B, "198.51.100.2", ("198.51.100.3",)),
        ]
        for i, (name, node, vni, ip, extra) in enumerate(specs):
            ns = f"{lab.tag}-{name}"
            sh("ip", "netns", "add", ns)
            lab.namespaces.append(ns)
            p = Port(uuid=str(uuid.uuid4()), node=node, vni=vni, ip=ip,
                     mac=f"02:00:{m[:2]}:{m[2:]}:00:{i + 1:02x}", ns=ns, extra_ips=extra)
            plumb.plug(lab.nodes[node], ns, p.local.ifname, p.mac, p.local.ips, GW, MTU)
            lab.ports[name] = p
        yield lab
    finally:
        for ns in reversed(lab.namespaces):
            sh("ip", "netns", "del", ns, check=False)


def datapath(lab: Lab, node: str) -> linux.LinuxDatapath:
    return linux.LinuxDatapath(lab.nodes[node], "ul0", UL[node], prefix="tgt")


def test_two_nodes(lab: Lab) -> None:
    dps = {n: datapath(lab, n) for n in lab.nodes}
    try:
        for n, dp in dps.items():
            dp.apply(lab.state(n))
            assert dp.last_changes, "the first apply installs something"
            assert dp.missing_ports == ()
        a1, a2, b1, b2 = (lab.ports[k] for k in ("a1", "a2", "b1", "b2"))

        # cross-node, in each network
        assert ping(a1.ns, a2.ip)
        assert ping(b1.ns, b2.ip)

        # idempotent: a second apply changes nothing
        for n, dp in dps.items():
            dp.apply(lab.state(n))
            assert dp.last_changes == [], dp.last_changes

        # overlapping subnets stay apart: with b2 deaf to pings, a1 -> .2 still gets an
        # answer (a2's) while b1 -> .2 gets none (its packets reach b2, never the twin a2)
        with deaf_to_pings(b2.ns):
            assert ping(a1.ns, a2.ip)
            assert not ping(b1.ns, b2.ip)
        with deaf_to_pings(a2.ns):
            assert ping(b1.ns, b2.ip)
            assert not ping(a1.ns, a2.ip)
        # an address only network B has is unreachable from network A
        assert ping(b1.ns, "198.51.100.3")
        assert not ping(a1.ns, "198.51.100.3")

        # the VXLAN devices: MTU = underlay - 50, learning off, VNI = network
        objs = dps["n1"].installed()
        links = {lk.vni: lk for lk in objs.links.values()}
        assert set(links) == {VNI_A, VNI_B}
        assert all(lk.mtu == MTU and not lk.learning for lk in links.values())

        # withdrawing the remote route stops traffic; restoring it brings it back
        dps["n1"].apply(lab.state("n1", drop_remote=frozenset({"a2"})))
        assert {c.op for c in dps["n1"].last_changes} == {"remove"}
        assert not ping(a1.ns, a2.ip)
        dps["n1"].apply(lab.state("n1"))
        assert ping(a1.ns, a2.ip)

        # restart: a new datapath over the same namespace adopts everything, removes nothing
        before = dps["n1"].installed().counts()
        dps["n1"].close()
        dps["n1"] = datapath(lab, "n1")
        assert dps["n1"].current() is None
        dps["n1"].apply(lab.state("n1"))
        assert dps["n1"].last_changes == []
        assert dps["n1"].installed().counts() == before
        assert ping(a1.ns, a2.ip)
        assert ping(b1.ns, b2.ip)
    finally:
        for dp in dps.values():
            dp.close()


def test_never_touches_foreign_objects(lab: Lab) -> None:
    ns = lab.nodes["n1"]
    sh("ip", "-n", ns, "link", "add", "othervx9", "type", "vxlan", "id", "9", "local",
       UL["n1"], "dstport", "4789", "nolearning")
    sh("ip", "-n", ns, "route", "add", "203.0.113.0/24", "dev", "ul0", "table", "100")
    sh("ip", "-n", ns, "rule", "add", "iif", "ul0", "lookup", "100", "priority", "1000")
    dp = datapath(lab, "n1")
    try:
        dp.apply(lab.state("n1"))
        dp.apply(DatapathState(node="n1", underlay_ip=UL["n1"]))  # everything of ours goes
        assert dp.installed().counts()["links"] == 0
        assert dp.installed().counts()["routes"] == 0, dp.installed().routes
        assert dp.installed().counts()["rules"] == 0
        assert "othervx9" in sh("ip", "-n", ns, "-o", "link", "show", "othervx9").stdout
        assert "203.0.113.0/24" in sh("ip", "-n", ns, "route", "show", "table", "100").stdout
        assert "lookup 100" in sh("ip", "-n", ns, "rule", "show").stdout
    finally:
        dp.close()


def test_incremental_apply_follows_devices(lab: Lab) -> None:
    """Between full passes ``apply`` diffs against what it applied before, and learns of
    devices from link events: a container's veth re-created under its name (a retried ADD)
    or our VXLAN device deleted behind our back get back what the kernel dropped with them;
    a full pass afterwards finds nothing to repair."""
    dps = {n: datapath(lab, n) for n in lab.nodes}
    try:
        for n, dp in dps.items():
            dp.apply(lab.state(n))
            assert dp.last_full, "the first apply dumps the kernel"
        n1, ns1 = dps["n1"], lab.nodes["n1"]
        a1, a2 = lab.ports["a1"], lab.ports["a2"]
        assert ping(a1.ns, a2.ip)
        n1.apply(lab.state("n1"))
        assert not n1.last_full and n1.last_changes == []

        plumb.unplug(ns1, a1.local.ifname)
        plumb.plug(ns1, a1.ns, a1.local.ifname, a1.mac, a1.local.ips, GW, MTU)
        n1.apply(lab.state("n1"))
        assert not n1.last_full
        assert {c.op for c in n1.last_changes} == {"add"}, n1.last_changes
        assert f"{a1.ip}/32" in {r.dst for r in n1.installed().routes.values()}
        assert ping(a1.ns, a2.ip)

        sh("ip", "-n", ns1, "link", "del", n1.owner.vxlan_name(VNI_A))
        n1.apply(lab.state("n1"))
        assert not n1.last_full
        assert n1.owner.vxlan_name(VNI_A) in n1.installed().links
        assert ping(a1.ns, a2.ip)

        n1.resync = 0  # every apply a full pass from now on
        n1.apply(lab.state("n1"))
        assert n1.last_full and n1.last_changes == [], n1.last_changes
    finally:
        for dp in dps.values():
            dp.close()


def test_ecmp_multipath_round_trips(lab: Lab) -> None:
    base = lab.state("n1")
    vrf = base.vrfs[f"net-{VNI_A}"]
    hops = tuple(NextHop(kind="remote", vtep=v, vni=VNI_A, mac="02:00:00:00:00:99", node="x")
                 for v in ("192.0.2.2", "192.0.2.3"))
    routes = {**vrf.routes, "203.0.113.0/24": hops}
    st = DatapathState(node="n1", underlay_ip=UL["n1"], ports=base.ports,
                       vrfs={**base.vrfs, vrf.network: Vrf(vrf.network, vrf.name, vrf.vni,
                                                           routes, vrf.gateways)})
    dp = datapath(lab, "n1")
    try:
        dp.apply(st)
        table = dp.owner.table(VNI_A)
        r = dp.installed().routes[(2, table, "203.0.113.0/24")]
        assert [h.gateway for h in r.hops] == ["192.0.2.2", "192.0.2.3"]
        dp.apply(st)
        assert dp.last_changes == []
        assert ping(lab.ports["a1"].ns, lab.ports["a2"].ip) is False  # n2 has no state yet
    finally:
        dp.close()
