"""What a lab's topology says about reachability, and why (pure).

For an ordered pair of workloads and a probe (ping, or TCP to a port) ``expect`` answers who
should answer at the destination's address and which piece of config decides: the same
network, an address owned by a workload of the source's own network (overlapping subnets), no
route (networks no policy connects), a policy rule, or the implicit deny.  Both networks'
policies must admit a new connection (the datapath's ACLs are stateful: replies pass).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tungsten.lab.topology import Rule, Topology

PROBES: tuple[tuple[str, str, int | None], ...] = (
    ("ping", "icmp", None), ("tcp/5432", "tcp", 5432), ("tcp/80", "tcp", 80))


@dataclass(frozen=True)
class Expectation:
    answers: bool  # something answers at the destination's address
    by: str | None  # the workload that answers (None: nobody)
    reason: str


def _ends(topo: Topology, end: str, network: str, ip: str) -> bool:
    if end == "any":
        return True
    if any(n.name == end for n in topo.networks):
        return end == network
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(end, strict=False)
    except ValueError:
        return False


def _matches(topo: Topology, rule: Rule, flow: tuple[str, str, str, str],
             protocol: str, port: int | None) -> bool:
    snet, sip, dnet, dip = flow
    if rule.protocol not in ("any", protocol, {"icmp": "1", "tcp": "6"}[protocol]):
        return False
    lo, hi = rule.dst_ports
    if port is not None and (lo, hi) != (-1, -1) and not lo <= port <= hi:
        return False
    if port is None and protocol == "icmp" and (lo, hi) != (-1, -1):
        return False
    if rule.src_ports != (-1, -1):  # the client's port is ephemeral: never assume it matches
        return False
    fwd = _ends(topo, rule.src, snet, sip) and _ends(topo, rule.dst, dnet, dip)
    rev = rule.direction == "<>" and _ends(topo, rule.src, dnet, dip) \
        and _ends(topo, rule.dst, snet, sip)
    return fwd or rev


def _connected(topo: Topology, a: str, b: str) -> str | None:
    """The policy attached to both networks with a pass rule naming both (TF connects their
    routing instances), or None."""
    for pol in topo.policies:
        if a in pol.networks and b in pol.networks:
            for r in pol.rules:
                if r.action == "pass" and {r.src, r.dst} in ({a, b}, {a, "any"}, {"any", b}):
                    return pol.name
    return None


def _acl(topo: Topology, network: str, flow: tuple[str, str, str, str], protocol: str,
         port: int | None) -> tuple[bool, str]:
    pols = [p for p in topo.policies if network in p.networks]
    for pol in pols:
        for i, r in enumerate(pol.rules, 1):
            if _matches(topo, r, flow, protocol, port):
                return r.action == "pass", f"policy {pol.name} rule {i} ({r.action})"
    names = ", ".join(p.name for p in pols) or "no policy"
    return False, f"implicit deny (no rule of {names} on {network} matches)"


def expect(topo: Topology, ips: dict[str, str], src: str, dst: str, protocol: str,
           port: int | None) -> Expectation:
    wl = {w.name: w for w in topo.workloads}
    s, d = wl[src], wl[dst]
    addr = ips[dst]
    if s.network == d.network:
        return Expectation(True, dst, "same network")
    owner = next((w.name for w in topo.workloads
                  if w.network == s.network and ips.get(w.name) == addr), None)
    if owner is not None:
        who = "itself" if owner == src else owner
        return Expectation(True, owner, f"{addr} is {who} in {s.network} (overlapping "
                                        f"subnets): {dst} in {d.network} is never reached")
    sproj, dproj = topo.network(s.network).project, topo.network(d.network).project
    pol = _connected(topo, s.network, d.network)
    if pol is None:
        why = "other project" if sproj != dproj else "no policy connects them"
        return Expectation(False, None, f"no route (isolated networks: {why})")
    flow = (s.network, ips[src], d.network, addr)
    for net in dict.fromkeys((s.network, d.network)):
        ok, why = _acl(topo, net, flow, protocol, port)
        if not ok:
            return Expectation(False, None, why)
    return Expectation(True, dst, why)
