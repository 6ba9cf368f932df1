"""The agent's pure core: from the control node's view and the locally plugged ports to the
desired datapath state, and from the installed state to the routes the node originates.

No I/O here: the agent calls these after every (coalesced) change and hands the result to a
``Datapath`` backend or to its control sessions.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from tungsten.control.protocol import Route, View, route_key
from tungsten.datapath.base import DatapathState, EndpointInfo, LocalPort, NextHop, Vrf

# Outer Ethernet + IP + UDP + VXLAN headers added to every overlay packet.
VXLAN_OVERHEAD_V4 = 14 + 20 + 8 + 8
VXLAN_OVERHEAD_V6 = 14 + 40 + 8 + 8


def ifname_for(port_uuid: str) -> str:
    """Host-side interface name of a port: stable, unique enough, within IFNAMSIZ (15)."""
    return "tap" + port_uuid.replace("-", "")[:11]


def port_mtu(underlay_mtu: int, underlay_ip: str) -> int:
    """The largest overlay MTU that never fragments on the underlay."""
    v6 = ipaddress.ip_address(underlay_ip).version == 6
    return underlay_mtu - (VXLAN_OVERHEAD_V6 if v6 else VXLAN_OVERHEAD_V4)


@functools.lru_cache(maxsize=1 << 16)  # every pass asks again for every port and route
def host_prefix(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def merge_views(primary: View | None, others: Iterable[View]) -> View:
    """Config (ports, networks, security groups, firewall) from the primary session; routes
    from all.

    Route keys carry the origin (instance, prefix, next hop, port), so the union of two control
    nodes' routes holds each route once.
    """
    routes: dict[str, Any] = {}
    for v in others:
        routes.update(v.get("routes", {}))
    base = primary or {}
    routes.update(base.get("routes", {}))
    # The config collections are shared, not copied: the merged view is read-only.
    merged: View = {c: base.get(c, {})
                    for c in ("ports", "networks", "security_groups", "firewall")}
    merged["routes"] = routes
    return merged


def _local_ports(view: View, local_ports: Collection[str], mtu: int) -> dict[str, LocalPort]:
    ports_cfg = view.get("ports", {})
    nets = view.get("networks", {})
    out: dict[str, LocalPort] = {}
    for uuid in sorted(local_ports):
        pc = ports_cfg.get(uuid)
        if pc is None or not pc.get("enabled", True):
            continue  # no config yet (or admin down): not plugged, nothing to originate
        net = nets.get(pc["network"])
        if net is None:
            continue
        out[uuid] = LocalPort(
            uuid=uuid, network=pc["network"], vni=int(net["vni"]), mac=pc["mac"],
            ips=tuple(str(ip["address"]) for ip in pc.get("ips", ())),
            ifname=ifname_for(uuid), mtu=mtu,
            sgs=tuple(pc.get("sgs", ())), tags=tuple(pc.get("tags", ())),
        )
    return out


class RouteMemo:
    """An agent's remote routes as next hop and endpoint info, kept while its view holds the
    very same route object: a view replaces a route's entry when the route changes (deltas
    upsert decoded objects, nothing edits one in place), so a pass after a delta that did not
    touch a route (a security or port change) does not build it again.  Only routes that
    name their network are kept (the others take the name from the networks' config)."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[Mapping[str, Any], NextHop, EndpointInfo]] = {}

    def get(self, key: str, r: Mapping[str, Any]) -> tuple[NextHop, EndpointInfo]:
        hit = self._kept.get(key)
        if hit is not None and hit[0] is r:
            return hit[1], hit[2]
        nh, info = _remote(r, str(r["network"]))
        self._kept[key] = (r, nh, info)
        return nh, info

    def prune(self, routes: Mapping[str, Any]) -> None:
        """Forget routes the view no longer holds (once the memo outgrows it)."""
        if len(self._kept) > 2 * len(routes) + 64:
            self._kept = {k: v for k, v in self._kept.items() if routes.get(k) is v[0]}


def _remote(r: Mapping[str, Any], network: str) -> tuple[NextHop, EndpointInfo]:
    return (NextHop(kind="remote", vtep=r["nexthop"], vni=int(r["vni"]), mac=r["mac"],
                    node=r.get("node")),
            EndpointInfo(network, tuple(int(x) for x in r.get("sgs") or ()),
                         tuple(int(x) for x in r.get("tags") or ())))


def desired_state(node: str, underlay_ip: str, view: View, local_ports: Collection[str],
                  mtu: int, memo: RouteMemo | None = None) -> DatapathState:
    """The forwarding state this node needs: one VRF per network of its plugged ports.

    ``local_ports`` are the port uuids registered on this node; ``mtu`` is the underlay MTU.
    A port is plugged once its config (and its network's) is in the view.  ``memo`` (the
    agent's own, across passes) spares rebuilding the routes that did not change.
    """
    ports = _local_ports(view, local_ports, port_mtu(mtu, underlay_ip))
    nets = view.get("networks", {})
    net_ids = sorted({p.network for p in ports.values()})
    importers = _importers(nets, net_ids)
    # Networks that do not list their sources take every route leaked in from elsewhere.
    open_nets = [n for n in net_ids if "sources" not in nets[n]]
    tables: dict[str, dict[str, set[NextHop]]] = {n: {} for n in net_ids}
    # what policy knows of each address: SG and tag ids from the route (or the local port)
    endpoints: dict[str, dict[str, EndpointInfo]] = {n: {} for n in net_ids}
    names = {int(c["vni"]): str(c["name"]) for c in nets.values()}
    for r in view.get("routes", {}).values():
        if r.get("network"):
            names.setdefault(int(r["vni"]), str(r["network"]))

    for p in ports.values():
        nh = NextHop(kind="local", port=p.uuid, mac=p.mac, node=node)
        for ip in p.ips:
            tables[p.network].setdefault(host_prefix(ip), set()).add(nh)
            endpoints[p.network][host_prefix(ip)] = EndpointInfo(
                str(nets[p.network]["name"]), tuple(p.sgs), tuple(p.tags))

    routes = view.get("routes", {})
    for key, r in routes.items():
        if r.get("network"):  # a leaked network with no port here: its name, for ACLs
            names.setdefault(int(r["vni"]), str(r["network"]))
        targets = importers.get(r["ri"])
        if targets is None:
            targets = open_nets  # leaked from a network with no port here
        if not targets:
            continue
        if r["nexthop"] == underlay_ip:
            # Our own route reflected back: only a port plugged here can serve it.
            if r["port"] not in ports:
                continue
            nh = NextHop(kind="local", port=r["port"], mac=ports[r["port"]].mac, node=node)
            _, info = _remote(r, str(r.get("network") or names.get(int(r["vni"]), "")))
        elif memo is not None and r.get("network"):
            nh, info = memo.get(key, r)
        else:
            nh, info = _remote(r, str(r.get("network") or names.get(int(r["vni"]), "")))
        for n in targets:
            tables[n].setdefault(r["prefix"], set()).add(nh)
            endpoints[n].setdefault(r["prefix"], info)

    vrfs: dict[str, Vrf] = {}
    for n in net_ids:
        cfg = nets[n]
        vrfs[n] = Vrf(
            network=n, name=cfg["name"], vni=int(cfg["vni"]),
            routes={pfx: tuple(sorted(nhs, key=_nh_order)) for pfx, nhs in
                    sorted(tables[n].items())},
            gateways=tuple(s["gateway"] for s in cfg.get("subnets", ()) if s.get("gateway")),
            acl=tuple(cfg.get("acl") or ()),
            endpoints=dict(sorted(endpoints[n].items())),
        )
    if memo is not None:
        memo.prune(routes)
    sgs = {int(sg["id"]): sg for sg in view.get("security_groups", {}).values()}
    return DatapathState(node=node, underlay_ip=underlay_ip, ports=ports, vrfs=vrfs,
                         security_groups=sgs, firewall=dict(view.get("firewall") or {}),
                         network_names=names)


def _importers(nets: Mapping[str, Any], net_ids: list[str]) -> dict[str, list[str]]:
    """Routing instance -> the local networks whose VRF takes its routes.

    The view's routes carry their *source* instance.  A network's own instance feeds its VRF;
    an optional ``sources`` list in the network's config (the instances it imports) says
    which other instances feed it too.
    """
    out: dict[str, list[str]] = {}
    for n in net_ids:
        for ri in {nets[n]["ri"], *nets[n].get("sources", ())}:
            out.setdefault(ri, []).append(n)
    return out


def _nh_order(nh: NextHop) -> tuple[str, str, str]:
    return (nh.kind, nh.vtep or "", nh.port or "")


def originated_routes(node: str, underlay_ip: str, view: View,
                      installed: DatapathState | None) -> dict[str, Route]:
    """Routes this node announces: one per address of each port that is really installed in
    the datapath and whose config is known (TF's agent does the same: nothing black-holed)."""
    if installed is None:
        return {}
    nets = view.get("networks", {})
    out: dict[str, Route] = {}
    for p in installed.ports.values():
        net = nets.get(p.network)
        if net is None or p.uuid not in view.get("ports", {}):
            continue
        for ip in p.ips:
            r = Route(ri=net["ri"], prefix=host_prefix(ip), mac=p.mac, nexthop=underlay_ip,
                      vni=int(net["vni"]), encap="vxlan", port=p.uuid, node=node,
                      sgs=list(p.sgs), tags=list(p.tags), network=str(net["name"]))
            out[route_key(r)] = r
    return out


def route_diff(old: Mapping[str, Route], new: Mapping[str, Route]
               ) -> tuple[list[Route], list[str]]:
    """(routes to add or update, keys to withdraw) that turn ``old`` into ``new``."""
    add = [r for k, r in new.items() if old.get(k) != r]
    gone = [k for k in old if k not in new]
    return add, gone


def port_gateway(view: View, port: LocalPort) -> str | None:
    """The gateway of the subnet that holds the port's first address."""
    if not port.ips:
        return None
    ip = ipaddress.ip_address(port.ips[0])
    for s in view.get("networks", {}).get(port.network, {}).get("subnets", ()):
        try:
            if ip in ipaddress.ip_network(s["prefix"], strict=False):
                gw = s.get("gateway")
                return str(gw) if gw else None
        except (KeyError, ValueError):
            continue
    return None
