"""Security groups and firewall policies as nftables chains (pure planning; ``acl.py`` puts
them in the node's table).  The semantics are those of ``tungsten.security.verdict``.

**Security groups** are allow-only and unordered, so each direction of a port is one set
lookup: the rules of the port's groups are compiled into a named interval set per address
family, keyed by the concatenation ``l4proto . saddr . daddr . sport . dport``::

    chain sg-o-<dev>   (iifname vmap {dev: jump sg-o-<dev>}: the port sends)
        meta nfproto ipv4 meta l4proto . ip saddr . ip daddr . th sport . th dport
            @sgo4-<dev> return
        (the same for ipv6, @sgo6-<dev>)
        drop
    chain sg-i-<dev>   (oifname vmap ...: the port receives), sets sgi4-/sgi6-<dev>

The per-packet cost is one lookup whatever the number of rules, groups or members.  A rule
naming a remote group expands to the host addresses of its members as this node's VRF knows
them (the SG ids carried by routes); a remote CIDR is one element; elements are made
disjoint (``ordered.disjoint``: the kernel refuses overlapping ones).  A change of rules or
members changes set elements only: ``acl.py`` adds and deletes just those (falling back to
reloading the set), so enforcing it does not cost a reload of every rule.

**Firewall** rules are ordered (first match wins, deny or pass), so each port gets a chain of
its rule list, ``fw-o-<port>`` (the port sends) and ``fw-i-<port>`` (it receives), compiled
by ``ordered.py`` into one set lookup per run of rules with the same action (sets
``fwo4p0-<port>``, ``fwo4d1-<port>``, ...), ending in drop.  Tag expressions and
``match_tags`` on the local end are decided here, at compile time; the remote end becomes
the addresses whose routes carry matching tags, an address group's prefixes or a network's
prefixes, as set elements.  The cost of a packet grows with the number of action changes
along its port's list, not with the rules, tag memberships or address groups.  A logged rule
stays an nft rule of its own (``flowlog.py``).

**Planning on updates.**  The agent plans from its whole state on every apply; SG sets and
firewall chains are memoised (``SecurityPlans``) under the content of exactly what they are
computed from (a group's rules, the members and networks those rules name; the port, its
firewall rules and what they read of the VRF), so an apply re-plans what a change reaches
and reuses the rest, objects included (``ordered.Elements``: compared in O(1) when reused).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tungsten.datapath.base import DatapathState, LocalPort, Vrf
from tungsten.datapath.linux.flowlog import log_statements
from tungsten.datapath.linux.ordered import (
    ALL_ADDRS,
    SET_TYPES,
    Box,
    Elements,
    Joined,
    Memo,
    SetSpec,
    Span,
    Step,
    box_elem,
    compile_ordered,
    disjoint,
    disjoint_update,
    elements,
    merge,
    minus,
    net_span,
)
from tungsten.security.verdict import (
    PORT_PROTOCOLS,
    Endpoint,
    endpoint_matches,
    firewall_rules,
    port_ranges,
    proto_number,
    rule_parts,
    services,
    subnet_prefix,
    tags_of_type,
)

Json = dict[str, Any]
Expr = tuple[Json, ...]
Net = ipaddress.IPv4Network | ipaddress.IPv6Network
FAMILIES = {4: ("ipv4", "ip", "0.0.0.0/0"), 6: ("ipv6", "ip6", "::/0")}
ANY_PROTO: Any = {"range": [0, 255]}
ANY_PORT: Any = {"range": [0, 65535]}


class NoMatch(Exception):
    """This part of a rule can never match: it is left out."""


@functools.lru_cache(maxsize=1 << 16)  # the same prefixes recur in every plan
def _net(prefix: str) -> Net:
    return ipaddress.ip_network(prefix, strict=False)


def _nets(prefixes: Iterable[str | None]) -> list[Net]:
    """The valid prefixes among ``prefixes`` (a malformed one holds no address, as in the
    evaluation core)."""
    out: list[Net] = []
    for p in prefixes:
        if not p:
            continue
        try:
            out.append(_net(p))
        except ValueError:
            continue
    return out


def _elem_addr(n: Net) -> Any:
    if n.prefixlen == n.max_prefixlen:
        return str(n.network_address)
    return {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}


def _port_elems(ranges: list[tuple[int, int]]) -> list[Any]:
    if not ranges:
        return [ANY_PORT]
    return [lo if lo == hi else {"range": [lo, hi]} for lo, hi in sorted(set(ranges))]


def _proto_ports(proto: int | None, sports: list[tuple[int, int]],
                 dports: list[tuple[int, int]]) -> list[tuple[Any, Any, Any]]:
    """(l4proto, sport, dport) elements with the core's port semantics: ports constrain only
    TCP/UDP/SCTP; 'any' protocol with ports means those three."""
    if proto is not None and not 0 <= proto <= 255:
        return []  # no packet has such a protocol
    if proto is not None and proto not in PORT_PROTOCOLS:
        return [(proto, ANY_PORT, ANY_PORT)]
    if not sports and not dports:
        return [(ANY_PROTO if proto is None else proto, ANY_PORT, ANY_PORT)]
    protos: Sequence[int] = PORT_PROTOCOLS if proto is None else (proto,)
    return [(p, s, d) for p in protos for s in _port_elems(sports) for d in _port_elems(dports)]


def _intersect(a: list[Net], b: list[Net]) -> list[Net]:
    out: set[Net] = set()
    for x in a:
        for y in b:
            if x.version != y.version:
                continue
            if x.subnet_of(y):  # type: ignore[arg-type]
                out.add(x)
            elif y.subnet_of(x):  # type: ignore[arg-type]
                out.add(y)
    return sorted(out, key=lambda n: (n.version, int(n.network_address), n.prefixlen))


class VrfAddresses:
    """What one VRF on this node knows of addresses: networks' prefixes (as the ACLs resolve
    them), and the host addresses behind each SG id and tag."""

    def __init__(self, vrf: Vrf, networks: Mapping[str, Sequence[str]]) -> None:
        self.vrf = vrf
        self.networks = networks

    @functools.cached_property
    def _members(self) -> dict[int, tuple[str, ...]]:
        found: dict[int, set[str]] = {}
        for p, info in self.vrf.endpoints.items():
            for sg in info.sgs:
                found.setdefault(sg, set()).add(p)
        return {sg: tuple(sorted(ps)) for sg, ps in found.items()}

    def members_of(self, sg: int) -> tuple[str, ...]:
        """The prefixes of the endpoints in group ``sg`` (sorted: part of memo keys)."""
        return self._members.get(sg, ())

    def sg_members(self, sg: int) -> list[Net]:
        return [_net(p) for p in self.members_of(sg)]

    def tagged(self, want: Iterable[int]) -> list[Net]:
        w = set(want)
        return [_net(p) for p, info in self.vrf.endpoints.items() if w <= set(info.tags)]

    def tagged_key(self, want: tuple[int, ...]) -> tuple[str, ...]:
        """The prefixes ``tagged(want)`` reads (part of memo keys; once per plan)."""
        found = self._tagged.get(want)
        if found is None:
            w = set(want)
            found = self._tagged[want] = tuple(sorted(
                p for p, info in self.vrf.endpoints.items() if w <= set(info.tags)))
        return found

    @functools.cached_property
    def _tagged(self) -> dict[tuple[int, ...], tuple[str, ...]]:
        return {}

    @functools.cached_property
    def hosts_key(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """What ``hosts()`` reads (part of memo keys)."""
        return tuple(sorted((p, tuple(sorted(set(i.tags))))
                            for p, i in self.vrf.endpoints.items()))

    def network(self, name: str) -> list[Net]:
        return [_net(p) for p in self.networks.get(name, ())]

    def hosts(self) -> list[tuple[Net, frozenset[int]]]:
        return [(_net(p), frozenset(i.tags)) for p, i in self.vrf.endpoints.items()]


ALL: list[Net] = [_net("0.0.0.0/0"), _net("::/0")]


def acl_address(addr: Mapping[str, Any] | None, where: VrfAddresses) -> list[Net]:
    """The prefixes an ``AddressType`` matches (every field set must match)."""
    out = list(ALL)
    if not addr:
        return out
    vn = addr.get("virtual_network")
    if vn not in (None, "", "any"):
        out = _intersect(out, where.network(str(vn)))
    if addr.get("subnet"):
        out = _intersect(out, _nets([subnet_prefix(addr["subnet"])]))
    if addr.get("subnet_list"):
        out = _intersect(out, _nets(subnet_prefix(s) for s in addr["subnet_list"]))
    sg = addr.get("security_group")
    if sg not in (None, "", "any", "local"):
        try:
            out = _intersect(out, where.sg_members(int(sg)))
        except ValueError:
            return []
    if addr.get("network_policy"):
        return []
    return out


# --- security groups -------------------------------------------------------------------------


def sg_elements(port: LocalPort, direction: str, groups: Mapping[int, Mapping[str, Any]],
                where: VrfAddresses) -> dict[int, list[Json]]:
    """Set elements (per IP version) allowing what the port's groups allow in ``direction``
    ("ingress": the port receives; "egress": it sends), planned from scratch: the reference
    ``SecurityPlans`` must agree with."""
    boxes: dict[int, set[Box]] = {4: set(), 6: set()}
    for sg_id in port.sgs:
        for rule in (groups.get(sg_id) or {}).get(direction, ()):
            for version, b in _rule_boxes(rule, where):
                boxes[version].add(b)
    return {v: [box_elem(b, v) for b in disjoint(bs)] for v, bs in boxes.items()}


def _rule_boxes(rule: Mapping[str, Any], where: VrfAddresses) -> tuple[tuple[int, Box], ...]:
    """What one SG rule allows, as (IP version, box); it depends on ``where`` only through
    ``_rule_refs``."""
    if str((rule.get("action_list") or {}).get("simple_action") or "pass") == "deny":
        return ()
    rproto, saddrs, sports, daddrs, dports, ethertype = rule_parts(rule)
    try:
        proto = proto_number(rproto)
        sr, dr = port_ranges(sports), port_ranges(dports)
    except ValueError:
        return ()  # matches nothing, as in the evaluation core
    versions = ({"IPv4": (4,), "IPv6": (6,)}.get(str(ethertype), ()) if ethertype
                else (4, 6))
    srcs = [n for a in saddrs for n in acl_address(a, where)]
    dsts = [n for a in daddrs for n in acl_address(a, where)]
    ways = [(srcs, dsts, sr, dr)]
    if rule.get("direction") == "<>":
        ways.append((dsts, srcs, dr, sr))
    out: set[tuple[int, Box]] = set()
    for s_nets, d_nets, s_r, d_r in ways:
        for p, sp, dp in _proto_ports(proto, s_r, d_r):
            for s in s_nets:
                for d in d_nets:
                    if s.version != d.version or s.version not in versions:
                        continue
                    out.add((s.version, (_span(p), _net_span(s), _net_span(d), _span(sp),
                                         _span(dp))))
    return tuple(sorted(out))  # a tuple of ints only: the collector stops tracking it


Refs = tuple[tuple[int, ...], tuple[str, ...]]  # (remote SG ids, network names) a rule reads


def _rule_refs(rule: Mapping[str, Any]) -> Refs:
    """What of the VRF's addresses ``_rule_boxes`` reads for ``rule`` (``acl_address``)."""
    _, saddrs, _, daddrs, _, _ = rule_parts(rule)
    sgs: set[int] = set()
    vns: set[str] = set()
    for addr in (*saddrs, *daddrs):
        if not isinstance(addr, Mapping):
            continue
        vn = addr.get("virtual_network")
        if vn not in (None, "", "any"):
            vns.add(str(vn))
        sg = addr.get("security_group")
        if sg not in (None, "", "any", "local"):
            try:
                sgs.add(int(sg))
            except (TypeError, ValueError):
                continue
    return tuple(sorted(sgs)), tuple(sorted(vns))


def _group_refs(rules: Iterable[Mapping[str, Any]]) -> list[Refs]:
    return [_rule_refs(r) for r in rules]


def content_digest(value: Any) -> bytes:
    """A digest of a JSON-like value's content (a memo key): equal content, equal digest,
    whatever the objects' identity (states are rebuilt on every apply)."""
    try:
        data = b"j" + orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON (a test's odd value): its repr still names the content
        data = b"r" + repr(value).encode()
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(frozen=True)
class _Group:
    """A group's rules in one direction as the memo sees them: each rule's digest and what
    it reads, and the union of what they read."""

    rules: tuple[tuple[bytes, Refs], ...]
    sgs: frozenset[int]
    vns: frozenset[str]


class SecurityPlans:
    """What security-group planning memoises across applies, keyed by the content planned
    from (never by identity, so an entry cannot go stale; shared by agents of one process,
    it is only shared work).  A port's sets in one direction depend on the rules of its
    groups in that direction, the members of the remote groups those rules name and the
    prefixes of the networks they name (not on the port's own addresses: its end is
    ``local``).  So:

    - ``sets``: (direction, digests of its groups' rules, what those rules read) -> the
      elements per IP version, shared by every port with the same groups: an apply where
      none of that changed costs one digest per group and direction;
    - ``groups``: a group's digest -> its rules' digests and what each reads;
    - ``rules``: (a rule's digest, what it reads) -> its boxes: a changed group compiles
      only its changed rules (and those naming a group whose members changed);
    - ``joined``: the last disjoint boxes of each (direction, groups): when few boxes come
      or go and none overlaps another, the new disjoint boxes are the old ones plus or
      minus those (``ordered.disjoint_update``, checked against the content);
    - ``fw_refs``, ``steps``, ``chains``: the same for firewall rules (``fw_chain``).

    ``size=0`` plans from scratch (the reference the memo must agree with)."""

    def __init__(self, size: int = 1024, rules: int = 1 << 17) -> None:
        self.sets = Memo(size)
        self.groups = Memo(size)
        self.rules = Memo(rules if size > 0 else 0)
        self.refs = Memo(rules if size > 0 else 0)  # a rule's digest -> what it reads
        self.joined = Memo(size)
        # firewall: a rule's digest -> what it reads; (rule, context) -> Step; chains
        self.fw_refs = Memo(rules if size > 0 else 0)
        self.fw_lists = Memo(size)  # (firewall digest, port tags) -> what its rules read
        self.steps = Memo(1 << 16 if size > 0 else 0)
        self.chains = Memo(size)

    def port_sets(self, port: LocalPort, direction: str, digests: Mapping[int, bytes],
                  groups: Mapping[int, Mapping[str, Any]], where: VrfAddresses
                  ) -> dict[int, Elements]:
        """The elements per IP version of the port's sets in ``direction``; ``digests``:
        group id -> digest of its rules in that direction (computed once per apply)."""
        sg_ids = tuple(sorted(set(port.sgs)))
        keys = tuple(digests[g] for g in sg_ids)
        infos: list[_Group] = [self.groups.get(d, functools.partial(
            self._group, _rules(groups, g, direction))) for g, d in zip(sg_ids, keys,
                                                                        strict=True)]
        sgs = frozenset().union(*(i.sgs for i in infos))
        vns = frozenset().union(*(i.vns for i in infos))
        read = (tuple((g, where.members_of(g)) for g in sorted(sgs)),
                tuple((n, tuple(where.networks.get(n, ()))) for n in sorted(vns)))
        made: dict[int, Elements] = self.sets.get((direction, keys, read), functools.partial(
            self._plan, sg_ids, infos, direction, groups, where))
        return made

    def _group(self, rules: Sequence[Mapping[str, Any]]) -> _Group:
        out: list[tuple[bytes, Refs]] = []
        for rule in rules:
            d = content_digest(rule)
            refs: Refs = self.refs.get(d, functools.partial(_rule_refs, rule))
            out.append((d, refs))
        return _Group(tuple(out), frozenset(g for _, (rs, _) in out for g in rs),
                      frozenset(n for _, (_, ns) in out for n in ns))

    def _plan(self, sg_ids: tuple[int, ...], infos: Sequence[_Group], direction: str,
              groups: Mapping[int, Mapping[str, Any]], where: VrfAddresses
              ) -> dict[int, Elements]:
        boxes: dict[int, set[Box]] = {4: set(), 6: set()}
        for g, info in zip(sg_ids, infos, strict=True):
            for rule, (d, (rs, ns)) in zip(_rules(groups, g, direction), info.rules,
                                           strict=True):
                key = (d, tuple((x, where.members_of(x)) for x in rs),
                       tuple((n, tuple(where.networks.get(n, ()))) for n in ns))
                made: tuple[tuple[int, Box], ...] = self.rules.get(
                    key, functools.partial(_rule_boxes, rule, where))
                for version, b in made:
                    boxes[version].add(b)
        out: dict[int, Elements] = {}
        for version, bs in boxes.items():
            last: Joined | None = self.joined.peek((direction, sg_ids, version))
            joined = disjoint_update(last, frozenset(bs))
            self.joined.put((direction, sg_ids, version), joined)
            out[version] = elements(joined[1], version)
        return out


def _rules(groups: Mapping[int, Mapping[str, Any]], sg: int, direction: str
           ) -> Sequence[Mapping[str, Any]]:
    return (groups.get(sg) or {}).get(direction) or ()


PLANS = SecurityPlans()  # the default memo (content-keyed: see SecurityPlans)


def _span(e: Any) -> Span:
    if isinstance(e, dict):
        lo, hi = e["range"]
        return int(lo), int(hi)
    return int(e), int(e)


def _net_span(n: Net) -> Span:
    return int(n.network_address), int(n.broadcast_address)


def sg_set_name(direction: str, version: int, dev: str) -> str:
    """The named set of a port's allowed keys: ``sgi4-<dev>`` (it receives), ``sgo6-...``."""
    return f"sg{'i' if direction == 'ingress' else 'o'}{version}-{dev}"


@functools.lru_cache(maxsize=1 << 12)  # the same for a port on every apply
def sg_chain_rules(direction: str, dev: str) -> tuple[Expr, ...]:
    """``return`` when the packet's key is in the port's set of its family; else drop."""
    rules: list[Expr] = []
    for version in (4, 6):
        nfproto, proto, _ = FAMILIES[version]
        key = {"concat": [{"meta": {"key": "l4proto"}},
                          {"payload": {"protocol": proto, "field": "saddr"}},
                          {"payload": {"protocol": proto, "field": "daddr"}},
                          {"payload": {"protocol": "th", "field": "sport"}},
                          {"payload": {"protocol": "th", "field": "dport"}}]}
        rules.append((_match({"meta": {"key": "nfproto"}}, nfproto),
                      _match(key, f"@{sg_set_name(direction, version, dev)}"),
                      {"return": None}))
    rules.append(({"drop": None},))
    return tuple(rules)


# --- firewall ----------------------------------------------------------------------------------


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _collapse(nets: Iterable[Net]) -> list[Net]:
    """Overlapping prefixes merged: the kernel refuses an interval inside another."""
    unique = set(nets)
    v4 = [n for n in unique if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in unique if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def _addr_match(field: str, version: int, nets: list[Net], op: str = "==") -> Json:
    proto = FAMILIES[version][1]
    items = [_elem_addr(n) for n in _collapse(nets)]
    return _match({"payload": {"protocol": proto, "field": field}},
                  items[0] if len(items) == 1 else {"set": items}, op)


def _remote_nets(spec: Mapping[str, Any] | None, where: VrfAddresses) -> list[Net] | None:
    """The addresses a firewall endpoint matches on the remote end (None: any)."""
    if not spec or spec.get("any"):
        return None
    if spec.get("tags") or spec.get("tag_ids"):
        ids = [int(t) for t in spec.get("tag_ids") or ()]
        return where.tagged(ids) if ids else []
    if spec.get("address_group"):
        return _nets(spec.get("address_group_prefixes") or ())
    if spec.get("virtual_network"):
        return where.network(str(spec["virtual_network"]))
    if spec.get("subnet"):
        return _nets([subnet_prefix(spec["subnet"])])
    return None


@functools.lru_cache(maxsize=1 << 12)
def _addresses(ips: tuple[str, ...]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(ip) for ip in ips]


def _local_ips(spec: Mapping[str, Any] | None, port: LocalPort, vrf: Vrf) -> list[Net] | None:
    """The port's addresses a firewall endpoint matches on the local end (None: all)."""
    if not spec or spec.get("any"):
        return None  # matches any address (the common case: skip the per-address test)
    ips = _addresses(port.ips)
    ok = [ip for ip in ips if endpoint_matches(spec, Endpoint(ip, 0, vrf.name, port.sgs,
                                                              port.tags))]
    if len(ok) == len(ips):
        return None
    return [_net(str(ip)) for ip in ok]


def fw_chain(port: LocalPort, vrf: Vrf, sending: bool,
             firewall: Mapping[str, Mapping[str, Any]], where: VrfAddresses,
             plans: SecurityPlans | None = None, digests: Digests | None = None,
             firewall_digest: bytes | None = None
             ) -> tuple[tuple[Expr, ...], list[SetSpec]] | None:
    """The chain of the port's firewall rules and its sets (None: no rules, the port is
    unfiltered): the ordered list compiled into one set lookup per run of rules with the
    same action (``ordered.py``); a logged rule stays an nft rule of its own.

    A rule compiles in a context: the local port and, of what the VRF knows of addresses,
    only what the rule reads (``_fw_refs``: tagged addresses, networks, every host's tags
    for ``match_tag_types``).  Whole chains are memoised in ``plans`` under the firewall's
    digest (``firewall_digest``: once per plan), the port and what its rules read, and
    steps under their rule's digest and context, so an apply that changes nothing a
    port's rules read reuses its chain, and a changed rule compiles only itself."""
    plans = PLANS if plans is None else plans
    ident = Digests() if digests is None else digests
    rules = firewall_rules(firewall, port.tags)
    if not rules:
        return None
    whole = content_digest(firewall) if firewall_digest is None else firewall_digest
    tags, vns, hosts = plans.fw_lists.get((whole, port.tags), functools.partial(
        _fw_list_refs, rules, ident, plans))
    read = (tuple((t, where.tagged_key(t)) for t in tags),
            tuple((n, tuple(where.networks.get(n, ()))) for n in vns),
            where.hosts_key if hosts else ())
    ctx = (port.ips, port.tags, port.sgs, vrf.name, sending)
    short = "o" if sending else "i"

    def name(accept: bool, run: int, version: int) -> str:
        return f"fw{short}{version}{'p' if accept else 'd'}{run}-{port.ifname}"

    def step(rule: Mapping[str, Any]) -> Step:
        d = ident(rule)
        r_tags, r_vns, r_hosts = plans.fw_refs.get(d, functools.partial(_fw_refs, rule))
        key = (d, ctx, tuple((t, where.tagged_key(t)) for t in r_tags),
               tuple((n, tuple(where.networks.get(n, ()))) for n in r_vns),
               where.hosts_key if r_hosts else ())
        made: Step = plans.steps.get(key, functools.partial(_fw_step, rule, port, vrf,
                                                             sending, where, key))
        return made

    def compile_chain() -> tuple[tuple[Expr, ...], list[SetSpec]]:
        return compile_ordered([step(rule) for rule in rules], name)

    chain: tuple[tuple[Expr, ...], list[SetSpec]] = plans.chains.get(
        (port.ifname, whole, ctx, read), compile_chain)
    return chain


def _fw_list_refs(rules: Sequence[Mapping[str, Any]], ident: Digests, plans: SecurityPlans
                  ) -> FwRefs:
    tags: set[tuple[int, ...]] = set()
    vns: set[str] = set()
    hosts = False
    for rule in rules:
        r_tags, r_vns, r_hosts = plans.fw_refs.get(ident(rule),
                                                   functools.partial(_fw_refs, rule))
        tags.update(r_tags)
        vns.update(r_vns)
        hosts = hosts or r_hosts
    return tuple(sorted(tags)), tuple(sorted(vns)), hosts


FwRefs = tuple[tuple[tuple[int, ...], ...], tuple[str, ...], bool]


def _fw_refs(rule: Mapping[str, Any]) -> FwRefs:
    """What of the VRF's addresses a firewall rule reads, whichever end is remote: the
    addresses carrying each endpoint's tags, the networks named, and (``match_tag_types``)
    every host's tags."""
    tags: set[tuple[int, ...]] = set()
    vns: set[str] = set()
    for spec in (rule.get("endpoint_1"), rule.get("endpoint_2")):
        if not isinstance(spec, Mapping):
            continue
        ids = spec.get("tag_ids")
        if ids:
            with contextlib.suppress(TypeError, ValueError):  # matches nothing: no input
                tags.add(tuple(int(t) for t in ids))
        if spec.get("virtual_network"):
            vns.add(str(spec["virtual_network"]))
    return tuple(sorted(tags)), tuple(sorted(vns)), bool(rule.get("match_tag_types"))


class Digests:
    """Content digests of one plan's rules, each computed once however many ports and
    directions compile it (the rules are the state's own objects, alive for the plan)."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, bytes]] = {}

    def __call__(self, value: Any) -> bytes:
        hit = self._by_id.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        d = content_digest(value)
        self._by_id[id(value)] = (value, d)
        return d


def _fw_pairs(rule: Mapping[str, Any], sending: bool
              ) -> list[tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]]:
    """(local endpoint spec, remote endpoint spec) as the packet flows."""
    direction = str(rule.get("direction") or "<>")
    e1, e2 = rule.get("endpoint_1"), rule.get("endpoint_2")
    pairs = []
    if direction in (">", "<>"):
        pairs.append((e1, e2) if sending else (e2, e1))
    if direction in ("<", "<>"):
        pairs.append((e2, e1) if sending else (e1, e2))
    return pairs


def _fw_step(rule: Mapping[str, Any], port: LocalPort, vrf: Vrf, sending: bool,
             where: VrfAddresses, key: Any = None) -> Step:
    action = str((rule.get("action_list") or {}).get("simple_action") or "pass")
    accept = action != "deny"
    if (rule.get("action_list") or {}).get("log"):
        return Step(accept, None, _fw_logged_rules(rule, action, port, vrf, sending, where))
    boxes: dict[int, list[Box]] = {4: [], 6: []}
    for local, remote in _fw_pairs(rule, sending):
        try:
            ends = _endpoint_spans(rule, port, vrf, local, remote, where)
        except (NoMatch, TypeError, ValueError, AttributeError):
            continue  # malformed parts match nothing, as in the evaluation core
        for svc in services(rule):
            try:
                triples = _service_triples(svc)
            except (NoMatch, TypeError, ValueError, AttributeError):
                continue
            for version, loc, rem in ends:
                full = [ALL_ADDRS[version]]
                mine, theirs = loc or full, rem or full
                srcs, dsts = (mine, theirs) if sending else (theirs, mine)
                boxes[version] += [(p, s, d, sp, dp) for p, sp, dp in triples
                                   for s in srcs for d in dsts]
    return Step(accept, boxes, key=key)


def _fw_logged_rules(rule: Mapping[str, Any], action: str, port: LocalPort, vrf: Vrf,
                     sending: bool, where: VrfAddresses) -> tuple[Expr, ...]:
    """A logged rule as nft rules: one per (service, direction, family), each with the
    log statements before its verdict."""
    verdict: Json = {"drop": None} if action == "deny" else {"return": None}
    logging = log_statements(str(rule.get("uuid") or rule.get("name") or ""), action)
    local_f, remote_f = ("saddr", "daddr") if sending else ("daddr", "saddr")
    out: list[Expr] = []
    for local, remote in _fw_pairs(rule, sending):
        try:
            exprs = _endpoint_exprs(rule, port, vrf, local, remote, local_f, remote_f, where)
        except (NoMatch, TypeError, ValueError, AttributeError):
            continue
        for svc in services(rule):
            try:
                svc_exprs = _service_exprs(svc, sending)
            except (NoMatch, TypeError, ValueError, AttributeError):
                continue
            for version, ends in exprs:
                out.append((_match({"meta": {"key": "nfproto"}}, FAMILIES[version][0]),
                            *svc_exprs, *ends, *logging, verdict))
    return tuple(out)


def _ends(rule: Mapping[str, Any], port: LocalPort, vrf: Vrf,
          local: Mapping[str, Any] | None, remote: Mapping[str, Any] | None,
          where: VrfAddresses) -> tuple[list[Net] | None, list[Net] | None, list[Net]]:
    """(local addresses, remote addresses, remote addresses excluded); None: any."""
    local_ips = _local_ips(local, port, vrf)
    if local_ips == []:
        raise NoMatch
    remote_nets = _remote_nets(remote, where)
    negative: list[Net] = []
    for kind in rule.get("match_tag_types") or ():
        mine = tags_of_type(port.tags, int(kind))
        if mine:
            same = [n for n, t in where.hosts() if tags_of_type(t, int(kind)) == mine]
            remote_nets = same if remote_nets is None else _intersect(remote_nets, same)
        else:
            negative += [n for n, t in where.hosts() if tags_of_type(t, int(kind))]
    if remote_nets == []:
        raise NoMatch
    return local_ips, remote_nets, negative


def _endpoint_spans(rule: Mapping[str, Any], port: LocalPort, vrf: Vrf,
                    local: Mapping[str, Any] | None, remote: Mapping[str, Any] | None,
                    where: VrfAddresses
                    ) -> list[tuple[int, list[Span] | None, list[Span] | None]]:
    """Per IP version, the address spans of both ends (None: any; NoMatch: never)."""
    local_ips, remote_nets, negative = _ends(rule, port, vrf, local, remote, where)
    out: list[tuple[int, list[Span] | None, list[Span] | None]] = []
    for version in (4, 6):
        loc: list[Span] | None = None
        if local_ips is not None:
            loc = merge(net_span(n) for n in local_ips if n.version == version)
            if not loc:
                continue
        rem: list[Span] | None = None
        if remote_nets is not None:
            rem = merge(net_span(n) for n in remote_nets if n.version == version)
            if not rem:
                continue
        neg = [net_span(n) for n in negative if n.version == version]
        if neg:
            rem = minus(rem or [ALL_ADDRS[version]], neg)
            if not rem:
                continue
        out.append((version, loc, rem))
    if not out:
        raise NoMatch
    return out


def _service(svc: Mapping[str, Any]
             ) -> tuple[int | None, list[tuple[int, int]], list[tuple[int, int]]]:
    """A firewall service's protocol (None: any) and source and destination port ranges;
    NoMatch for one that can never match (no or a bad protocol, bad ports)."""
    if "protocol_id" in svc and svc.get("protocol_id") is None:
        raise NoMatch
    pid = svc.get("protocol_id")
    try:
        proto = int(pid) if pid else proto_number(svc.get("protocol"))
        sports = port_ranges([svc.get("src_ports")])
        dports = port_ranges([svc.get("dst_ports")])
    except ValueError as e:
        raise NoMatch from e
    if proto is not None and not 0 <= proto <= 255:
        raise NoMatch
    return proto, sports, dports


def _service_triples(svc: Mapping[str, Any]) -> list[tuple[Span, Span, Span]]:
    """(l4proto, sport, dport) spans a service matches (the semantics of
    ``_service_exprs``)."""
    proto, sports, dports = _service(svc)
    return [(_span(p), _span(s), _span(d)) for p, s, d in _proto_ports(proto, sports, dports)]


def _endpoint_exprs(rule: Mapping[str, Any], port: LocalPort, vrf: Vrf,
                    local: Mapping[str, Any] | None, remote: Mapping[str, Any] | None,
                    local_f: str, remote_f: str, where: VrfAddresses
                    ) -> list[tuple[int, list[Json]]]:
    """Per IP version, the matches for both ends (NoMatch when they can never match)."""
    local_ips, remote_nets, negative = _ends(rule, port, vrf, local, remote, where)
    out: list[tuple[int, list[Json]]] = []
    for version in (4, 6):
        ends: list[Json] = []
        if local_ips is not None:
            mine_v = [n for n in local_ips if n.version == version]
            if not mine_v:
                continue
            ends.append(_addr_match(local_f, version, mine_v))
        if remote_nets is not None:
            theirs = [n for n in remote_nets if n.version == version]
            if not theirs:
                continue
            ends.append(_addr_match(remote_f, version, theirs))
        neg = sorted({n for n in negative if n.version == version},
                     key=lambda n: int(n.network_address))
        if neg:
            ends.append(_addr_match(remote_f, version, neg, "!="))
        out.append((version, ends))
    if not out:
        raise NoMatch
    return out


def _service_exprs(svc: Mapping[str, Any], sending: bool) -> list[Json]:
    proto, sports, dports = _service(svc)
    exprs: list[Json] = []
    if proto is not None and proto not in PORT_PROTOCOLS:
        return [_match({"meta": {"key": "l4proto"}}, proto)]
    if proto is not None:
        exprs.append(_match({"meta": {"key": "l4proto"}}, proto))
    elif sports or dports:
        exprs.append(_match({"meta": {"key": "l4proto"}}, {"set": list(PORT_PROTOCOLS)}))
    for fld, ranges in (("sport", sports), ("dport", dports)):
        if ranges:
            items = _port_elems(ranges)
            exprs.append(_match({"payload": {"protocol": "th", "field": fld}},
                                items[0] if len(items) == 1 else {"set": items}))
    return exprs


Dispatch = tuple[str, list[tuple[str, str]]]  # (meta key, [(device, chain)])


def security_chains(state: DatapathState, networks_of: Mapping[str, Mapping[str, Sequence[str]]],
                    plans: SecurityPlans | None = None
                    ) -> tuple[list[tuple[str, tuple[Expr, ...]]], list[Dispatch],
                               list[SetSpec]]:
    """(chains, dispatch vmaps in evaluation order, named sets) for the SGs and firewall of
    ``state``.  ``networks_of`` maps a VN uuid to how its VRF resolves network names to
    prefixes; ``plans`` memoises SG sets across applies (default: ``PLANS``)."""
    plans = PLANS if plans is None else plans
    chains: list[tuple[str, tuple[Expr, ...]]] = []
    sets: list[SetSpec] = []
    sg_out: list[tuple[str, str]] = []
    sg_in: list[tuple[str, str]] = []
    fw_out: list[tuple[str, str]] = []
    fw_in: list[tuple[str, str]] = []
    wheres: dict[str, VrfAddresses] = {}
    # group id -> digest of its rules, per direction: once per apply, whatever the ports
    digests: dict[str, dict[int, bytes]] = {"egress": {}, "ingress": {}}
    rule_digests = Digests()  # firewall rules, shared by the ports
    fw_digest = content_digest(state.firewall) if state.firewall else None
    for port in sorted(state.ports.values(), key=lambda p: p.ifname):
        vrf = state.vrfs.get(port.network)
        if vrf is None:
            continue
        where = wheres.get(port.network)
        if where is None:  # one per VRF: its digest names the context of compiled rules
            where = wheres[port.network] = VrfAddresses(vrf, networks_of.get(port.network, {}))
        if port.sgs:
            for direction, short, dispatch in (("egress", "o", sg_out),
                                               ("ingress", "i", sg_in)):
                known = digests[direction]
                for g in port.sgs:
                    if g not in known:
                        known[g] = content_digest(_rules(state.security_groups, g, direction))
                elems = plans.port_sets(port, direction, known, state.security_groups, where)
                for version in (4, 6):
                    sets.append((sg_set_name(direction, version, port.ifname),
                                 SET_TYPES[version], elems[version]))
                chain = f"sg-{short}-{port.ifname}"
                chains.append((chain, sg_chain_rules(direction, port.ifname)))
                dispatch.append((port.ifname, chain))
        for sending, prefix, dispatch in ((True, "fw-o-", fw_out), (False, "fw-i-", fw_in)):
            compiled = fw_chain(port, vrf, sending, state.firewall, where, plans,
                                rule_digests, fw_digest)
            if compiled is not None:
                chains.append((prefix + port.ifname, compiled[0]))
                sets += compiled[1]
                dispatch.append((port.ifname, prefix + port.ifname))
    dispatches: list[Dispatch] = [(key, pairs) for key, pairs in (
        ("iifname", sg_out), ("oifname", sg_in), ("iifname", fw_out), ("oifname", fw_in))
        if pairs]
    return chains, dispatches, sets
