"""The hand-built plain-kernel path the datapath benchmark compares Tungsten with.

The same shape as a two-node lab, built with pyroute2 (netlink; namespaces with ``ip netns``,
as the lab makes them) and no policy, no
nftables and no conntrack: an underlay bridge namespace, two "node" namespaces with a veth
into it (192.0.2.1 and .2, MTU 1500), one VXLAN device per node (VNI 6, learning off, static
FDB and neighbour entries, MTU 1450), and three "workload" namespaces plugged with the
product's own veth helper (``plumb.plug``: /32 address, default route to the gateway onlink,
proxy ARP on the node side).  Nodes route with ``/32`` routes in their main table: a local
workload via its veth, a remote one via the other VTEP onlink through the VXLAN device.

Every namespace is named ``tb-base-<tag>-<what>`` and is removed by ``down()``, which is safe
to call after a partial ``up()``.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute

from tungsten.datapath.linux import plumb
from tungsten.datapath.linux.netlink import in_netns
from tungsten.datapath.linux.plan import router_mac

VNI = 6
MTU = 1500 - 50  # underlay MTU minus the VXLAN overhead over IPv4, as the agent sets it
RTNH_F_ONLINK = 4
NTF_SELF = 0x02
NUD_PERMANENT = 0x80


@dataclass(frozen=True)
class Workload:
    name: str
    node: int  # 1 or 2
    ip: str
    gateway: str
    mac: str


# the lab's pairs: a (red) -> b (blue, same node) and a -> c (blue, the other node)
WORKLOADS = (
    Workload("a", 1, "198.51.100.252", "198.51.100.254", "02:b0:00:00:00:0a"),
    Workload("b", 1, "203.0.113.252", "203.0.113.254", "02:b0:00:00:00:0b"),
    Workload("c", 2, "203.0.113.251", "203.0.113.254", "02:b0:00:00:00:0c"),
)


def _underlay_ip(node: int) -> str:
    return f"192.0.2.{node}"


@dataclass
class Baseline:
    tag: str
    made: list[str] = field(default_factory=list)

    def ns(self, what: str) -> str:
        return f"tb-base-{self.tag}-{what}"

    def workload_ns(self, name: str) -> str:
        return self.ns(name)

    def ip_of(self, name: str) -> str:
        return next(w.ip for w in WORKLOADS if w.name == name)

    def up(self) -> None:
        for what in ("ul", "n1", "n2", *(w.name for w in WORKLOADS)):
            name = self.ns(what)
            self.made.append(name)  # recorded first: down() removes it even if create fails
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
            with _ipr(name) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        self._underlay()
        for node in (1, 2):
            self._node(node)
        for w in WORKLOADS:
            plumb.plug(self.ns(f"n{w.node}"), self.ns(w.name), f"tbv{w.name}", w.mac, [w.ip],
                       w.gateway, MTU)
            _sysctl(self.ns(f"n{w.node}"), f"ipv4/conf/tbv{w.name}/proxy_arp", "1")
            _sysctl(self.ns(f"n{w.node}"), f"ipv4/neigh/tbv{w.name}/proxy_delay", "0")
        for node in (1, 2):
            self._routes(node)

    def _underlay(self) -> None:
        with _ipr(self.ns("ul")) as ul:
            ul.link("add", ifname="br0", kind="bridge")
            br = ul.link_lookup(ifname="br0")[0]
            ul.link("set", index=br, state="up")
            for node in (1, 2):
                ul.link("add", ifname=f"ul{node}", kind="veth", peer="ul0tmp")
                ul.link("set", index=ul.link_lookup(ifname="ul0tmp")[0],
                        net_ns_fd=self.ns(f"n{node}"))
                port = ul.link_lookup(ifname=f"ul{node}")[0]
                ul.link("set", index=port, master=br, state="up")
                with _ipr(self.ns(f"n{node}")) as n:
                    idx = n.link_lookup(ifname="ul0tmp")[0]
                    n.link("set", index=idx, ifname="ul0", mtu=1500)
                    n.addr("add", index=idx, address=_underlay_ip(node), prefixlen=24)
                    n.link("set", index=idx, state="up")

    def _node(self, node: int) -> None:
        name = self.ns(f"n{node}")
        _sysctl(name, "ipv4/ip_forward", "1")
        with _ipr(name) as ipr:
            ipr.link("add", ifname="vx", kind="vxlan", vxlan_id=VNI,
                     vxlan_local=_underlay_ip(node), vxlan_port=4789, vxlan_learning=0,
                     vxlan_link=ipr.link_lookup(ifname="ul0")[0], mtu=MTU,
                     address=router_mac(_underlay_ip(node)))
            vx = ipr.link_lookup(ifname="vx")[0]
            ipr.link("set", index=vx, state="up")
            other = _underlay_ip(3 - node)
            ipr.neigh("replace", ifindex=vx, dst=other, lladdr=router_mac(other),
                      state=NUD_PERMANENT)
            ipr.fdb("replace", ifindex=vx, lladdr=router_mac(other), dst=other,
                    flags=NTF_SELF, state=NUD_PERMANENT)

    def _routes(self, node: int) -> None:
        with _ipr(self.ns(f"n{node}")) as ipr:
            vx = ipr.link_lookup(ifname="vx")[0]
            for gw in sorted({w.gateway for w in WORKLOADS}):
                # the gateway lives "behind" the VXLAN device: proxy ARP on the ports answers it
                ipr.route("replace", dst=f"{gw}/32", oif=vx)
            for w in WORKLOADS:
                if w.node == node:
                    ipr.route("replace", dst=f"{w.ip}/32",
                              oif=ipr.link_lookup(ifname=f"tbv{w.name}")[0])
                else:
                    ipr.route("replace", dst=f"{w.ip}/32", gateway=_underlay_ip(w.node),
                              oif=vx, flags=RTNH_F_ONLINK)

    def down(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        self.made.clear()


@contextlib.contextmanager
def _ipr(name: str) -> Any:
    ipr = IPRoute(netns=name)
    try:
        yield ipr
    finally:
        ipr.close()


def _sysctl(name: str, path: str, value: str) -> None:
    with in_netns(name), open(f"/proc/sys/net/{path}", "w") as f:
        f.write(value)
