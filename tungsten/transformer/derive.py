"""Intent → derived config: the transformer's pure core (reference §2).

``derive(view, numbers)`` reads the config (read-only; an ``ObjectDB`` or anything shaped like
it) and the route-target numbers already allocated to their owners, and returns the complete
derived state: route-target objects, ACL objects, and the ref fields the transformer owns on
primary routing instances and logical routers.  No I/O and no allocation here: the service
allocates numbers (claims in the store) and writes the difference.

Everything is sorted by fq_name, never by arrival order, so any process that reads the same
config computes the same result: a restarted transformer finds nothing to change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from tungsten.api.hooks import SYSTEM_VNS
from tungsten.api.objdb import Obj
from tungsten.transformer import policy as P
from tungsten.transformer import rules as R
from tungsten.transformer.secgroup import sg_rules

GSC = ("default-global-system-config",)
DEFAULT_ASN = 64512
INGRESS_ACL = "ingress-access-control-list"
EGRESS_ACL = "egress-access-control-list"
_RT_NAME = re.compile(r"target:[0-9.]+:[0-9]+")

# (type, fq_name) of an object a derived ref points at
Target = tuple[str, tuple[str, ...]]
RefList = list[tuple[Target, Any]]


class ConfigView(Protocol):
    """Read-only access to the config, as ``ObjectDB`` provides it."""

    @property
    def objs(self) -> Mapping[str, Obj]: ...

    @property
    def by_type(self) -> Mapping[str, Mapping[str, Obj]]: ...

    def lookup(self, rtype: str, fq_name: Iterable[str]) -> str | None: ...


@dataclass(frozen=True)
class RtSpace:
    """Where allocated route-target numbers come from: TF leaves the numbers below ``lo`` to
    user-configured targets; a 4-byte ASN leaves only 16 bits for the number."""

    asn: int
    lo: int
    hi: int

    def name(self, n: int) -> str:
        return f"target:{self.asn}:{n}"


@dataclass
class AclWant:
    parent_type: str
    entries: dict[str, Any]  # AclEntriesType


@dataclass
class Derived:
    route_targets: list[str] = field(default_factory=list)  # names, sorted
    acls: dict[tuple[str, ...], AclWant] = field(default_factory=dict)  # fq_name -> ACL
    # owner uuid -> ref field -> wanted refs; an owned field with no refs is an empty list
    refs: dict[str, dict[str, RefList]] = field(default_factory=dict)


def rt_space(view: ConfigView) -> RtSpace:
    gsc_uuid = view.lookup("global-system-config", GSC)
    gsc = view.objs.get(gsc_uuid) if gsc_uuid else None
    props = gsc.props if gsc is not None else {}
    asn = props.get("autonomous_system")
    asn = asn if isinstance(asn, int) and not isinstance(asn, bool) else DEFAULT_ASN
    if props.get("enable_4byte_as"):
        return RtSpace(asn, 8_000, 8_000 + (1 << 15) - 1)
    return RtSpace(asn, 8_000_000, 8_000_000 + (1 << 24) - 1)


def _sorted(view: ConfigView, rtype: str) -> list[Obj]:
    return sorted(view.by_type.get(rtype, {}).values(), key=lambda o: o.fq_name)


def routed_networks(view: ConfigView) -> list[tuple[Obj, Obj]]:
    """(network, its primary routing instance) for every network the transformer serves:
    all but the fabric and link-local networks, which carry no overlay routes."""
    out = []
    for vn in _sorted(view, "virtual-network"):
        if tuple(vn.fq_name) in SYSTEM_VNS:
            continue
        ri_uuid = view.lookup("routing-instance", [*vn.fq_name, vn.fq_name[-1]])
        ri = view.objs.get(ri_uuid) if ri_uuid else None
        if ri is not None:
            out.append((vn, ri))
    return out


def rt_owners(view: ConfigView) -> list[str]:
    """Uuids of the objects that get an allocated route target, in allocation order:
    primary routing instances, then logical routers."""
    return [ri.uuid for _, ri in routed_networks(view)] + [
        lr.uuid for lr in _sorted(view, "logical-router")]


def user_targets(value: Any) -> list[str]:
    """The valid ``target:ASN:N`` strings of a RouteTargetList."""
    names = value.get("route_target") if isinstance(value, dict) else None
    return [n for n in names or [] if isinstance(n, str) and _RT_NAME.fullmatch(n)]


def _rt_refs(dirs: Mapping[str, set[str]]) -> RefList:
    out: RefList = []
    for name in sorted(dirs):
        both = {"import", "export"} <= dirs[name]
        attr = {"import_export": None if both else next(iter(dirs[name]))}
        out.append((("route-target", (name,)), attr))
    return out


def _plain(value: Any) -> Any:
    """A private deep copy in JSON types: derived props never share dicts with the config."""
    return orjson.loads(orjson.dumps(value))


def derive(view: ConfigView, numbers: Mapping[str, int]) -> Derived:
    """The whole derived state for the config in ``view``; ``numbers`` maps an owner uuid
    (see ``rt_owners``) to its allocated route-target number."""
    space = rt_space(view)
    out = Derived()
    nets = routed_networks(view)
    ri_dirs: dict[str, dict[str, set[str]]] = {}  # RI uuid -> RT name -> directions

    # 1. route targets of each primary RI: its own, plus the user's lists (§2.1)
    for vn, ri in nets:
        dirs = ri_dirs.setdefault(ri.uuid, {})
        n = numbers.get(ri.uuid)
        if n is not None:
            dirs.setdefault(space.name(n), set()).update(("import", "export"))
        for prop, d in (("route_target_list", ("import", "export")),
                        ("import_route_target_list", ("import",)),
                        ("export_route_target_list", ("export",))):
            for name in user_targets(vn.props.get(prop)):
                dirs.setdefault(name, set()).update(d)

    # 2. logical routers: their target on every connected network's primary RI (§2.5)
    ri_of_vn = {vn.uuid: ri.uuid for vn, ri in nets}
    for lr in _sorted(view, "logical-router"):
        names = user_targets(lr.props.get("configured_route_target_list"))
        n = numbers.get(lr.uuid)
        if n is not None:
            names.insert(0, space.name(n))
        names = sorted(set(names))
        out.refs[lr.uuid] = {"route_target_refs": [(("route-target", (x,)), None)
                                                   for x in names]}
        for vn_uuid in _lr_networks(view, lr):
            ri_uuid = ri_of_vn.get(vn_uuid)
            if ri_uuid is not None:
                for x in names:
                    ri_dirs[ri_uuid].setdefault(x, set()).update(("import", "export"))

    # 3. network policies: ACL per network, connection requests (§2.2)
    vns = [vn for vn, _ in nets]
    index = P.Networks.build(vns, _sorted(view, "network-policy"))
    requests: dict[str, P.Requests] = {}
    for vn in vns:
        policy_rules, requests[P.fq_text(vn)] = P.network_rules(vn, view.objs, index)
        if not P.attached_policies(vn, view.objs):
            # TF: no policy, no ACL (routing alone isolates; networks joined by a logical
            # router must reach each other)
            continue
        first, last = P.implicit_rules(vn)
        out.acls[(*vn.fq_name, vn.fq_name[-1])] = AclWant(
            "virtual-network", _plain(R.entries(first + policy_rules + last)))
    projects = {P.fq_text(vn): ":".join(vn.fq_name[:-1]) for vn in vns}
    links: dict[str, list[str]] = {}
    for a, b in P.connections(requests, projects):
        links.setdefault(a, []).append(b)
        links.setdefault(b, []).append(a)
    for vn, ri in nets:
        peers = sorted(links.get(P.fq_text(vn), []))
        conn: RefList = []
        for peer in peers:
            pvn = index.by_name[peer]
            conn.append((("routing-instance", (*pvn.fq_name, pvn.fq_name[-1])),
                         {"destination_instance": None}))
        out.refs[ri.uuid] = {"route_target_refs": _rt_refs(ri_dirs[ri.uuid]),
                             "routing_instance_refs": conn}

    # 4. security groups: ingress and egress ACLs (§2.3)
    sgs = _sorted(view, "security-group")
    sg_by_name = {P.fq_text(sg): sg for sg in sgs}
    for sg in sgs:
        ingress, egress = sg_rules(sg, sg_by_name)
        for acl_name, acl_rules in ((INGRESS_ACL, ingress), (EGRESS_ACL, egress)):
            out.acls[(*sg.fq_name, acl_name)] = AclWant(
                "security-group", _plain(R.entries(acl_rules)))

    used = {target[1][0] for fields in out.refs.values()
            for target, _ in fields.get("route_target_refs", [])}
    out.route_targets = sorted(used)
    return out


def _lr_networks(view: ConfigView, lr: Obj) -> list[str]:
    """Networks connected to a logical router: those of its ports, and its network refs
    except the external gateway (SNAT, not routing, joins that one)."""
    found: dict[str, None] = {}
    for ref in lr.refs.get("virtual_machine_interface_refs", []):
        port = view.objs.get(ref["uuid"])
        if port is not None:
            for vref in port.refs.get("virtual_network_refs", [])[:1]:
                found[vref["uuid"]] = None
    for ref in lr.refs.get("virtual_network_refs", []):
        kind = (ref.get("attr") or {}).get("logical_router_virtual_network_type")
        if kind != "ExternalGateway":
            found[ref["uuid"]] = None
    return list(found)
