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
    chain acl-<vni> the network's ACL rules in order (pass: return, deny: drop), then drop

Every packet costs a fixed number of lookups (the vmaps are hash sets keyed by device name)
plus the rules of its own network's ACL only.  A network with an empty ACL has no ``acl-``
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

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tungsten.datapath.base import DatapathState, Vrf

FAMILY = "inet"
DEFAULT_TABLE = "tungsten"
COMMENT_PREFIX = "tg:"
ZONE_MAX = 65535
PORT_PROTOCOLS = (6, 17, 132)  # a rule restricting ports with protocol "any": tcp, udp, sctp

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
        return tuple(rule_comment(r) for r in self.rules)


@dataclass(frozen=True)
class Ruleset:
    table: str
    chains: tuple[Chain, ...]
    zones: Mapping[int, int] = field(default_factory=dict)  # vni -> conntrack zone

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
            device_of: Mapping[int, str] | None = None) -> Ruleset | None:
    """The table ``state`` needs (None: no network on this node, no table).

    ``device_of`` maps a VNI to the network's VXLAN device name on this node.
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
    for v in vrfs:
        view = vrf_view(state, v)
        zchain = f"z-{v.vni}"
        chains.append(Chain(zchain, _zone_rules(zones[v.vni], view, zones)))
        devs = list(ports_of.get(v.network, ()))
        if device_of is not None and v.vni in device_of:
            devs.append(device_of[v.vni])
        zone_dispatch += [(d, zchain) for d in devs]
        if v.acl:
            achain = f"acl-{v.vni}"
            resolve = {v.name: view.own}
            for other, prefixes in view.leaked.items():
                if other in names:
                    resolve[names[other]] = prefixes
            chains.append(Chain(achain, acl_rules(v.acl, resolve)))
            acl_dispatch += [(d, achain) for d in ports_of.get(v.network, ())]

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
    chains.append(Chain("zone", tuple(zone), hook="prerouting", prio=-300))
    chains.append(Chain("forward", tuple(fwd), hook="forward", prio=0))
    return Ruleset(table, tuple(chains), zones)


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


def acl_rules(acl: Iterable[Mapping[str, Any]],
              networks: Mapping[str, Sequence[str]]) -> tuple[Expr, ...]:
    """A network's ACL as nft rules, in order, ending with a drop (a non-empty ACL that
    matches nothing denies).  ``networks`` resolves a network fq name to its prefixes as the
    network's VRF sees them; a name it does not hold matches nothing."""
    out: list[Expr] = []
    for rule in acl:
        out.extend(rule_exprs(rule, networks))
    out.append(({"drop": None},))
    return tuple(out)


def rule_exprs(rule: Mapping[str, Any], networks: Mapping[str, Sequence[str]]
               ) -> list[Expr]:
    """One ``AclRuleType`` as nft rules (one per address family it can match; none if it
    can never match)."""
    mc = rule.get("match_condition") or {}
    action = (rule.get("action_list") or {}).get("simple_action", "pass")
    verdict: Json = {"drop": None} if action == "deny" else {"return": None}
    ethertype = mc.get("ethertype")
    families = {"IPv4": (4,), "IPv6": (6,)}.get(str(ethertype), (4, 6))
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
            out.append((*exprs, verdict))
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
    ranges = value if isinstance(value, list) else [value]
    out: list[tuple[int, int]] = []
    for r in ranges:
        if not r:
            return []
        lo, hi = int(r.get("start_port", -1)), int(r.get("end_port", -1))
        if lo == -1:
            return []
        out.append((lo, lo if hi == -1 else hi))
    return out


def _port_set(ranges: list[tuple[int, int]]) -> Any:
    items: list[Any] = [lo if lo == hi else {"range": [lo, hi]} for lo, hi in sorted(ranges)]
    return items[0] if len(items) == 1 else {"set": items}


def _subnet(s: Mapping[str, Any] | None) -> str | None:
    if not s or s.get("ip_prefix") is None:
        return None
    return str(_net(f"{s['ip_prefix']}/{s.get('ip_prefix_len', 32)}"))


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

    vn = addr.get("virtual_network")
    if vn not in (None, "", "any"):
        prefixes_match(networks.get(str(vn), ()))
    sub = _subnet(addr.get("subnet"))
    if sub is not None:
        prefixes_match([sub])
    if addr.get("subnet_list"):
        prefixes_match([s for s in map(_subnet, addr["subnet_list"]) if s])
    sg = addr.get("security_group")
    if sg not in (None, "", "any", "local"):
        raise NoMatch  # security groups in a network ACL: not resolved here
    if addr.get("network_policy"):
        raise NoMatch  # unexpanded policy references match nothing (as in sim)
    return out


# --- diff --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """Our table as ``nft -j list table`` shows it: chain -> (spec, rule comments)."""

    chains: dict[str, tuple[tuple[object, ...], tuple[str, ...]]]


def parse_listing(objects: Iterable[Mapping[str, Any]], table: str) -> Listed:
    chains: dict[str, tuple[tuple[object, ...], list[str]]] = {}
    for obj in objects:
        if "chain" in obj:
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
    return Listed({k: (s, tuple(c)) for k, (s, c) in chains.items()})


def commands(listed: Listed | None, want: Ruleset | None, table: str = DEFAULT_TABLE
             ) -> list[Json]:
    """The nft commands (one transaction) turning ``listed`` into ``want``; [] when equal."""
    tref = {"family": FAMILY, "table": table}
    if want is None:
        return [] if listed is None else [{"delete": {"table": {"family": FAMILY,
                                                                "name": table}}}]
    rebuild = listed is not None and any(
        c.name in listed.chains and listed.chains[c.name][0] != c.spec() for c in want.chains)
    out: list[Json] = []
    if listed is None or rebuild:
        if rebuild:
            out.append({"delete": {"table": {"family": FAMILY, "name": table}}})
        listed = Listed({})
        out.append({"add": {"table": {"family": FAMILY, "name": table}}})
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
    return out


def _chain_obj(tref: Json, c: Chain) -> Json:
    obj: Json = {**tref, "name": c.name}
    if c.hook is not None:
        obj.update(type="filter", hook=c.hook, prio=c.prio, policy=c.policy)
    return obj


# --- the adapter -------------------------------------------------------------------------------


class NftError(RuntimeError):
    pass


class Nft:
    """libnftables (JSON) in one network namespace: list our table, run one transaction."""

    def __init__(self, netns: str | None, table: str = DEFAULT_TABLE) -> None:
        self.netns = netns
        self.table = table

    def _run(self, cmds: list[Json]) -> tuple[int, Any, str]:
        from tungsten.datapath.linux.netlink import in_netns
        from tungsten.datapath.linux.nftlib import Nftables

        # a fresh context per call, made inside the namespace: its netlink socket is there
        with in_netns(self.netns):
            nft = Nftables()
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
        rc, out, err = self._run([{"list": {"table": {"family": FAMILY, "name": self.table}}}])
        if rc != 0:
            raise NftError(f"nft list table {FAMILY} {self.table}: {err.strip()}")
        return parse_listing((out or {}).get("nftables", []), self.table)

    def apply(self, cmds: list[Json]) -> None:
        if not cmds:
            return
        rc, _, err = self._run(cmds)
        if rc != 0:
            raise NftError(f"nft transaction failed: {err.strip()}")

    def converge(self, want: Ruleset | None) -> list[Json]:
        """Make our table ``want``; the commands run ([] when it already was)."""
        cmds = commands(self.listed(), want, self.table)
        self.apply(cmds)
        return cmds
