"""The ``sim`` datapath: forwarding state in memory, and a packet tracer across nodes.

``SimDatapath`` keeps what the agent applied; ``SimFabric`` maps underlay IPs to the sim
datapaths of one process, so ``trace`` can follow a packet from a source port through its VRF,
over the (simulated) VXLAN underlay into the destination node's VRF and port.

Policy is evaluated statelessly on the forward direction only (no flow table, no reverse
flows): a reply is traced as a packet of its own.  The order, as on a vRouter:

1. egress security groups of the source port (skipped if the port has none);
2. longest-prefix match in the source port's VRF (ECMP: a member picked by a flow hash);
3. the source network's ACL;
4. the destination network's ACL, when the packet crosses into another network;
5. ingress security groups of the destination port (skipped if it has none).

ACLs use TF's ``AclRuleType`` (match_condition, action_list.simple_action, direction,
rule_uuid): first match wins, ``<>`` also matches the reversed packet, a non-empty ACL that
matches nothing drops ("implicit deny"), and an empty ACL allows (a network before the
transformer has written its ACL still forwards inside itself).  Security-group rules
(``PolicyRuleType``-like, or ``AclRuleType``) only allow; a port with security groups drops
what none of them allows.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tungsten.datapath.base import (
    Datapath,
    DatapathState,
    LocalPort,
    NextHop,
    Packet,
    TraceResult,
    Vrf,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmp6": 58, "ipv6-icmp": 58, "sctp": 132}


def proto_number(proto: str | int | None) -> int | None:
    """A protocol name or number as a number; None for 'any'."""
    if proto is None:
        return None
    text = str(proto).strip().lower()
    if text in ("", "any"):
        return None
    if text.isdigit():
        return int(text)
    if text not in PROTOCOLS:
        raise ValueError(f"unknown protocol {proto!r}")
    return PROTOCOLS[text]


@dataclass(frozen=True)
class Endpoint:
    """One side of a packet, as policy sees it."""

    ip: IPAddress
    port: int
    network: str  # fq_name joined by ':'
    sgs: tuple[int, ...] = ()


def _subnet_has(subnet: dict[str, Any] | None, ip: IPAddress) -> bool:
    if not subnet or subnet.get("ip_prefix") is None:
        return False
    net = ipaddress.ip_network(f"{subnet['ip_prefix']}/{subnet.get('ip_prefix_len', 32)}",
                               strict=False)
    return net.version == ip.version and ip in net


def address_matches(addr: dict[str, Any] | None, ep: Endpoint) -> bool:
    """``AddressType``: every field that is set must match; nothing set means any."""
    if not addr:
        return True
    vn = addr.get("virtual_network")
    if vn not in (None, "", "any") and vn != ep.network:
        return False
    if addr.get("subnet") and not _subnet_has(addr["subnet"], ep.ip):
        return False
    if addr.get("subnet_list") and not any(_subnet_has(s, ep.ip) for s in addr["subnet_list"]):
        return False
    sg = addr.get("security_group")
    if sg not in (None, "", "any", "local"):
        try:
            if int(sg) not in ep.sgs:
                return False
        except ValueError:
            return False  # an SG by name cannot be resolved here: no match
    return not addr.get("network_policy")  # unexpanded policy references match nothing


def _port_in(ranges: Iterable[dict[str, Any] | None], port: int) -> bool:
    seen = False
    for r in ranges:
        if not r:
            return True
        seen = True
        lo, hi = int(r.get("start_port", -1)), int(r.get("end_port", -1))
        if lo == -1 or (lo <= port <= (lo if hi == -1 else hi)):
            return True
    return not seen


def _rule_parts(rule: dict[str, Any]) -> tuple[Any, list[Any], list[Any], list[Any], list[Any]]:
    """(protocol, src addresses, src ports, dst addresses, dst ports) of either rule shape."""
    mc = rule.get("match_condition")
    if mc is not None:  # AclRuleType
        return (mc.get("protocol"), [mc.get("src_address")], [mc.get("src_port")],
                [mc.get("dst_address")], [mc.get("dst_port")])
    return (rule.get("protocol"), rule.get("src_addresses") or [None],
            rule.get("src_ports") or [None], rule.get("dst_addresses") or [None],
            rule.get("dst_ports") or [None])


def rule_matches(rule: dict[str, Any], proto: int, src: Endpoint, dst: Endpoint) -> bool:
    """Does ``rule`` match the packet src -> dst (or dst -> src for a ``<>`` rule)?"""
    rproto, saddrs, sports, daddrs, dports = _rule_parts(rule)
    want = proto_number(rproto)
    if want is not None and want != proto:
        return False
    ethertype = (rule.get("match_condition") or rule).get("ethertype")
    if ethertype and ethertype != ("IPv6" if src.ip.version == 6 else "IPv4"):
        return False

    def one_way(a: Endpoint, b: Endpoint) -> bool:
        return (any(address_matches(x, a) for x in saddrs) and _port_in(sports, a.port)
                and any(address_matches(x, b) for x in daddrs) and _port_in(dports, b.port))

    return one_way(src, dst) or (rule.get("direction") == "<>" and one_way(dst, src))


def acl_verdict(acl: Iterable[dict[str, Any]], proto: int, src: Endpoint, dst: Endpoint
                ) -> tuple[bool, str | None]:
    """(allowed, deciding rule): first match wins; empty allows; no match denies."""
    empty = True
    for i, rule in enumerate(acl):
        empty = False
        if rule_matches(rule, proto, src, dst):
            action = (rule.get("action_list") or {}).get("simple_action", "pass")
            return action != "deny", str(rule.get("rule_uuid") or f"rule #{i}")
    return (True, None) if empty else (False, "implicit deny")


def sg_allows(sgs: dict[int, dict[str, Any]], ids: tuple[int, ...], direction: str,
              proto: int, src: Endpoint, dst: Endpoint) -> tuple[bool, str | None]:
    """Security groups only allow; a port with SGs drops what none of its rules allows."""
    if not ids:
        return True, None
    for sg_id in ids:
        for rule in (sgs.get(sg_id) or {}).get(direction, ()):
            if (rule.get("action_list") or {}).get("simple_action", "pass") == "deny":
                continue
            if rule_matches(rule, proto, src, dst):
                return True, str(rule.get("rule_uuid") or f"sg {sg_id}")
    return False, f"security group {direction} (default deny)"


def ecmp_pick(nhs: tuple[NextHop, ...], pkt: Packet) -> NextHop:
    """A flow-sticky member: the same 5-tuple always takes the same next hop."""
    if len(nhs) == 1:
        return nhs[0]
    key = f"{pkt.src}|{pkt.dst}|{pkt.proto}|{pkt.sport}|{pkt.dport}".encode()
    return nhs[zlib.crc32(key) % len(nhs)]


def lpm(vrf: Vrf, ip: IPAddress) -> tuple[str, tuple[NextHop, ...]] | None:
    """Longest-prefix match in one VRF (host routes, the common case, first)."""
    host = f"{ip}/{ip.max_prefixlen}"
    if host in vrf.routes:
        return host, vrf.routes[host]
    best: tuple[int, str] | None = None
    for prefix in vrf.routes:
        net = ipaddress.ip_network(prefix, strict=False)
        if net.version == ip.version and ip in net and (best is None or
                                                        net.prefixlen > best[0]):
            best = (net.prefixlen, prefix)
    return None if best is None else (best[1], vrf.routes[best[1]])


class SimFabric:
    """The simulated underlay: underlay IP -> the sim datapath of that node."""

    def __init__(self) -> None:
        self.nodes: dict[str, SimDatapath] = {}

    def attach(self, underlay_ip: str, dp: SimDatapath) -> None:
        self.nodes[underlay_ip] = dp

    def detach(self, underlay_ip: str) -> None:
        self.nodes.pop(underlay_ip, None)


class SimDatapath(Datapath):
    """Holds the applied state; counts applies and route removals (to observe flapping)."""

    name = "sim"

    def __init__(self, fabric: SimFabric | None = None) -> None:
        self.fabric = fabric
        self._state: DatapathState | None = None
        self.applies = 0
        self.routes_removed = 0  # (vrf, prefix) entries that disappeared over all applies

    def apply(self, state: DatapathState) -> None:
        old = self._state
        if old is not None:
            for net, vrf in old.vrfs.items():
                new = state.vrfs.get(net)
                if new is None:
                    self.routes_removed += len(vrf.routes)
                elif new.routes is not vrf.routes:
                    self.routes_removed += sum(1 for p in vrf.routes if p not in new.routes)
        self._state = state
        self.applies += 1
        if self.fabric is not None:
            self.fabric.attach(state.underlay_ip, self)

    def current(self) -> DatapathState | None:
        return self._state

    def route_count(self) -> int:
        return 0 if self._state is None else sum(len(v.routes) for v in
                                                 self._state.vrfs.values())

    # -- tracing -----------------------------------------------------------------------------
    def trace(self, src_port: str, pkt: Packet) -> TraceResult:
        """Where does ``pkt``, sent by local port ``src_port``, go?"""
        st = self._state
        here = st.node if st else None
        if st is None or src_port not in st.ports:
            return TraceResult("dropped", node=here, rule="unknown source port",
                               hops=(f"{src_port}: not a port on this node",))
        port = st.ports[src_port]
        vrf = st.vrfs[port.network]
        hops = [f"{st.node}: from {port.ifname} ({port.uuid}) into VRF {vrf.name}"]
        try:
            proto = proto_number(pkt.proto) or 0
            dst_ip = ipaddress.ip_address(pkt.dst)
            src = Endpoint(ipaddress.ip_address(pkt.src), pkt.sport, vrf.name, port.sgs)
        except ValueError as e:
            return TraceResult("dropped", node=st.node, rule=f"bad packet: {e}",
                               hops=tuple(hops))
        if pkt.dst in vrf.gateways:
            hops.append(f"{st.node}: {pkt.dst} is the gateway; the vRouter answers")
            return TraceResult("delivered", node=st.node, hops=tuple(hops))
        match = lpm(vrf, dst_ip)
        if match is None:
            hops.append(f"{st.node}: no route to {pkt.dst} in {vrf.name}")
            return TraceResult("no_route", node=st.node, hops=tuple(hops))
        prefix, nhs = match
        nh = ecmp_pick(nhs, pkt)
        hops.append(f"{st.node}: {prefix} -> {_nh_text(nh)}"
                    + (f" (ECMP, {len(nhs)} paths)" if len(nhs) > 1 else ""))

        dest = self._resolve(nh, dst_ip, hops)
        if isinstance(dest, TraceResult):
            return dest
        dst_dp, dst_port, dst_vrf = dest
        dst_st = dst_dp._state
        assert dst_st is not None
        dst = Endpoint(dst_ip, pkt.dport, dst_vrf.name, dst_port.sgs)
        # Policy is checked once the destination (its network and SGs) is known.
        checks: list[tuple[str, str, tuple[bool, str | None]]] = [
            (st.node, f"egress SGs of {port.uuid}",
             sg_allows(st.security_groups, port.sgs, "egress", proto, src, dst)),
            (st.node, f"ACL of {vrf.name}", acl_verdict(vrf.acl, proto, src, dst)),
        ]
        if dst_vrf.name != vrf.name:
            checks.append((dst_st.node, f"ACL of {dst_vrf.name}",
                           acl_verdict(dst_vrf.acl, proto, src, dst)))
        checks.append((dst_st.node, f"ingress SGs of {dst_port.uuid}",
                       sg_allows(dst_st.security_groups, dst_port.sgs, "ingress", proto, src,
                                 dst)))
        for node, what, (allowed, by) in checks:
            if by is not None:
                hops.append(f"{node}: {what}: {'pass' if allowed else 'deny'} by {by}")
            if not allowed:
                return TraceResult("dropped", node=node, rule=by, hops=tuple(hops))
        hops.append(f"{dst_st.node}: delivered to {dst_port.ifname} ({dst_port.uuid})")
        return TraceResult("delivered", port=dst_port.uuid, node=dst_st.node, hops=tuple(hops))

    def _resolve(self, nh: NextHop, dst_ip: IPAddress, hops: list[str]
                 ) -> tuple[SimDatapath, LocalPort, Vrf] | TraceResult:
        """The node, port and VRF a next hop leads to."""
        st = self._state
        assert st is not None
        if nh.kind == "local":
            p = st.ports.get(nh.port or "")
            if p is None:
                return TraceResult("no_route", node=st.node, hops=tuple(hops))
            return self, p, st.vrfs[p.network]
        remote = self.fabric.nodes.get(nh.vtep or "") if self.fabric else None
        rst = remote._state if remote else None
        if remote is None or rst is None:
            hops.append(f"{st.node}: VXLAN to {nh.vtep} (VNI {nh.vni}): not in this fabric")
            return TraceResult("forwarded", node=st.node, hops=tuple(hops))
        hops.append(f"{st.node}: VXLAN to {nh.vtep} (VNI {nh.vni})")
        rvrf = next((v for v in rst.vrfs.values() if v.vni == nh.vni), None)
        if rvrf is None:
            hops.append(f"{rst.node}: no VRF for VNI {nh.vni}")
            return TraceResult("no_route", node=rst.node, hops=tuple(hops))
        match = lpm(rvrf, dst_ip)
        rnh = next((n for n in match[1] if n.kind == "local"), None) if match else None
        rport = rst.ports.get(rnh.port or "") if rnh else None
        if rport is None:
            hops.append(f"{rst.node}: no local port for {dst_ip} in {rvrf.name}")
            return TraceResult("no_route", node=rst.node, hops=tuple(hops))
        return remote, rport, rvrf


def _nh_text(nh: NextHop) -> str:
    if nh.kind == "local":
        return f"local port {nh.port}"
    return f"{nh.node or 'node'} via {nh.vtep} VNI {nh.vni} ({nh.mac})"
