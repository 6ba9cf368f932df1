"""Network ACLs and conntrack zones on the kernel: one nftables table, planned as data.

``ruleset(state)`` is pure: the table ``inet <name>`` a ``DatapathState`` needs, as chains of
rules in libnftables' JSON shape.  ``commands(listed, want)`` is pure too: the one transaction
turning what ``nft`` lists (JSON) into that.  ``Nft`` is the thin adapter over Debian's
``python3-nftables`` (libnftables' JSON API), run inside the node's network namespace.

Layout of the table::

    chain zone      hook prerouting, priority raw (-300):  iifname vmap {dev: jump z-<vni>}
    chain z-<vni>   ct zone set <zone>; leaked prefixes of lower zones: ct zone set
                    ip saddr map {...}; ct zone set ip daddr map {...}
    chain forward   hook forward, priority filter: ct state established,related accept;
                    iifname vmap {port: jump acl-<vni>}; oifname vmap {port: jump acl-<vni>}
                    then the security gates: iifname/oifname vmaps to sg-out / sg-in
                    and to each port's fw-o-<dev> / fw-i-<dev> (see ``secrules.py``)
    chain acl-<vni> the network's ACL compiled into one set lookup per run of rules with the
                    same action (sets acl4p0-<vni>, acl6p0-<vni>, acl4d1-<vni>, ...; see
                    ``ordered.py``; a logged rule stays a rule), then drop

Every packet costs a fixed number of lookups (the vmaps are hash sets keyed by device name)
plus one per run of its own network's ACL.  A network with an empty ACL has no ``acl-``
chain: it passes everything.  Rules carry a comment ``tg:<digest of the rule>``; the listed
table is compared with the plan chain by chain through these digests (``nft`` lists rules in a
normalised form, so expressions are not compared directly), and only chains that differ are
flushed and refilled, all in one atomic transaction.

**Conntrack zones.**  Each network's devices (its ports and its VXLAN device) put packets in
the network's zone (the VNI when it fits 16 bits), so overlapping addresses of two networks
never share conntrack entries.  Traffic between two networks (leaked routes) must meet one
zone in both directions: it takes the lower of the two networks' zones, found by the source or
destination address being a prefix the network's VRF routes to the other network (the
kernel keeps the first zone set on a packet, so the zone chain sets exactly one).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import json
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tungsten.datapath.base import DatapathState, Vrf
from tungsten.datapath.linux.ctnetlink import CtNetlink, Flow
from tungsten.datapath.linux.flowlog import log_statements
from tungsten.datapath.linux.ordered import (
    ALL_ADDRS,
    ANY_PORT,
    ANY_PROTO,
    STEPS,
    Box,
    Elements,
    SetSpec,
    Span,
    Step,
    box_elem,
    compile_ordered,
    digest,
    elem_key,
    intersect,
    merge,
    net_span,
)
from tungsten.datapath.linux.reeval import Conntrack
from tungsten.datapath.linux.secrules import SecurityPlans, security_chains
from tungsten.security.verdict import PORT_PROTOCOLS, port_ranges

FAMILY = "inet"
DEFAULT_TABLE = "tungsten"
COMMENT_PREFIX = "tg:"
ZONE_MAX = 65535

Json = dict[str, Any]
Expr = tuple[Json, ...]


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[Expr, ...] = ()
    hook: str | None = None  # base chains: "prerouting" | "forward"
    prio: int = 0
    policy: str = "accept"

    def spec(self) -> tuple[object, ...]:
        """What must match for the chain to be kept (rules aside)."""
        if self.hook is None:
            return (None, None, None, None)
        return ("filter", self.hook, self.prio, self.policy)

    def digests(self) -> tuple[str, ...]:
        return self._digests

    @functools.cached_property
    def _digests(self) -> tuple[str, ...]:  # hashed once per plan, compared on every apply
        return tuple(rule_comment(r) for r in self.rules)


@dataclass(frozen=True)
class NamedSet:
    """A named set of the table; its elements change without touching the rules using it."""

    name: str
    type: tuple[str, ...]
    elements: tuple[Any, ...] = ()
    flags: tuple[str, ...] = ("interval",)

    def spec(self) -> tuple[object, ...]:
        return (self.type, self.flags)

    def by_key(self) -> dict[str, Any]:
        return self._by_key

    @functools.cached_property
    def _by_key(self) -> dict[str, Any]:  # planned once, compared on every apply
        if isinstance(self.elements, Elements):  # keyed when planned (shared across plans)
            return self.elements.by_key
        return {elem_key(e): e for e in self.elements}


@dataclass(frozen=True)
class Ruleset:
    table: str
    chains: tuple[Chain, ...]
    zones: Mapping[int, int] = field(default_factory=dict)  # vni -> conntrack zone
    # the state this table enforces: to re-evaluate established flows after a change
    state: DatapathState | None = field(default=None, compare=False)
    sets: tuple[NamedSet, ...] = ()

    def chain(self, name: str) -> Chain:
        return next(c for c in self.chains if c.name == name)


def rule_comment(expr: Expr) -> str:
    text = json.dumps(list(expr), sort_keys=True, separators=(",", ":"))
    return COMMENT_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:24]


def zones_for(vnis: Iterable[int]) -> dict[int, int]:
    """A conntrack zone per VNI: the VNI itself when it fits in 1..65535; a larger VNI is
    folded into that range and moved on past zones already taken (in VNI order)."""
    out: dict[int, int] = {}
    ordered = sorted(set(vnis))
    taken = {v for v in ordered if 1 <= v <= ZONE_MAX}
    for v in ordered:
        if v in taken:
            out[v] = v
    for v in ordered:
        if v in out:
            continue
        z = 1 + v % ZONE_MAX
        while z in taken:
            z = 1 + z % ZONE_MAX
        taken.add(z)
        out[v] = z
    return out


@functools.lru_cache(maxsize=1 << 16)  # the same prefixes recur in every plan
def _net(prefix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(prefix, strict=False)


@dataclass(frozen=True)
class VrfView:
    """What one network's VRF on this node says about addresses."""

    own: tuple[str, ...]  # prefixes of this network
    leaked: dict[int, tuple[str, ...]]  # vni of another network -> its prefixes seen here


def vrf_view(state: DatapathState, vrf: Vrf) -> VrfView:
    own: set[str] = set()
    leaked: dict[int, set[str]] = {}
    vni_of_net = {v.network: v.vni for v in state.vrfs.values()}
    for p in state.ports.values():
        if p.network == vrf.network:
            own.update(str(_net(ip)) for ip in p.ips)
    for prefix, nhs in vrf.routes.items():
        other: int | None = None
        for nh in nhs:
            if nh.kind == "remote" and nh.vni is not None and nh.vni != vrf.vni:
                other = nh.vni
            elif nh.kind == "local":
                lp = state.ports.get(nh.port or "")
                if lp is not None and lp.network != vrf.network:
                    other = vni_of_net.get(lp.network, lp.vni)
        if other is None:
            own.add(str(_net(prefix)))
        else:
            leaked.setdefault(other, set()).add(str(_net(prefix)))
    return VrfView(tuple(sorted(own, key=_order)),
                   {k: tuple(sorted(v, key=_order)) for k, v in sorted(leaked.items())})


def _order(prefix: str) -> tuple[int, int, int]:
    n = _net(prefix)
    return (n.version, int(n.network_address), n.prefixlen)


def ruleset(state: DatapathState, table: str = DEFAULT_TABLE,
            device_of: Mapping[int, str] | None = None,
            plans: SecurityPlans | None = None) -> Ruleset | None:
    """The table ``state`` needs (None: no network on this node, no table).

    ``device_of`` maps a VNI to the network's VXLAN device name on this node; ``plans``
    memoises security-group sets across applies (``secrules.SecurityPlans``).
    """
    if not state.vrfs:
        return None
    vrfs = sorted(state.vrfs.values(), key=lambda v: v.vni)
    zones = zones_for(v.vni for v in vrfs)
    names = {**state.network_names, **{v.vni: v.name for v in vrfs}}
    ports_of: dict[str, list[str]] = {}
    for p in sorted(state.ports.values(), key=lambda p: p.ifname):
        ports_of.setdefault(p.network, []).append(p.ifname)

    chains: list[Chain] = []
    zone_dispatch: list[tuple[str, str]] = []
    acl_dispatch: list[tuple[str, str]] = []
    resolvers: dict[str, dict[str, Sequence[str]]] = {}
    acl_sets: list[SetSpec] = []
    for v in vrfs:
        view = vrf_view(state, v)
        zchain = f"z-{v.vni}"
        chains.append(Chain(zchain, _zone_rules(zones[v.vni], view, zones)))
        devs = list(ports_of.get(v.network, ()))
        if device_of is not None and v.vni in device_of:
            devs.append(device_of[v.vni])
        zone_dispatch += [(d, zchain) for d in devs]
        resolve: dict[str, Sequence[str]] = {v.name: view.own}
        for other, prefixes in view.leaked.items():
            if other in names:
                resolve[names[other]] = prefixes
        resolvers[v.network] = resolve
        if v.acl:
            achain = f"acl-{v.vni}"
            arules, asets = acl_chain(v.vni, v.acl, resolve)
            chains.append(Chain(achain, arules))
            acl_sets += asets
            acl_dispatch += [(d, achain) for d in ports_of.get(v.network, ())]
    sec_chains, sec_dispatch, sec_sets = security_chains(state, resolvers, plans)
    chains += [Chain(name, rules) for name, rules in sec_chains]

    zone: list[Expr] = []
    if zone_dispatch:
        zone.append((_vmap("iifname", zone_dispatch),))
    fwd: list[Expr] = [(
        {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                   "right": ["established", "related"]}},
        {"accept": None},
    )]
    if acl_dispatch:
        fwd.append((_vmap("iifname", acl_dispatch),))
        fwd.append((_vmap("oifname", acl_dispatch),))
    # the gates after network policy: security groups, then firewall (secrules.py)
    fwd += [(_vmap(key, pairs),) for key, pairs in sec_dispatch]
    chains.append(Chain("zone", tuple(zone), hook="prerouting", prio=-300))
    chains.append(Chain("forward", tuple(fwd), hook="forward", prio=0))
    return Ruleset(table, tuple(chains), zones, state,
                   tuple(NamedSet(name, kind, elems if isinstance(elems, Elements)
                                  else tuple(elems))
                         for name, kind, elems in [*acl_sets, *sec_sets]))


def _vmap(key: str, pairs: Sequence[tuple[str, str]]) -> Json:
    return {"vmap": {"key": {"meta": {"key": key}},
                     "data": {"set": [[dev, {"jump": {"target": chain}}]
                                      for dev, chain in sorted(pairs)]}}}


def _zone_rules(zone: int, view: VrfView, zones: Mapping[int, int]) -> tuple[Expr, ...]:
    """The kernel keeps the first zone set on a packet, so each rule that sets one ends the
    chain: a leaked prefix of a lower zone (source first, then destination), else the own."""
    rules: list[Expr] = []
    lower = [(p, zones[vni]) for vni, ps in view.leaked.items()
             if vni in zones and zones[vni] < zone for p in ps]
    for version, proto in ((4, "ip"), (6, "ip6")):
        pairs = [[_addr(p), z] for p, z in lower if _net(p).version == version]
        if not pairs:
            continue
        for fld in ("saddr", "daddr"):
            rules.append(({"mangle": {"key": {"ct": {"key": "zone"}}, "value": {"map": {
                "key": {"payload": {"protocol": proto, "field": fld}},
                "data": {"set": pairs}}}}}, {"return": None}))
    rules.append(({"mangle": {"key": {"ct": {"key": "zone"}}, "value": zone}},))
    return tuple(rules)


def _addr(prefix: str) -> Any:
    n = _net(prefix)
    if n.prefixlen == n.max_prefixlen:
        return str(n.network_address)
    return {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}


# --- ACL rules ---------------------------------------------------------------------------------


class NoMatch(Exception):
    """The rule can never match (for this address family): it is left out."""


def acl_chain(vni: int, acl: Iterable[Mapping[str, Any]],
              networks: Mapping[str, Sequence[str]]
              ) -> tuple[tuple[Expr, ...], list[SetSpec]]:
    """A network's ACL as a chain ending with a drop (a non-empty ACL that matches nothing
    denies) and its named sets: one set lookup per run of rules with the same action
    (``ordered.py``); a logged rule stays an nft rule of its own.  ``networks`` resolves a
    network fq name to its prefixes as the network's VRF sees them; a name it does not
    hold matches nothing."""
    def name(accept: bool, run: int, version: int) -> str:
        return f"acl{version}{'p' if accept else 'd'}{run}-{vni}"

    ctx = digest(sorted((k, tuple(v)) for k, v in networks.items()))

    def step(rule: Mapping[str, Any]) -> Step:
        key = ("acl", repr(rule), ctx)
        made: Step = STEPS.get(key, lambda: acl_step(rule, networks, key))
        return made

    return compile_ordered((step(rule) for rule in acl), name)


def acl_step(rule: Mapping[str, Any], networks: Mapping[str, Sequence[str]],
             key: Any = None) -> Step:
    """One ``AclRuleType`` as boxes per IP version (the semantics of ``rule_exprs``)."""
    mc = rule.get("match_condition") or {}
    action = (rule.get("action_list") or {}).get("simple_action", "pass")
    if (rule.get("action_list") or {}).get("log"):
        return Step(action != "deny", None, tuple(rule_exprs(rule, networks)))
    ethertype = mc.get("ethertype")
    families = {"IPv4": (4,), "IPv6": (6,)}.get(str(ethertype), ()) if ethertype else (4, 6)
    directions = [("src_address", "src_port", "dst_address", "dst_port")]
    if rule.get("direction") == "<>":
        directions.append(("dst_address", "dst_port", "src_address", "src_port"))
    boxes: dict[int, list[Box]] = {4: [], 6: []}
    for version in families:
        for sa, sp, da, dp in directions:
            try:
                sports = _ports(mc.get(sp))
                dports = _ports(mc.get(dp))
                proto = _proto(mc.get("protocol"))
                srcs = _address_spans(mc.get(sa), version, networks)
                dsts = _address_spans(mc.get(da), version, networks)
            except NoMatch:
                continue
            if proto is not None and proto not in PORT_PROTOCOLS:
                sports, dports = [], []  # only TCP, UDP and SCTP have ports
            protos: Sequence[Span] = ([ANY_PROTO] if proto is None and not (sports or dports)
                                      else [(p, p) for p in PORT_PROTOCOLS] if proto is None
                                      else [(proto, proto)])
            full = [ALL_ADDRS[version]]
            boxes[version] += [(p, s, d, spt, dpt) for p in protos
                               for s in (srcs if srcs is not None else full)
                               for d in (dsts if dsts is not None else full)
                               for spt in (sports or [ANY_PORT]) for dpt in (dports or [ANY_PORT])]
    return Step(action != "deny", boxes, key=key)


def _address_constraints(addr: Mapping[str, Any], networks: Mapping[str, Sequence[str]]
                         ) -> list[list[str]]:
    """The prefix lists an ``AddressType`` constrains an address to (each must match);
    NoMatch for what a network ACL cannot resolve."""
    sg = addr.get("security_group")
    if sg not in (None, "", "any", "local"):
        raise NoMatch  # security groups in a network ACL: not resolved here
    if addr.get("network_policy"):
        raise NoMatch  # unexpanded policy references match nothing (as in sim)
    out: list[list[str]] = []
    vn = addr.get("virtual_network")
    if vn not in (None, "", "any"):
        out.append(list(networks.get(str(vn), ())))
    sub = _subnet(addr.get("subnet"))
    if sub is not None:
        out.append([sub])
    if addr.get("subnet_list"):
        out.append([s for s in map(_subnet_or_none, addr["subnet_list"]) if s])
    return out


def _address_spans(addr: Mapping[str, Any] | None, version: int,
                   networks: Mapping[str, Sequence[str]]) -> list[Span] | None:
    """The address spans an ``AddressType`` matches in one family (None: any; every field
    set must match; NoMatch: none)."""
    if not addr:
        return None
    out: list[Span] | None = None

    def restrict(prefixes: Iterable[str]) -> None:
        nonlocal out
        mine = merge(net_span(_net(p)) for p in prefixes if _net(p).version == version)
        if not mine:
            raise NoMatch
        out = mine if out is None else intersect(out, mine)

    for prefixes in _address_constraints(addr, networks):
        restrict(prefixes)
    return out


def rule_exprs(rule: Mapping[str, Any], networks: Mapping[str, Sequence[str]]
               ) -> list[Expr]:
    """One ``AclRuleType`` as nft rules (one per address family it can match; none if it
    can never match)."""
    mc = rule.get("match_condition") or {}
    action = (rule.get("action_list") or {}).get("simple_action", "pass")
    verdict: Json = {"drop": None} if action == "deny" else {"return": None}
    logging: list[Json] = (log_statements(str(rule.get("rule_uuid") or ""), action)
                           if (rule.get("action_list") or {}).get("log") else [])
    ethertype = mc.get("ethertype")
    # no ethertype: both families; one the evaluation core does not know: none
    families = {"IPv4": (4,), "IPv6": (6,)}.get(str(ethertype), ()) if ethertype else (4, 6)
    out: list[Expr] = []
    directions = [("src_address", "src_port", "dst_address", "dst_port")]
    if rule.get("direction") == "<>":
        directions.append(("dst_address", "dst_port", "src_address", "src_port"))
    for version in families:
        for sa, sp, da, dp in directions:
            try:
                exprs: list[Json] = [_match({"meta": {"key": "nfproto"}},
                                            "ipv4" if version == 4 else "ipv6")]
                sports = _ports(mc.get(sp))
                dports = _ports(mc.get(dp))
                proto = _proto(mc.get("protocol"))
                if proto is not None and proto not in PORT_PROTOCOLS:
                    sports, dports = [], []  # only TCP, UDP and SCTP have ports
                if proto is None and (sports or dports):
                    exprs.append(_match({"meta": {"key": "l4proto"}},
                                        {"set": list(PORT_PROTOCOLS)}))
                elif proto is not None:
                    exprs.append(_match({"meta": {"key": "l4proto"}}, proto))
                exprs += _address(mc.get(sa), "saddr", version, networks)
                exprs += _address(mc.get(da), "daddr", version, networks)
                if sports:
                    exprs.append(_match(_th("sport"), _port_set(sports)))
                if dports:
                    exprs.append(_match(_th("dport"), _port_set(dports)))
            except NoMatch:
                continue
            out.append((*exprs, *logging, verdict))
    return out


def _match(left: Json, right: Any) -> Json:
    return {"match": {"op": "==", "left": left, "right": right}}


def _th(fld: str) -> Json:
    return {"payload": {"protocol": "th", "field": fld}}


def _proto(value: Any) -> int | None:
    text = str(value if value is not None else "any").strip().lower()
    if text in ("", "any"):
        return None
    if text.isdigit():
        if int(text) > 255:
            raise NoMatch  # no packet has such a protocol
        return int(text)
    names = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "icmp6": 58, "ipv6-icmp": 58,
             "sctp": 132}
    if text not in names:
        raise NoMatch
    return names[text]


def _ports(value: Any) -> list[tuple[int, int]]:
    """Port ranges; [] = any port."""
    if not value:
        return []
    try:
        return port_ranges(value if isinstance(value, list) else [value])
    except ValueError as e:
        raise NoMatch from e  # every range malformed: the rule matches nothing


def _port_set(ranges: list[tuple[int, int]]) -> Any:
    items: list[Any] = [lo if lo == hi else {"range": [lo, hi]} for lo, hi in sorted(ranges)]
    return items[0] if len(items) == 1 else {"set": items}


def _subnet_or_none(s: Mapping[str, Any] | None) -> str | None:
    """A list's malformed prefix holds no address; the others still count."""
    try:
        return _subnet(s)
    except NoMatch:
        return None


def _subnet(s: Mapping[str, Any] | None) -> str | None:
    if not s or s.get("ip_prefix") is None:
        return None
    try:
        return str(_net(f"{s['ip_prefix']}/{s.get('ip_prefix_len', 32)}"))
    except ValueError as e:
        raise NoMatch from e  # a malformed prefix holds no address


def _address(addr: Mapping[str, Any] | None, fld: str, version: int,
             networks: Mapping[str, Sequence[str]]) -> list[Json]:
    """Matches for one ``AddressType`` (every field set must match)."""
    if not addr:
        return []
    out: list[Json] = []
    payload = {"payload": {"protocol": "ip" if version == 4 else "ip6", "field": fld}}

    def prefixes_match(prefixes: Iterable[str]) -> None:
        mine = sorted({p for p in prefixes if _net(p).version == version}, key=_order)
        if not mine:
            raise NoMatch
        items = [_addr(p) for p in mine]
        out.append(_match(payload, items[0] if len(items) == 1 else {"set": items}))

    for prefixes in _address_constraints(addr, networks):
        prefixes_match(prefixes)
    return out


# --- diff --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """Our table as ``nft -j list table`` shows it: chain -> (spec, rule comments)."""

    chains: dict[str, tuple[tuple[object, ...], tuple[str, ...]]]
    sets: dict[str, tuple[object, ...]] = field(default_factory=dict)  # name -> spec


def parse_listing(objects: Iterable[Mapping[str, Any]], table: str) -> Listed:
    chains: dict[str, tuple[tuple[object, ...], list[str]]] = {}
    sets: dict[str, tuple[object, ...]] = {}
    for obj in objects:
        if "set" in obj:
            st = obj["set"]
            if st.get("table") != table or st.get("family") != FAMILY:
                continue
            kind = st.get("type")
            sets[str(st["name"])] = (tuple(kind) if isinstance(kind, list) else (kind,),
                                     tuple(st.get("flags") or ()))
        elif "chain" in obj:
            c = obj["chain"]
            if c.get("table") != table or c.get("family") != FAMILY:
                continue
            spec: tuple[object, ...] = (None, None, None, None)
            if c.get("hook") is not None:
                spec = (c.get("type"), c.get("hook"), c.get("prio"), c.get("policy"))
            chains[str(c["name"])] = (spec, [])
        elif "rule" in obj:
            r = obj["rule"]
            if r.get("table") != table or r.get("family") != FAMILY:
                continue
            entry = chains.get(str(r["chain"]))
            if entry is not None:
                entry[1].append(str(r.get("comment") or ""))
    return Listed({k: (s, tuple(c)) for k, (s, c) in chains.items()}, sets)


def commands(listed: Listed | None, want: Ruleset | None, table: str = DEFAULT_TABLE,
             installed: Mapping[str, Mapping[str, Any]] | None = None) -> list[Json]:
    """The nft commands (one transaction) turning ``listed`` into ``want``; [] when equal.

    ``installed`` holds the elements of each named set as the last transaction left them
    (element key -> element): a set found there changes by the elements that differ; any
    other set is flushed and reloaded (the listing leaves elements out)."""
    tref = {"family": FAMILY, "table": table}
    if want is None:
        return [] if listed is None else [{"delete": {"table": {"family": FAMILY,
                                                                "name": table}}}]
    rebuild = listed is not None and (any(
        c.name in listed.chains and listed.chains[c.name][0] != c.spec() for c in want.chains)
        or any(ns.name in listed.sets and listed.sets[ns.name] != ns.spec()
               for ns in want.sets))
    out: list[Json] = []
    if listed is None or rebuild:
        if rebuild:
            out.append({"delete": {"table": {"family": FAMILY, "name": table}}})
        listed = Listed({})
        out.append({"add": {"table": {"family": FAMILY, "name": table}}})
    for ns in want.sets:  # sets exist before rules use them
        sref = {**tref, "name": ns.name}
        have = (installed or {}).get(ns.name)
        elems = ns.by_key()
        gone: list[Any] = []
        if ns.name not in listed.sets:
            out.append({"add": {"set": {**sref, "type": list(ns.type),
                                        "flags": list(ns.flags)}}})
            adds = list(ns.elements)
        elif have is None:
            out.append({"flush": {"set": sref}})
            adds = list(ns.elements)
        elif have is elems:  # the keys the last plan installed, reused by this one
            adds = []
        else:
            gone = [e for k, e in have.items() if k not in elems]
            adds = [e for k, e in elems.items() if k not in have]
        if gone:
            out.append({"delete": {"element": {**sref, "elem": gone}}})
        if adds:
            out.append({"add": {"element": {**sref, "elem": adds}}})
    refill: list[Chain] = []
    for c in want.chains:  # every chain exists before any rule may jump to it
        if c.name not in listed.chains:
            out.append({"add": {"chain": _chain_obj(tref, c)}})
            refill.append(c)
        elif listed.chains[c.name][1] != c.digests():
            out.append({"flush": {"chain": {**tref, "name": c.name}}})
            refill.append(c)
    for c in refill:
        for expr in c.rules:
            out.append({"add": {"rule": {**tref, "chain": c.name, "expr": list(expr),
                                         "comment": rule_comment(expr)}}})
    wanted = {c.name for c in want.chains}
    for name in sorted(listed.chains):
        if name not in wanted:  # nothing jumps to it any more (its referrers were refilled)
            out.append({"flush": {"chain": {**tref, "name": name}}})
            out.append({"delete": {"chain": {**tref, "name": name}}})
    wanted_sets = {ns.name for ns in want.sets}
    for name in sorted(listed.sets):
        if name not in wanted_sets:  # the rules using it were flushed above
            out.append({"delete": {"set": {**tref, "name": name}}})
    return out


# sets whose elements only admit (SG sets, runs of pass rules) or only deny (runs of deny
# rules): adding to the first or deleting from the second denies nothing new
ALLOW_SET = re.compile(r"^(sg[io][46]|fw[io][46]p\d+|acl[46]p\d+)-")
DENY_SET = re.compile(r"^(fw[io][46]d\d+|acl[46]d\d+)-")
# chains and sets of one port: (sg|fw)-(i|o)-<dev>, sg(i|o)(4|6)-<dev>, fw(i|o)(4|6)(p|d)<n>-<dev>
PORT_SCOPED = re.compile(r"^(?:(?:sg|fw)-[io]-|sg[io][46]-|fw[io][46][pd]\d+-)(.+)$")


def _only_widens(cmds: list[Json]) -> bool:
    """Only elements added to sets that admit or deleted from sets that deny: a flow that
    was admitted still is, so established flows need no re-evaluation."""
    def widens(c: Json) -> bool:
        if "element" in c.get("add", {}):
            return ALLOW_SET.match(str(c["add"]["element"].get("name"))) is not None
        if "element" in c.get("delete", {}):
            return DENY_SET.match(str(c["delete"]["element"].get("name"))) is not None
        return False

    return all(widens(c) for c in cmds)


def _affected(cmds: list[Json]) -> Callable[[Flow], bool] | None:
    """When the commands change set elements only: whether a flow's key falls in an element
    added or deleted (no other flow's verdict can change: every set holds the same for its
    key).  None (every flow may be concerned) when anything else changes."""
    boxes: list[Box] = []
    for c in cmds:
        verb = c.get("add") or c.get("delete") or {}
        if "element" not in verb or len(c) != 1:
            return None
        try:
            boxes += [_listed_box(e) for e in verb["element"].get("elem") or ()]
        except (KeyError, TypeError, ValueError, OSError):
            return None

    def hit(f: Flow) -> bool:
        try:
            src, dst = int(ipaddress.ip_address(f.src)), int(ipaddress.ip_address(f.dst))
        except ValueError:
            return True
        ports = f.proto in PORT_PROTOCOLS  # other protocols: the port fields are not ports
        return any(b[0][0] <= f.proto <= b[0][1] and b[1][0] <= src <= b[1][1]
                   and b[2][0] <= dst <= b[2][1]
                   and (not ports or (b[3][0] <= f.sport <= b[3][1]
                                      and b[4][0] <= f.dport <= b[4][1]))
                   for b in boxes)

    return hit


def _changed_devices(cmds: list[Json]) -> set[str] | None:
    """The port devices whose own chains or sets the commands touch; None when something
    shared changed (a network's ACL, the dispatch, the table): every flow is judged."""
    devices: set[str] = set()
    for c in cmds:
        for verb in c.values():
            for kind in ("chain", "set", "element", "rule"):
                obj = verb.get(kind)
                if obj is None:
                    continue
                name = str(obj.get("chain") if kind == "rule" else obj.get("name"))
                m = PORT_SCOPED.match(name)
                if m is None:
                    return None
                devices.add(m.group(1))
            if "table" in verb:
                return None
    return devices


def _dispatch(rule: Expr) -> tuple[Any, dict[str, Any]] | None:
    """A dispatch rule (one vmap keyed by a device name) as its key and device -> verdict;
    None for any other rule."""
    if len(rule) != 1 or "vmap" not in rule[0]:
        return None
    try:
        vm = rule[0]["vmap"]
        return vm["key"], {str(dev): v for dev, v in vm["data"]["set"]}
    except (KeyError, TypeError, ValueError):
        return None


def _plan_devices(prev: Ruleset, want: Ruleset) -> set[str] | None:
    """The port devices whose flows' verdicts may differ between two plans of our table:
    those whose own chains differ, whose own sets differ other than by widening (elements
    added to a set that admits, deleted from one that denies), or whose entries in a
    dispatch map (the ``zone`` and ``forward`` vmaps) differ.  None when anything shared
    differs (a network's ACL or zone, any other rule): every flow is judged.

    A port that joins a node therefore has only its own flows judged, though the dispatch
    maps changed and its group's other members admit one more address."""
    if prev.zones != want.zones:
        return None
    devices: set[str] = set()
    old, new = {c.name: c for c in prev.chains}, {c.name: c for c in want.chains}
    for name in old.keys() | new.keys():
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        m = PORT_SCOPED.match(name)
        if m is not None:
            devices.add(m.group(1))
            continue
        if a is None or b is None or a.spec() != b.spec() or len(a.rules) != len(b.rules):
            return None
        for ra, rb in zip(a.rules, b.rules, strict=True):
            if ra == rb:
                continue
            da, db = _dispatch(ra), _dispatch(rb)
            if da is None or db is None or da[0] != db[0]:
                return None
            devices |= {d for d in da[1].keys() | db[1].keys() if da[1].get(d) != db[1].get(d)}
    olds, news = {x.name: x for x in prev.sets}, {x.name: x for x in want.sets}
    for name in olds.keys() | news.keys():
        sa, sb = olds.get(name), news.get(name)
        if sa is not None and sb is not None and sa.spec() == sb.spec():
            have, will = sa.by_key().keys(), sb.by_key().keys()
            if have == will:
                continue
            if ALLOW_SET.match(name) and have <= will:
                continue  # admits more: no admitted flow is denied now
            if DENY_SET.match(name) and will <= have:
                continue  # denies less
        m = PORT_SCOPED.match(name)
        if m is None:
            return None
        devices.add(m.group(1))
    return devices


def parse_set_elements(objects: Iterable[Mapping[str, Any]], table: str
                       ) -> dict[str, dict[str, Any]]:
    """Set name -> {element key: element} from a full ``nft -j list table``, elements
    rewritten in the planner's form (``nft`` prints protocols by name)."""
    out: dict[str, dict[str, Any]] = {}
    for obj in objects:
        st = obj.get("set")
        if not isinstance(st, dict) or st.get("table") != table or st.get("family") != FAMILY:
            continue
        kind = st.get("type")
        version = {"ipv4_addr": 4, "ipv6_addr": 6}.get(
            kind[1] if isinstance(kind, list) and len(kind) == 5 else "", 0)
        if not version:
            continue
        try:
            elems = [box_elem(_listed_box(e), version) for e in st.get("elem") or ()]
        except (KeyError, TypeError, ValueError, OSError):
            continue
        out[str(st["name"])] = {elem_key(e): e for e in elems}
    return out


def _listed_box(elem: Any) -> Box:
    parts = elem["concat"]
    if len(parts) != 5:
        raise ValueError(elem)

    def num(v: Any) -> Span:
        if isinstance(v, dict):
            lo, hi = v["range"]
            return num(lo)[0], num(hi)[1]
        if isinstance(v, str) and not v.isdigit():
            return (socket.getprotobyname(v),) * 2
        return int(v), int(v)

    def addr(v: Any) -> Span:
        if isinstance(v, dict) and "prefix" in v:
            return net_span(_net(f"{v['prefix']['addr']}/{v['prefix']['len']}"))
        if isinstance(v, dict):
            lo, hi = v["range"]
            return int(ipaddress.ip_address(lo)), int(ipaddress.ip_address(hi))
        return int(ipaddress.ip_address(v)), int(ipaddress.ip_address(v))

    return (num(parts[0]), addr(parts[1]), addr(parts[2]), num(parts[3]), num(parts[4]))


def _chain_obj(tref: Json, c: Chain) -> Json:
    obj: Json = {**tref, "name": c.name}
    if c.hook is not None:
        obj.update(type="filter", hook=c.hook, prio=c.prio, policy=c.policy)
    return obj


# --- the adapter -------------------------------------------------------------------------------


class NftError(RuntimeError):
    pass


class Nft:
    """libnftables (JSON) in one network namespace: list our table, run one transaction.

    One libnftables context per namespace, made inside it (its netlink socket stays there:
    ``nftlib.py``), reused by every call under a lock; made again if the namespace behind
    the name changes.  The table is listed only when the namespace's ruleset generation is
    not the one our last transaction left (someone else committed, or we just started):
    otherwise the table is what that transaction made it."""

    def __init__(self, netns: str | None, table: str = DEFAULT_TABLE) -> None:
        self.netns = netns
        self.table = table
        self.last_reevaluated: list[Flow] = []  # conntrack entries the last change deleted
        # elements of each named set as our last transaction left them (key -> element)
        self._installed: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()  # the agent applies from a worker thread
        self._ns_id: tuple[int, int] | None = None
        self._ctx: Any = None  # nftlib.Nftables, made inside the namespace
        self._gen: Any = None  # nftlib.Generation, a socket in the namespace
        self._ct: CtNetlink | None = None  # conntrack of the namespace, kept open
        # our table as our last transaction left it, and the generation it left
        self._known: tuple[Listed | None, int] | None = None
        self._last: Ruleset | None = None  # the plan our last transaction applied

    def _bound(self) -> None:
        """The context and generation socket of the namespace now behind ``netns`` (the
        conntrack socket is dropped with them)."""
        from tungsten.datapath.linux.netlink import in_netns
        from tungsten.datapath.linux.nftlib import Generation, Nftables, netns_id

        now = netns_id(self.netns)
        if self._ctx is not None and now == self._ns_id:
            return
        self._forget()
        with in_netns(self.netns):
            self._ctx = Nftables()
        self._ns_id = now
        with contextlib.suppress(OSError):  # without it, the table is listed every time
            self._gen = Generation(self.netns)

    def _conntrack(self) -> CtNetlink | None:
        """The namespace's conntrack socket, kept open (made again after it failed); None
        if there is none: ``reeval.py`` then tries its own, and logs that it cannot."""
        if self._ct is not None and self._ct.failed:
            self._ct.close()
            self._ct = None
        if self._ct is None:
            with contextlib.suppress(OSError):
                self._ct = CtNetlink(self.netns)
        return self._ct

    def _forget(self) -> None:
        for sock in (self._gen, self._ct):
            if sock is not None:
                sock.close()
        self._ctx = self._gen = self._ct = self._known = self._last = None
        self._installed = {}

    def close(self) -> None:
        with self._lock:
            self._forget()

    def forget(self) -> None:
        """Take nothing for granted: the next ``converge`` lists the table (a full pass,
        or after a failure left the kernel in doubt)."""
        with self._lock:
            self._known = None

    def _generation(self) -> int | None:
        if self._gen is None:
            return None
        try:
            return int(self._gen())
        except OSError:
            return None

    def _run(self, cmds: list[Json], terse: bool = False) -> tuple[int, Any, str]:
        with self._lock:
            self._bound()
            nft = self._ctx
            nft.set_terse_output(terse)  # terse: named sets listed without their elements
            rc, out, err = nft.json_cmd({"nftables": cmds})
        return int(rc), out, str(err)

    def listed(self) -> Listed | None:
        rc, out, err = self._run([{"list": {"tables": None}}])
        if rc != 0:
            raise NftError(f"nft list tables: {err.strip()}")
        names = {(t["table"]["family"], t["table"]["name"])
                 for t in (out or {}).get("nftables", []) if "table" in t}
        if (FAMILY, self.table) not in names:
            return None
        rc, out, err = self._run([{"list": {"table": {"family": FAMILY, "name": self.table}}}],
                                 terse=True)
        if rc != 0:
            raise NftError(f"nft list table {FAMILY} {self.table}: {err.strip()}")
        return parse_listing((out or {}).get("nftables", []), self.table)

    def listing(self) -> list[Json]:
        """Our table as libnftables lists it (JSON objects, set elements and counters
        included); [] when there is no table."""
        rc, out, _ = self._run([{"list": {"table": {"family": FAMILY, "name": self.table}}}])
        return list((out or {}).get("nftables", [])) if rc == 0 else []

    def installed_sets(self) -> dict[str, dict[str, Any]]:
        """The elements our table's sets hold now, in the planner's form (a restarted agent
        adopts them instead of reloading every set); a set not understood is left out, so
        it is reloaded."""
        return parse_set_elements(self.listing(), self.table)

    def apply(self, cmds: list[Json]) -> None:
        if not cmds:
            return
        rc, _, err = self._run(cmds)
        if rc != 0:
            raise NftError(f"nft transaction failed: {err.strip()}")

    def converge(self, want: Ruleset | None) -> list[Json]:
        """Make our table ``want``; the commands run ([] when it already was).  After a
        change, established flows the new rules deny lose their conntrack entries
        (``reeval.py``), so their next packet meets the gates again."""
        with self._lock:
            return self._converge(want)

    def _converge(self, want: Ruleset | None) -> list[Json]:
        self._bound()
        gen = self._generation()
        # nothing committed since our last transaction: the table is what it left
        known = self._known if self._known is not None and self._known[1] == gen else None
        trusted = known is not None
        listed = known[0] if known is not None else self.listed()
        self._known = None
        if listed is None:
            self._installed = {}
        elif not self._installed and listed.sets:
            self._installed = self.installed_sets()
        # the plan the table holds, when the listing shows it is the last one we applied
        prev = self._last if self._last is not None and (
            trusted or listed == listed_as(self._last)) else None
        self._last = None
        cmds = commands(listed, want, self.table, self._installed)
        retried = False
        try:
            self.apply(cmds)
        except NftError:
            if not self._installed:
                raise
            # an element added inside one the set holds is refused: reload the sets whole
            self._installed = {}
            cmds = commands(listed, want, self.table, None)
            retried = True
            self.apply(cmds)
        self._installed = {ns.name: ns.by_key() for ns in want.sets} if want else {}
        after = self._generation() if gen is not None else None
        if not cmds:
            self._known = (listed, gen) if gen is not None and after == gen else None
        elif not retried and gen is not None and after == gen + 1:
            # exactly one commit since the listing, ours: the table is ``want``
            self._known = (listed_as(want), after)
        self._last = want
        self.last_reevaluated = []
        if cmds and want is not None and want.state is not None and not _only_widens(cmds):
            devices = _changed_devices(cmds)
            if devices is None and prev is not None:
                devices = _plan_devices(prev, want)
            if devices == set():
                return cmds  # only widened: no admitted flow is denied now
            # without conntrack netlink, established flows keep their entries until idle
            with contextlib.suppress(OSError):
                self.last_reevaluated = Conntrack(self.netns, self._conntrack()).reevaluate(
                    want.state, want.zones, devices, _affected(cmds))
        return cmds


def listed_as(want: Ruleset | None) -> Listed | None:
    """What listing our table shows once a transaction made it ``want`` (the chains' specs
    and rule comments, the sets' specs: what ``commands`` compares)."""
    if want is None:
        return None
    return Listed({c.name: (c.spec(), c.digests()) for c in want.chains},
                  {ns.name: ns.spec() for ns in want.sets})
