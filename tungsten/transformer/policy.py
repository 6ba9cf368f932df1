"""Network policies: ACL rules of a network and the networks it asks to be connected to (pure).

TF semantics (reference §2.2): every rule of every policy attached to a network becomes ACL
rules of that network, policies in their attachment sequence (major, minor); an
``apply_service`` rule passes in the ACL.  A non-deny rule without service between this network
and another records a *connection request*; ``any`` is a wildcard (see ``Requests``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from tungsten.api.objdb import Obj
from tungsten.transformer import rules as R


def fq_text(obj: Obj) -> str:
    return ":".join(obj.fq_name)


def qualify(name: str, scope: Obj) -> str:
    """A name as written in a rule: full (``domain:project:name``) or relative to the
    project of ``scope`` (the policy or security group holding the rule)."""
    if ":" in name:
        return name
    return ":".join([*scope.fq_name[:-1], name])


@dataclass
class Networks:
    """What rule expansion needs to know about networks and policies."""

    by_name: Mapping[str, Obj]  # VN fq_name text -> VN
    policy_vns: Mapping[str, list[str]]  # policy uuid -> names of the VNs attaching it
    policy_by_name: Mapping[str, Obj]  # policy fq_name text -> policy

    @staticmethod
    def build(vns: Iterable[Obj], policies: Iterable[Obj]) -> Networks:
        by_name: dict[str, Obj] = {}
        policy_vns: dict[str, list[str]] = {}
        for vn in vns:
            name = fq_text(vn)
            by_name[name] = vn
            for ref in vn.refs.get("network_policy_refs", []):
                policy_vns.setdefault(ref["uuid"], []).append(name)
        for names in policy_vns.values():
            names.sort()
        return Networks(by_name, policy_vns, {fq_text(p): p for p in policies})


@dataclass
class Requests:
    """Connection requests of one network: the networks it lists, and whether it listed
    ``any`` (then it also lists every network of its project and every network that lists
    it back, as TF expands the wildcard)."""

    names: set[str] = field(default_factory=set)
    wildcard: bool = False


def attached_policies(vn: Obj, objs: Mapping[str, Obj]) -> list[Obj]:
    """The network's policies in attachment order: sequence (major, minor), then name."""
    found: list[tuple[int, int, str, Obj]] = []
    for ref in vn.refs.get("network_policy_refs", []):
        policy = objs.get(ref["uuid"])
        if policy is None:
            continue
        seq = ((ref.get("attr") or {}).get("sequence")) or {}
        found.append((_int(seq.get("major")), _int(seq.get("minor")), fq_text(policy), policy))
    found.sort(key=lambda t: t[:3])
    return [t[3] for t in found]


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def expand_address(addr: Any, vn: Obj, policy: Obj, nets: Networks) -> list[dict[str, Any]]:
    """One rule address as ACL addresses: ``local`` becomes the network, a network policy
    becomes every network attaching it; subnets and security groups stay as written."""
    if not isinstance(addr, dict):
        return [dict(R.ANY_ADDR)]
    name = addr.get("virtual_network")
    if name:
        if name == "local":
            return [{"virtual_network": fq_text(vn)}]
        if name == R.ANY:
            return [dict(R.ANY_ADDR)]
        return [{"virtual_network": qualify(str(name), policy)}]
    np_name = addr.get("network_policy")
    if np_name:
        target = nets.policy_by_name.get(qualify(str(np_name), policy))
        names = nets.policy_vns.get(target.uuid, []) if target is not None else []
        return [{"virtual_network": n} for n in names]
    kept = {k: addr[k] for k in ("subnet", "subnet_list", "security_group") if addr.get(k)}
    return [kept] if kept else [dict(R.ANY_ADDR)]


def _involves(me: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether a rule between ``a`` and ``b`` can match traffic of network ``me``: a rule
    naming two other networks cannot; one with an address or a subnet may."""
    for x in (a, b):
        vn = x.get("virtual_network")
        if vn is None or vn in (me, R.ANY):
            return True
    return False


def action_of(rule: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the ACL action, whether the rule connects its networks)."""
    action = dict(rule.get("action_list") or {})
    service = bool(action.get("apply_service"))
    if service:
        # no chain is steered by the ACL itself: the traffic passes (TF: apply_service → pass)
        action.pop("apply_service", None)
        action["simple_action"] = "pass"
    action.setdefault("simple_action", "pass")
    action = {k: v for k, v in action.items() if v is not None}
    connects = not service and action["simple_action"] != "deny"
    return action, connects


def network_rules(vn: Obj, objs: Mapping[str, Obj], nets: Networks,
                  ) -> tuple[list[R.Rule], Requests]:
    """The policy part of a network's ACL (without implicit rules) and its requests."""
    me = fq_text(vn)
    out: list[R.Rule] = []
    req = Requests()
    for policy in attached_policies(vn, objs):
        for rule in (policy.props.get("network_policy_entries") or {}).get("policy_rule") or []:
            if not isinstance(rule, dict):
                continue
            ethertype = rule.get("ethertype") or "IPv4"
            proto = R.protocol(rule.get("protocol"), ethertype)
            action, connects = action_of(rule)
            rid = str(rule.get("rule_uuid") or "")
            two_way = rule.get("direction") == "<>"
            srcs = [a for x in rule.get("src_addresses") or [{}]
                    for a in expand_address(x, vn, policy, nets)]
            dsts = [a for x in rule.get("dst_addresses") or [{}]
                    for a in expand_address(x, vn, policy, nets)]
            sports, dports = R.ports(rule.get("src_ports")), R.ports(rule.get("dst_ports"))
            for sa, da in product(srcs, dsts):
                if not _involves(me, sa, da):
                    continue
                if connects:
                    _request(req, me, sa, da)
                for sp, dp in product(sports, dports):
                    out.append(R.acl_rule(sa, sp, da, dp, proto, ethertype, action, rid))
                    if two_way:
                        out.append(R.acl_rule(da, dp, sa, sp, proto, ethertype, action, rid))
    return out, req


def _request(req: Requests, me: str, a: dict[str, Any], b: dict[str, Any]) -> None:
    for mine, other in ((a, b), (b, a)):
        if mine.get("virtual_network") != me:
            continue
        peer = other.get("virtual_network")
        if peer == R.ANY:
            req.wildcard = True
        elif peer is not None and peer != me:
            req.names.add(peer)


def implicit_rules(vn: Obj) -> tuple[list[R.Rule], list[R.Rule]]:
    """TF's implicit rules: (allow this network to itself, first; deny anything, last)."""
    me = {"virtual_network": fq_text(vn)}
    first, last = [], []
    for et in R.ETHERTYPES:
        first.append(R.acl_rule(me, dict(R.ANY_PORT), me, dict(R.ANY_PORT), R.ANY, et,
                                {"simple_action": "pass"},
                                R.implicit_uuid(vn.uuid, f"allow-self-{et}")))
        last.append(R.acl_rule(dict(R.ANY_ADDR), dict(R.ANY_PORT), dict(R.ANY_ADDR),
                               dict(R.ANY_PORT), R.ANY, et, {"simple_action": "deny"},
                               R.implicit_uuid(vn.uuid, f"deny-all-{et}")))
    return first, last


def connections(requests: Mapping[str, Requests], projects: Mapping[str, str],
                ) -> list[tuple[str, str]]:
    """Pairs (a, b), a < b, of networks that list each other (names).  ``projects`` maps a
    network name to its project's name (the scope of the ``any`` wildcard)."""
    by_project: dict[str, set[str]] = {}
    for name, proj in projects.items():
        by_project.setdefault(proj, set()).add(name)
    listed_by: dict[str, set[str]] = {}
    for name, req in requests.items():
        for peer in req.names:
            listed_by.setdefault(peer, set()).add(name)

    def lists(a: str) -> set[str]:
        req = requests.get(a)
        if req is None:
            return set()
        if not req.wildcard:
            return req.names
        return req.names | by_project.get(projects.get(a, ""), set()) | listed_by.get(a, set())

    expanded = {name: lists(name) for name in requests}
    pairs: set[tuple[str, str]] = set()
    for a, peers in expanded.items():
        for b in peers:
            if a != b and b in projects and a in expanded.get(b, set()):
                pairs.add((a, b) if a < b else (b, a))
    return sorted(pairs)
