"""The security verdict of a packet: TF's gates, evaluated purely over ``DatapathState``.

Every backend agrees with this module: ``sim`` calls it from ``trace``; the ``linux`` backend
compiles the same semantics into nftables (``datapath/linux/acl.py``) and a differential test
checks that real packets get the verdicts computed here.

A packet from a source port to a destination port must pass every gate, in this order (the
first gate that denies is the one reported):

1. **network policy**: the source network's ACL (on the source node), then the destination
   network's ACL (on the destination node).  First match wins; an empty ACL allows; a
   non-empty ACL that matches nothing denies.
2. **security groups**: the egress rules of the source port's groups (source node), then the
   ingress rules of the destination port's groups (destination node).  Rules only allow; a port
   with groups drops what none of their rules allows; a port without groups is unfiltered.
3. **firewall** (application-policy-sets): the rules of the sets that apply to the source port
   (source node), then those of the destination port (destination node).  First match wins
   over the concatenated, ordered rule list; a port whose sets hold no rule is unfiltered; a
   port with rules denies what none matches.

Each gate sees the packet as its own node knows it: its local port from the port's config,
the other end from the route to it (routes carry the SG ids and tag ids of the port that
originated them, as TF's routes do).  Verdicts are for the forward direction of a flow:
replies of an admitted flow are admitted by connection tracking, as in TF's flow table.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tungsten.datapath.base import DatapathState, LocalPort, Vrf

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "icmp6": 58, "ipv6-icmp": 58,
             "sctp": 132}
PORT_PROTOCOLS = (6, 17, 132)  # protocols whose packets have ports; others ignore port ranges
ANY_PORTS = (0, 65535)
GLOBAL_SCOPE_PARTS = 2  # a global set's fq_name: [policy-management, set]


def proto_number(proto: str | int | None) -> int | None:
    """A protocol name or number as a number; None for 'any' (and for 0, TF's 'any')."""
    if proto is None:
        return None
    text = str(proto).strip().lower()
    if text in ("", "any", "0"):
        return None
    if text.isdigit():
        return int(text)
    if text not in PROTOCOLS:
        raise ValueError(f"unknown protocol {proto!r}")
    return PROTOCOLS[text]


@dataclass(frozen=True)
class Endpoint:
    """One end of a packet, as a gate sees it."""

    ip: IPAddress
    port: int
    network: str  # fq_name joined by ':' ("" when unknown)
    sgs: tuple[int, ...] = ()
    tags: tuple[int, ...] = ()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str | None  # the deciding rule; None: the gate has nothing configured (passes)
    log: bool = False  # the deciding rule asks for the flow to be logged


PASS = Decision(True, None)


@dataclass(frozen=True)
class Gate:
    kind: str  # "policy" | "sg-egress" | "sg-ingress" | "firewall"
    node: str
    what: str  # human-readable: which ACL / port
    decision: Decision


@dataclass(frozen=True)
class Verdict:
    gates: tuple[Gate, ...]

    @property
    def allowed(self) -> bool:
        return all(g.decision.allowed for g in self.gates)

    @property
    def denied_by(self) -> Gate | None:
        return next((g for g in self.gates if not g.decision.allowed), None)

    @property
    def logged(self) -> tuple[Gate, ...]:
        return tuple(g for g in self.gates if g.decision.log)


# --- ports and addresses ---------------------------------------------------------------------


def port_ranges(ranges: Iterable[Mapping[str, Any] | None]) -> list[tuple[int, int]]:
    """Port ranges as (lo, hi); [] means any port.  A malformed range (inverted, out of
    0..65535, not a number) matches no port: it is left out, and when every range given is
    malformed, ``ValueError`` says the rule matches nothing."""
    out: list[tuple[int, int]] = []
    bad = False
    for r in ranges:
        if not r:
            return []
        try:
            lo, hi = int(r.get("start_port", -1)), int(r.get("end_port", -1))
        except (TypeError, ValueError):
            bad = True
            continue
        if lo == -1:
            return []
        hi = lo if hi == -1 else hi
        if (lo, hi) == ANY_PORTS:
            return []
        if not 0 <= lo <= hi <= ANY_PORTS[1]:
            bad = True
            continue
        out.append((lo, hi))
    if bad and not out:
        raise ValueError("no valid port range")
    return out


def ports_match(rule_proto: int | None, sports: list[tuple[int, int]],
                dports: list[tuple[int, int]], proto: int, sport: int, dport: int) -> bool:
    """Ports constrain only TCP, UDP and SCTP: a rule for another protocol ignores them, and
    a rule for any protocol that restricts ports matches only those three."""
    if not sports and not dports:
        return True
    if rule_proto is not None and rule_proto not in PORT_PROTOCOLS:
        return True
    if proto not in PORT_PROTOCOLS:
        return False
    return ((not sports or any(lo <= sport <= hi for lo, hi in sports))
            and (not dports or any(lo <= dport <= hi for lo, hi in dports)))


@functools.lru_cache(maxsize=1 << 16)  # the same prefixes are tested again and again
def _net(prefix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(prefix, strict=False)


def _in_prefix(prefix: str | None, ip: IPAddress) -> bool:
    if not prefix:
        return False
    try:
        net = _net(prefix)
    except ValueError:
        return False
    return net.version == ip.version and ip in net


def subnet_prefix(subnet: Mapping[str, Any] | None) -> str | None:
    """A SubnetType as ``a.b.c.d/n``."""
    if not subnet or subnet.get("ip_prefix") is None:
        return None
    return f"{subnet['ip_prefix']}/{subnet.get('ip_prefix_len', 32)}"


def address_matches(addr: Mapping[str, Any] | None, ep: Endpoint) -> bool:
    """``AddressType``: every field that is set must match; nothing set means any."""
    if not addr:
        return True
    vn = addr.get("virtual_network")
    if vn not in (None, "", "any") and vn != ep.network:
        return False
    if addr.get("subnet") and not _in_prefix(subnet_prefix(addr["subnet"]), ep.ip):
        return False
    if addr.get("subnet_list") and not any(_in_prefix(subnet_prefix(s), ep.ip)
                                           for s in addr["subnet_list"]):
        return False
    sg = addr.get("security_group")
    if sg not in (None, "", "any", "local"):
        try:
            if int(sg) not in ep.sgs:
                return False
        except ValueError:
            return False  # a group by name is not resolved here: no match
    return not addr.get("network_policy")  # unexpanded policy references match nothing


# --- network policy ACLs and security-group rules (AclRuleType or PolicyRuleType) ---------------


def rule_parts(rule: Mapping[str, Any]
               ) -> tuple[Any, list[Any], list[Any], list[Any], list[Any], str | None]:
    """(protocol, src addresses, src ports, dst addresses, dst ports, ethertype) of either
    rule shape."""
    mc = rule.get("match_condition")
    if mc is not None:  # AclRuleType
        return (mc.get("protocol"), [mc.get("src_address")], [mc.get("src_port")],
                [mc.get("dst_address")], [mc.get("dst_port")], mc.get("ethertype"))
    return (rule.get("protocol"), rule.get("src_addresses") or [None],
            rule.get("src_ports") or [None], rule.get("dst_addresses") or [None],
            rule.get("dst_ports") or [None], rule.get("ethertype"))


def rule_matches(rule: Mapping[str, Any], proto: int, src: Endpoint, dst: Endpoint) -> bool:
    """Does ``rule`` match the packet src -> dst (or dst -> src for a ``<>`` rule)?"""
    rproto, saddrs, sports, daddrs, dports, ethertype = rule_parts(rule)
    try:
        want = proto_number(rproto)
    except ValueError:
        return False
    if want is not None and want != proto:
        return False
    if ethertype and ethertype != ("IPv6" if src.ip.version == 6 else "IPv4"):
        return False
    try:
        sr, dr = port_ranges(sports), port_ranges(dports)
    except ValueError:
        return False

    def one_way(a: Endpoint, b: Endpoint) -> bool:
        return (any(address_matches(x, a) for x in saddrs)
                and any(address_matches(x, b) for x in daddrs)
                and ports_match(want, sr, dr, proto, a.port, b.port))

    return one_way(src, dst) or (rule.get("direction") == "<>" and one_way(dst, src))


def _action(rule: Mapping[str, Any]) -> tuple[str, bool]:
    al = rule.get("action_list") or {}
    return str(al.get("simple_action") or "pass"), bool(al.get("log"))


def acl_decision(acl: Iterable[Mapping[str, Any]], proto: int, src: Endpoint, dst: Endpoint
                 ) -> Decision:
    """A network's ACL: first match wins; empty allows; no match denies."""
    empty = True
    for i, rule in enumerate(acl):
        empty = False
        if rule_matches(rule, proto, src, dst):
            action, log = _action(rule)
            return Decision(action != "deny", str(rule.get("rule_uuid") or f"rule #{i}"), log)
    return PASS if empty else Decision(False, "implicit deny")


def acl_verdict(acl: Iterable[Mapping[str, Any]], proto: int, src: Endpoint, dst: Endpoint
                ) -> tuple[bool, str | None]:
    d = acl_decision(acl, proto, src, dst)
    return d.allowed, d.rule


def sg_decision(groups: Mapping[int, Mapping[str, Any]], ids: Sequence[int], direction: str,
                proto: int, src: Endpoint, dst: Endpoint) -> Decision:
    """Security groups only allow; a port with groups drops what none of its rules allows;
    a port without groups is unfiltered.  A group the node has no config for allows
    nothing."""
    if not ids:
        return PASS
    for sg_id in ids:
        for rule in (groups.get(sg_id) or {}).get(direction, ()):
            action, log = _action(rule)
            if action == "deny":
                continue
            if rule_matches(rule, proto, src, dst):
                return Decision(True, str(rule.get("rule_uuid") or f"sg {sg_id}"), log)
    return Decision(False, f"security group {direction} (default deny)")


def sg_allows(groups: Mapping[int, Mapping[str, Any]], ids: tuple[int, ...], direction: str,
              proto: int, src: Endpoint, dst: Endpoint) -> tuple[bool, str | None]:
    d = sg_decision(groups, ids, direction, proto, src, dst)
    return d.allowed, d.rule


# --- firewall (application-policy-sets, firewall policies and rules) ---------------------------


def _is_global(entry: Mapping[str, Any]) -> bool:
    return len(str(entry.get("name") or "").split(":")) <= GLOBAL_SCOPE_PARTS


def policy_sets(firewall: Mapping[str, Mapping[str, Any]], tags: Iterable[int]
                ) -> list[Mapping[str, Any]]:
    """The application-policy-sets that apply to a port with these effective tags, in
    evaluation order: the sets of its application tag, then the default sets (``all
    applications``); within each, global scope before project scope, then by name."""
    mine = set(tags)
    app = [e for e in firewall.values() if not e.get("all_applications")
           and e.get("application_tag") is not None and e["application_tag"] in mine]
    default = [e for e in firewall.values() if e.get("all_applications")]

    def order(e: Mapping[str, Any]) -> tuple[int, str]:
        return (0 if _is_global(e) else 1, str(e.get("name") or e.get("uuid") or ""))

    return sorted(app, key=order) + sorted(default, key=order)


def firewall_rules(firewall: Mapping[str, Mapping[str, Any]], tags: Iterable[int]
                   ) -> list[Mapping[str, Any]]:
    """The ordered firewall rules a port is subject to (sets, policies and rules are already
    in sequence order in the view)."""
    return [rule for aps in policy_sets(firewall, tags)
            for pol in aps.get("policies") or () for rule in pol.get("rules") or ()]


def endpoint_matches(ep: Mapping[str, Any] | None, e: Endpoint) -> bool:
    """A FirewallRuleEndpointType: one of tags (all of them, ``&&``), address group, network,
    subnet or any; an endpoint with nothing set matches anything."""
    if not ep or ep.get("any"):
        return True
    if ep.get("tags") or ep.get("tag_ids"):
        ids = ep.get("tag_ids") or []
        if not ids:
            return False  # tags the API could not resolve
        return all(int(t) in e.tags for t in ids)
    if ep.get("address_group"):
        return any(_in_prefix(p, e.ip) for p in ep.get("address_group_prefixes") or ())
    if ep.get("virtual_network"):
        return str(ep["virtual_network"]) == e.network
    if ep.get("subnet"):
        return _in_prefix(subnet_prefix(ep["subnet"]), e.ip)
    return True


def tags_of_type(tags: Iterable[int], kind: int) -> frozenset[int]:
    """A tag id's type is its high 16 bits."""
    return frozenset(t for t in tags if t >> 16 == kind)


def services(rule: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A rule's services: its service group's, or its own service (none: any)."""
    if "service_groups" in rule:
        return list(rule.get("service_groups") or [])
    return [rule.get("service") or {}]


def service_matches(svc: Mapping[str, Any], proto: int, sport: int, dport: int) -> bool:
    pid = svc.get("protocol_id")
    if "protocol_id" in svc and pid is None:
        return False  # a protocol the node does not know matches nothing
    want = None if not pid else int(pid)
    if want is None and svc.get("protocol") not in (None, "", "any", "0", 0):
        try:
            want = proto_number(svc.get("protocol"))
        except ValueError:
            return False
    if want is not None and want != proto:
        return False
    try:
        sr = port_ranges([svc.get("src_ports")])
        dr = port_ranges([svc.get("dst_ports")])
    except ValueError:
        return False
    return ports_match(want, sr, dr, proto, sport, dport)


def fw_rule_matches(rule: Mapping[str, Any], proto: int, src: Endpoint, dst: Endpoint) -> bool:
    """A malformed rule (a field of the wrong type) matches nothing."""
    try:
        return _fw_rule_matches(rule, proto, src, dst)
    except (TypeError, ValueError, AttributeError):
        return False


def _fw_rule_matches(rule: Mapping[str, Any], proto: int, src: Endpoint, dst: Endpoint
                     ) -> bool:
    if not any(service_matches(s, proto, src.port, dst.port) for s in services(rule)):
        return False
    for kind in rule.get("match_tag_types") or ():
        if tags_of_type(src.tags, int(kind)) != tags_of_type(dst.tags, int(kind)):
            return False
    e1, e2 = rule.get("endpoint_1"), rule.get("endpoint_2")
    forward = endpoint_matches(e1, src) and endpoint_matches(e2, dst)
    backward = endpoint_matches(e2, src) and endpoint_matches(e1, dst)
    direction = str(rule.get("direction") or "<>")
    if direction == ">":
        return forward
    if direction == "<":
        return backward
    return forward or backward


def firewall_decision(rules: Sequence[Mapping[str, Any]], proto: int, src: Endpoint,
                      dst: Endpoint) -> Decision:
    """First match wins; no rules: unfiltered; rules and no match: default deny."""
    if not rules:
        return PASS
    for rule in rules:
        if fw_rule_matches(rule, proto, src, dst):
            action, log = _action(rule)
            return Decision(action != "deny", str(rule.get("uuid") or rule.get("name")), log)
    return Decision(False, "firewall (default deny)")


# --- whole packets ---------------------------------------------------------------------------


def host_prefix(ip: IPAddress) -> str:
    return f"{ip}/{ip.max_prefixlen}"


def local_endpoint(port: LocalPort, vrf: Vrf, ip: IPAddress, l4port: int) -> Endpoint:
    return Endpoint(ip, l4port, vrf.name, tuple(port.sgs), tuple(port.tags))


def remote_endpoint(state: DatapathState, vrf: Vrf, ip: IPAddress, l4port: int) -> Endpoint:
    """The other end as this node's VRF knows it: the SG and tag ids its route carries."""
    info = vrf.endpoints.get(host_prefix(ip))
    if info is not None:
        return Endpoint(ip, l4port, info.network, tuple(info.sgs), tuple(info.tags))
    for p in state.ports.values():  # a local port of this VRF without a route yet
        if p.network == vrf.network and str(ip) in p.ips:
            return local_endpoint(p, vrf, ip, l4port)
    return Endpoint(ip, l4port, "")


@dataclass(frozen=True)
class Side:
    """A local port on its node: one end of a packet."""

    state: DatapathState
    port: LocalPort

    @property
    def vrf(self) -> Vrf:
        return self.state.vrfs[self.port.network]


def evaluate(proto: int, src_ip: IPAddress, sport: int, dst_ip: IPAddress, dport: int,
             src: Side | None, dst: Side | None) -> Verdict:
    """Every gate for a packet from ``src`` to ``dst`` (a side is None when its port is not
    in the fabric: its gates are not evaluated here)."""
    gates: list[Gate] = []
    views: list[tuple[Side, Endpoint, Endpoint]] = []  # (side, src as seen, dst as seen)
    if src is not None:
        views.append((src, local_endpoint(src.port, src.vrf, src_ip, sport),
                      remote_endpoint(src.state, src.vrf, dst_ip, dport)))
    if dst is not None:
        views.append((dst, remote_endpoint(dst.state, dst.vrf, src_ip, sport),
                      local_endpoint(dst.port, dst.vrf, dst_ip, dport)))
    for side, s, d in views:
        gates.append(Gate("policy", side.state.node, f"ACL of {side.vrf.name}",
                          acl_decision(side.vrf.acl, proto, s, d)))
    for side, s, d in views:
        egress = side is src
        gates.append(Gate("sg-egress" if egress else "sg-ingress", side.state.node,
                          f"{'egress' if egress else 'ingress'} SGs of {side.port.uuid}",
                          sg_decision(side.state.security_groups, side.port.sgs,
                                      "egress" if egress else "ingress", proto, s, d)))
    for side, s, d in views:
        gates.append(Gate("firewall", side.state.node, f"firewall of {side.port.uuid}",
                          firewall_decision(firewall_rules(side.state.firewall,
                                                           side.port.tags), proto, s, d)))
    return Verdict(tuple(gates))
