"""Wire a workload namespace to a node: the veth pair behind a ``LocalPort``.

The datapath never creates port devices; whoever plugs the workload does (these helpers for
tests, later the lab and the CNI plugin).  The workload end gets the port's MAC and MTU, each
address as a host route (/32 or /128) and a default route to the subnet gateway, onlink: the
node answers the gateway with proxy ARP, so the workload needs no subnet route.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from pyroute2 import IPRoute

RTNH_F_ONLINK = 4


def _ipr(netns: str | None) -> Any:
    return IPRoute(netns=netns) if netns else IPRoute()


def plug(node_netns: str | None, workload_netns: str, ifname: str, mac: str,
         ips: Sequence[str], gateway: str | None, mtu: int, inner_name: str = "eth0") -> None:
    """Create veth ``ifname`` (node side, up, no address) and its peer ``inner_name`` inside
    ``workload_netns`` with ``mac``, ``mtu``, ``ips`` and a default route via ``gateway``."""
    tmp = "w" + ifname[1:]
    node = _ipr(node_netns)
    try:
        node.link("add", ifname=ifname, kind="veth", peer=tmp)
        host = node.link_lookup(ifname=ifname)[0]
        peer = node.link_lookup(ifname=tmp)[0]
        node.link("set", index=host, mtu=mtu)
        node.link("set", index=peer, net_ns_fd=workload_netns)
        node.link("set", index=host, state="up")
    finally:
        node.close()
    wl = _ipr(workload_netns)
    try:
        idx = wl.link_lookup(ifname=tmp)[0]
        wl.link("set", index=idx, ifname=inner_name, address=mac, mtu=mtu)
        lo = wl.link_lookup(ifname="lo")[0]
        wl.link("set", index=lo, state="up")
        wl.link("set", index=idx, state="up")
        for ip in ips:
            a = ipaddress.ip_address(ip)
            wl.addr("add", index=idx, address=str(a), prefixlen=a.max_prefixlen)
        if gateway:
            g = ipaddress.ip_address(gateway)
            wl.route("add", dst="0.0.0.0/0" if g.version == 4 else "::/0", gateway=str(g),
                     oif=idx, flags=RTNH_F_ONLINK)
    finally:
        wl.close()


def unplug(node_netns: str | None, ifname: str) -> None:
    """Delete the veth pair (both ends go); no error if it is already gone."""
    node = _ipr(node_netns)
    try:
        found = node.link_lookup(ifname=ifname)
        if found:
            node.link("del", index=found[0])
    finally:
        node.close()
