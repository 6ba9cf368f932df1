"""The ``sim`` datapath: forwarding state in memory, and a packet tracer across nodes.

``SimDatapath`` keeps what the agent applied; ``SimFabric`` maps underlay IPs to the sim
datapaths of one process, so ``trace`` can follow a packet from a source port through its VRF,
over the (simulated) VXLAN underlay into the destination node's VRF and port.

Policy is evaluated statelessly on the forward direction only (no flow table, no reverse
flows): a reply is traced as a packet of its own.  The route is looked up first (the longest
prefix match in the source port's VRF; ECMP: a member picked by a flow hash), then every
security gate is evaluated by ``tungsten.security.verdict`` in TF's order: network policy
(source then destination network's ACL), security groups (egress of the source port, ingress
of the destination port), firewall (application-policy-sets of the source port, then of the
destination port).  Each gate runs with what its own node knows (the remote end's SG and tag
ids come from its route), as the ``linux`` backend does.
"""

from __future__ import annotations

import ipaddress
import zlib

from tungsten.datapath.base import (
    Datapath,
    DatapathState,
    LocalPort,
    NextHop,
    Packet,
    TraceResult,
    Vrf,
)
from tungsten.security.verdict import (  # re-exported: the sim's policy helpers live there
    Endpoint,
    Side,
    Verdict,
    acl_verdict,
    address_matches,
    evaluate,
    proto_number,
    rule_matches,
    sg_allows,
)

__all__ = ["Endpoint", "SimDatapath", "SimFabric", "acl_verdict", "address_matches",
           "ecmp_pick", "lpm", "proto_number", "rule_matches", "sg_allows"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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
        self.last_verdict: Verdict | None = None  # the gates of the last traced packet

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
            ipaddress.ip_address(pkt.src)
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
        dst_dp, dst_port, _ = dest
        dst_st = dst_dp._state
        assert dst_st is not None
        src_ip = ipaddress.ip_address(pkt.src)
        verdict = evaluate(proto, src_ip, pkt.sport, dst_ip, pkt.dport,
                           Side(st, port), Side(dst_st, dst_port))
        self.last_verdict = verdict
        for g in verdict.gates:
            d = g.decision
            if d.rule is not None:
                hops.append(f"{g.node}: {g.what}: {'pass' if d.allowed else 'deny'} by {d.rule}"
                            + (" (logged)" if d.log else ""))
        denied = verdict.denied_by
        if denied is not None:
            return TraceResult("dropped", node=denied.node, rule=denied.decision.rule,
                               hops=tuple(hops))
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
