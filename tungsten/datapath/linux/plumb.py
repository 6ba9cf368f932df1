"""Wire a workload namespace to a node: the veth pair behind a ``LocalPort``.

The datapath never creates port devices; whoever plugs the workload does (the agent's CNI
service, tests).  The workload end gets the port's MAC and MTU, each address as a host
route (/32 or /128) and a default route to the subnet gateway, onlink: the node answers the
gateway with proxy ARP, so the workload needs no subnet route.

Host-device mode (``adopt_device``) moves an existing host netdev into the workload instead
of creating a veth (a VF on real hardware; a veth stands in for it in tests); the device's
veth peer, renamed to the port's interface name, is the node side the datapath programs.

Namespaces are given as names (``/run/netns/<name>``) or paths (a CNI ``CNI_NETNS``).
Netlink sockets are opened with the calling thread switched into the namespace (``setns``
affects that thread only) rather than by pyroute2's ``IPRoute(netns=...)``, which forks a
helper process per socket: a fork of the agent costs tens of milliseconds, and the helper's
signals once reached the agent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator, Sequence
from typing import Any

from pyroute2 import IPRoute

from tungsten.datapath.linux.netlink import in_netns

RTNH_F_ONLINK = 4
NETNS_DIR = "/run/netns"


@contextlib.contextmanager
def _ipr(netns: str | None) -> Iterator[Any]:
    """A netlink socket in ``netns`` (None: the thread's own); the body runs with the thread
    in that namespace, so pyroute2 cannot create the socket (lazily) anywhere else."""
    with in_netns(netns_path(netns) if netns else None):
        ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()


def netns_path(netns: str) -> str:
    return netns if "/" in netns else f"{NETNS_DIR}/{netns}"


@contextlib.contextmanager
def _ns_fd(netns: str | None) -> Iterator[int]:
    """An fd of the namespace (None: this process's), for moving a link into it."""
    fd = os.open(netns_path(netns) if netns else "/proc/self/ns/net", os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def _lookup(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def has_link(netns: str | None, name: str) -> bool:
    with _ipr(netns) as ipr:
        return _lookup(ipr, name) is not None


Routes = Sequence[tuple[str, str]]  # (destination prefix, gateway), onlink via the port


def _configure_inner(wl: Any, idx: int, inner_name: str, mac: str, mtu: int,
                     ips: Sequence[str], gateway: str | None,
                     routes: Routes | None = None, named: bool = False) -> None:
    """Name, MAC and MTU (unless ``named``: made so), lo and the link up, addresses, routes."""
    if not named:
        wl.link("set", index=idx, state="down")
        wl.link("set", index=idx, ifname=inner_name, address=mac, mtu=mtu)
    lo = _lookup(wl, "lo")
    if lo is not None:
        wl.link("set", index=lo, state="up")
    wl.link("set", index=idx, state="up")
    for ip in ips:
        a = ipaddress.ip_address(ip)
        wl.addr("add", index=idx, address=str(a), prefixlen=a.max_prefixlen)
    if routes is None:
        routes = [(default_dst(ipaddress.ip_address(gateway).version), gateway)] \
            if gateway else []
    for dst, gw in routes:
        wl.route("add", dst=dst, gateway=str(ipaddress.ip_address(gw)), oif=idx,
                 flags=RTNH_F_ONLINK)


def has_default_route(netns: str, version: int) -> bool:
    """Whether the workload already has a default route (its first interface set it)."""
    with _ipr(netns) as wl:
        return any(r["dst_len"] == 0 for r in wl.get_routes(family=2 if version == 4 else 10,
                                                             table=254))


def default_dst(version: int) -> str:
    return "0.0.0.0/0" if version == 4 else "::/0"


def plug(node_netns: str | None, workload_netns: str, ifname: str, mac: str,
         ips: Sequence[str], gateway: str | None, mtu: int, inner_name: str = "eth0",
         routes: Routes | None = None) -> str:
    """Create veth ``ifname`` (node side, up, no address) and its peer ``inner_name`` inside
    ``workload_netns`` with ``mac``, ``mtu``, ``ips`` and a default route via ``gateway``
    (or ``routes``, when given).  Returns the node side's MAC."""
    host_mac = make_veth(node_netns, workload_netns, ifname, mac, mtu, inner_name)
    configure(workload_netns, inner_name, ips, gateway, routes)
    return host_mac


def make_veth(node_netns: str | None, workload_netns: str, ifname: str, mac: str, mtu: int,
              inner_name: str = "eth0") -> str:
    """The first half of ``plug``: veth ``ifname`` (node side, up) and its peer
    ``inner_name`` in ``workload_netns`` with its final name, MAC and MTU, down and without
    addresses (``configure`` does the rest).  Returns the node side's MAC.

    The peer is created in the workload's namespace under its final name, MAC and MTU (one
    request; nothing to move or rename)."""
    tmp = "w" + ifname[1:]
    with _ipr(node_netns) as node:
        for name in (tmp, ifname):  # left by a plug that died half-way (both are ours:
            stale = _lookup(node, name)  # named from the port's uuid; ``tmp``: older plugs)
            if stale is not None:
                node.link("del", index=stale)
        with _ns_fd(workload_netns) as fd:
            # created up, in one request: the agent may program routes through the device
            # as soon as it appears (a route via a device that is down fails with ENETDOWN)
            node.link("add", ifname=ifname, kind="veth", mtu=mtu, state="up",
                      peer={"ifname": inner_name, "net_ns_fd": fd, "address": mac,
                            "mtu": mtu})
        return str(node.link("get", ifname=ifname)[0].get("address"))


def configure(workload_netns: str, inner_name: str, ips: Sequence[str],
              gateway: str | None, routes: Routes | None = None) -> None:
    """The second half of ``plug``: ``inner_name`` (and lo) up, its addresses, and a default
    route via ``gateway`` (or ``routes``, when given)."""
    with _ipr(workload_netns) as wl:
        idx = _lookup(wl, inner_name)
        if idx is None:
            raise LookupError(f"{inner_name!r} is not in {workload_netns}")
        _configure_inner(wl, idx, inner_name, "", 0, ips, gateway, routes, named=True)


def unplug(node_netns: str | None, ifname: str) -> None:
    """Delete the veth pair (both ends go); no error if it is already gone."""
    with _ipr(node_netns) as node:
        found = _lookup(node, ifname)
        if found is not None:
            node.link("del", index=found)


def adopt_device(node_netns: str | None, device: str, workload_netns: str, host_name: str,
                 mac: str, ips: Sequence[str], gateway: str | None, mtu: int,
                 inner_name: str = "eth0", routes: Routes | None = None) -> str:
    """Host-device mode: move ``device`` into ``workload_netns`` as ``inner_name`` (with the
    port's MAC, MTU, addresses and default route) and rename its veth peer, the node side,
    to ``host_name``.  Returns the peer's original name (``release_device`` restores it)."""
    with _ipr(node_netns) as node:
        idx = _lookup(node, device)
        if idx is None:
            raise LookupError(f"no interface {device!r} on the node")
        link = node.get_links(idx)[0]
        kind = _kind(link)
        peer_idx = link.get_attr("IFLA_LINK")
        if kind != "veth" or not peer_idx or link.get_attr("IFLA_LINK_NETNSID") is not None:
            raise LookupError(f"interface {device!r} has no representor on the node (host-"
                              "device mode needs a veth stand-in or a VF with its peer)")
        peer = node.get_links(peer_idx)[0]
        peer_name = str(peer.get_attr("IFLA_IFNAME"))
        node.link("set", index=peer_idx, state="down")
        node.link("set", index=peer_idx, ifname=host_name, mtu=mtu)
        node.link("set", index=idx, state="down")
        with _ns_fd(workload_netns) as fd:
            node.link("set", index=idx, net_ns_fd=fd)
        node.link("set", index=peer_idx, state="up")
    with _ipr(workload_netns) as wl:
        inner = _lookup(wl, device)
        if inner is None:
            raise LookupError(f"{device!r} did not arrive in {workload_netns}")
        _configure_inner(wl, inner, inner_name, mac, mtu, ips, gateway, routes)
    return peer_name


def release_device(node_netns: str | None, workload_netns: str, inner_name: str,
                   device: str, host_name: str, peer_name: str) -> None:
    """Undo ``adopt_device`` as far as things still exist: the device back on the node
    under its name, without addresses; the representor under its own name again."""
    if workload_netns and os.path.exists(netns_path(workload_netns)):
        with _ipr(workload_netns) as wl:
            idx = _lookup(wl, inner_name)
            if idx is not None:
                wl.flush_addr(index=idx)
                wl.link("set", index=idx, state="down")
                wl.link("set", index=idx, ifname=device)
                with _ns_fd(node_netns) as fd:
                    wl.link("set", index=idx, net_ns_fd=fd)
    with _ipr(node_netns) as node:
        idx = _lookup(node, host_name)
        if idx is not None and peer_name and _lookup(node, peer_name) is None:
            node.link("set", index=idx, state="down")
            node.link("set", index=idx, ifname=peer_name)
            node.link("set", index=idx, state="up")
        dev = _lookup(node, device)
        if dev is not None:
            node.link("set", index=dev, state="up")


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return str(info.get_attr("IFLA_INFO_KIND")) if info is not None else None


def inspect(netns: str | None, name: str) -> dict[str, Any] | None:
    """What the workload has on interface ``name``: mac, mtu, state, addresses (CIDR) and
    routes through it (dst, gateway); None when it has no such interface."""
    with _ipr(netns) as wl:
        idx = _lookup(wl, name)
        if idx is None:
            return None
        link = wl.get_links(idx)[0]
        addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                 for a in wl.get_addr(index=idx)]
        routes = []
        for fam in (2, 10):
            for r in wl.get_routes(family=fam, oif=idx, table=254):
                dst = r.get_attr("RTA_DST")
                routes.append((f"{dst}/{r['dst_len']}" if dst else default_dst(
                    4 if fam == 2 else 6), r.get_attr("RTA_GATEWAY")))
        return {"mac": str(link.get_attr("IFLA_ADDRESS")), "mtu": int(link.get_attr("IFLA_MTU")),
                "up": bool(link["flags"] & 1), "addresses": addrs, "routes": routes}
