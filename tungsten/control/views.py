"""What one node needs to know, read from the config index: pure functions over ``ObjectDB``.

``config_view`` gives the config part of an agent's View (ports, networks, security groups,
firewall); the routes part comes from the RIB.  ``ri_targets`` reads every routing instance's
route-target config for the RIB.  Nothing here writes or waits.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

from tungsten.api.hooks import MULTI_VALUE_TAG_TYPES, PREDEFINED_TAG_TYPES, PROTOCOL_IDS
from tungsten.api.objdb import Obj, ObjectDB
from tungsten.control.protocol import (
    FirewallPolicyConfig,
    NetworkConfig,
    PolicySetConfig,
    PortConfig,
    SecurityGroupConfig,
    View,
)
from tungsten.control.rib import RiTargets

CONFIG_COLLECTIONS = ("ports", "networks", "security_groups")
SG_ACLS = ("ingress-access-control-list", "egress-access-control-list")
FIREWALL = "firewall"  # left out of a view while empty (older agents never see it)
DEFAULT_APS = "default-application-policy-set"
GLOBAL_POLICY_MANAGEMENT = ["default-policy-management"]
ANY_PORT = {"start_port": 0, "end_port": 65535}


def joined(fq_name: list[str]) -> str:
    return ":".join(fq_name)


def primary_ri(vn: Obj) -> str:
    """A network's primary routing instance: its fq_name plus its name again, as TF names it."""
    return joined([*vn.fq_name, vn.fq_name[-1]])


def _ref_uuids(obj: Obj, field: str) -> list[str]:
    return [r["uuid"] for r in obj.refs.get(field, [])]


def _acl_rules(db: ObjectDB, parent: str, names: tuple[str, ...] | None = None) -> list[Any]:
    """The acl_rule lists of the parent's derived ACLs (all of them, or those named), in
    name order."""
    acls = [
        o for u in db.children.get(parent, {})
        if (o := db.objs.get(u)) is not None and o.type == "access-control-list"
        and (names is None or o.fq_name[-1] in names)
    ]
    rules: list[Any] = []
    for acl in sorted(acls, key=lambda o: o.fq_name[-1]):
        entries = acl.props.get("access_control_list_entries") or {}
        rules.extend(entries.get("acl_rule") or [])
    return rules


def _port_ips(db: ObjectDB, vmi: Obj, vn: Obj | None) -> list[dict[str, Any]]:
    ips: list[dict[str, Any]] = []
    for u in db.back.get(vmi.uuid, {}):
        iip = db.objs.get(u)
        if iip is None or iip.type != "instance-ip":
            continue
        address = iip.props.get("instance_ip_address")
        if not isinstance(address, str):
            continue
        family = iip.props.get("instance_ip_family") or ("v6" if ":" in address else "v4")
        subnet = iip.props.get("instance_ip_subnet") or {}
        plen = subnet.get("ip_prefix_len")
        if not isinstance(plen, int):
            plen = _prefix_len_in(vn, address) if vn is not None else None
        if plen is None:
            plen = 128 if family == "v6" else 32
        ips.append({"address": address, "prefix_len": plen, "family": family})
    ips.sort(key=lambda ip: (ip["family"], ip["address"]))
    return ips


def _prefix_len_in(vn: Obj, address: str) -> int | None:
    """The length of the network's subnet that holds ``address``."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return None
    for sn in network_subnets(vn):
        net = ipaddress.ip_network(sn["prefix"], strict=False)
        if addr.version == net.version and addr in net:
            return net.prefixlen
    return None


def network_subnets(vn: Obj) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ref in vn.refs.get("network_ipam_refs", []):
        for s in (ref.get("attr") or {}).get("ipam_subnets") or []:
            sub = s.get("subnet") or {}
            if sub.get("ip_prefix") is None or sub.get("ip_prefix_len") is None:
                continue  # a flat-subnet ipam: its subnets live on the ipam
            out.append({
                "prefix": f"{sub['ip_prefix']}/{sub['ip_prefix_len']}",
                "gateway": s.get("default_gateway"),
                "dns": s.get("dns_server_address"),
                "subnet_uuid": s.get("subnet_uuid"),
            })
    return out


def _tag_id(tag: Obj | None) -> int | None:
    raw = tag.props.get("tag_id") if tag is not None else None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw, 0)
        except ValueError:
            return None
    return None


def _tag_type(tag: Obj) -> str:
    name = tag.props.get("tag_type_name")
    if isinstance(name, str) and name:
        return name.lower()
    tid = _tag_id(tag)
    kind = (tid >> 16) if tid is not None else -1
    return PREDEFINED_TAG_TYPES[kind] if 0 <= kind < len(PREDEFINED_TAG_TYPES) else str(kind)


def _project_of(db: ObjectDB, vmi: Obj, vn: Obj | None) -> Obj | None:
    """The port's project: its parent, else (a port under a VM) its network's."""
    for o in (vmi, vn):
        if o is not None and o.parent_type == "project" and o.parent_uuid:
            return db.objs.get(o.parent_uuid)
    return None


def port_tags(db: ObjectDB, uuid: str) -> tuple[list[Obj], set[str]]:
    """A port's effective tags and the uuids they were read from.

    Tags are inherited project -> network -> VM -> port: a tag type set on a nearer object
    replaces the inherited value, except the multi-valued types (labels), which add up.
    """
    vmi = db.objs.get(uuid)
    if vmi is None or vmi.type != "virtual-machine-interface":
        return [], set()
    vns = _ref_uuids(vmi, "virtual_network_refs")
    vn = db.objs.get(vns[0]) if vns else None
    layers = [_project_of(db, vmi, vn), vn,
              *(db.objs.get(u) for u in _ref_uuids(vmi, "virtual_machine_refs")), vmi]
    by_type: dict[str, list[Obj]] = {}
    read: set[str] = set()
    for owner in layers:
        if owner is None:
            continue
        read.add(owner.uuid)
        own: dict[str, list[Obj]] = {}
        for u in _ref_uuids(owner, "tag_refs"):
            read.add(u)
            tag = db.objs.get(u)
            if tag is not None and tag.type == "tag" and _tag_id(tag) is not None:
                own.setdefault(_tag_type(tag), []).append(tag)
        for kind, tags in own.items():
            if kind in MULTI_VALUE_TAG_TYPES:
                by_type.setdefault(kind, []).extend(tags)
            else:
                by_type[kind] = tags
    seen: dict[str, Obj] = {t.uuid: t for tags in by_type.values() for t in tags}
    return list(seen.values()), read


def _tag_ids(tags: list[Obj]) -> list[int]:
    return sorted({tid for t in tags if (tid := _tag_id(t)) is not None})


def _sg_ids(db: ObjectDB, vmi: Obj) -> list[int]:
    out = []
    for u in _ref_uuids(vmi, "security_group_refs"):
        sg = db.objs.get(u)
        if sg is not None and isinstance(sg.props.get("security_group_id"), int):
            out.append(sg.props["security_group_id"])
    return sorted(out)


def port_config(db: ObjectDB, uuid: str) -> PortConfig | None:
    """A port (VMI) as its node sees it; None while it is unknown or has no network."""
    vmi = db.objs.get(uuid)
    if vmi is None or vmi.type != "virtual-machine-interface":
        return None
    vns = _ref_uuids(vmi, "virtual_network_refs")
    vn = db.objs.get(vns[0]) if vns else None
    if vn is None:
        return None
    macs = (vmi.props.get("virtual_machine_interface_mac_addresses") or {}).get("mac_address")
    return PortConfig(
        uuid=uuid,
        name=joined(vmi.fq_name),
        network=vn.uuid,
        mac=macs[0] if macs else "",
        ips=_port_ips(db, vmi, vn),
        sgs=_sg_ids(db, vmi),
        tags=_tag_ids(port_tags(db, uuid)[0]),
        enabled=bool((vmi.props.get("id_perms") or {}).get("enable", True)),
    )


def network_config(db: ObjectDB, uuid: str) -> NetworkConfig | None:
    vn = db.objs.get(uuid)
    if vn is None or vn.type != "virtual-network":
        return None
    return NetworkConfig(
        uuid=uuid,
        name=joined(vn.fq_name),
        vni=int(vn.props.get("virtual_network_network_id") or 0),
        ri=primary_ri(vn),
        subnets=network_subnets(vn),
        acl=_acl_rules(db, uuid),
    )


def sg_config(db: ObjectDB, uuid: str) -> SecurityGroupConfig | None:
    """An SG with its rules from the transformer's derived ACLs; until those exist, its own
    policy rules split by which side is ``local``."""
    sg = db.objs.get(uuid)
    if sg is None or sg.type != "security-group":
        return None
    sg_id = sg.props.get("security_group_id")
    if not isinstance(sg_id, int):
        return None
    derived = {
        name: _acl_rules(db, uuid, (name,)) for name in SG_ACLS
        if any((o := db.objs.get(u)) is not None and o.fq_name[-1] == name
               for u in db.children.get(uuid, {}))
    }
    if derived:
        ingress = derived.get(SG_ACLS[0], [])
        egress = derived.get(SG_ACLS[1], [])
    else:
        rules = (sg.props.get("security_group_entries") or {}).get("policy_rule") or []
        ingress = [r for r in rules if _is_local(r.get("dst_addresses"))]
        egress = [r for r in rules if _is_local(r.get("src_addresses"))]
    return SecurityGroupConfig(uuid=uuid, id=sg_id, ingress=ingress, egress=egress)


def _is_local(addresses: Any) -> bool:
    return any(isinstance(a, dict) and a.get("security_group") == "local"
               for a in addresses or [])


def _sequence_key(seq: str, uuid: str) -> tuple[int, float, str, str]:
    """Sequences are numbers written as strings ("1", "1.5"): order them as numbers, so a
    rule can be slotted between two others; anything else goes last, by text."""
    try:
        n = float(seq)
    except ValueError:
        n = math.nan
    if math.isfinite(n):
        return (0, n, seq, uuid)
    return (1, 0.0, seq, uuid)


def _coll(obj: Obj, name: str, wrapper: str) -> list[Any]:
    """A list property's elements: kept in ``colls`` by the API, else as a wrapped prop."""
    if name in obj.colls:
        return [e for _, e in obj.colls[name]]
    return list((obj.props.get(name) or {}).get(wrapper) or [])


def _protocol_id(service: dict[str, Any]) -> int | None:
    pid = service.get("protocol_id")
    if isinstance(pid, int):
        return pid
    proto = str(service.get("protocol") or "any").lower()
    return int(proto) if proto.isdigit() else PROTOCOL_IDS.get(proto)


def _service(raw: dict[str, Any]) -> dict[str, Any]:
    """A service with its protocol number (null if unknown) and both port ranges."""
    return {"protocol_id": _protocol_id(raw),
            "src_ports": raw.get("src_ports") or dict(ANY_PORT),
            "dst_ports": raw.get("dst_ports") or dict(ANY_PORT)}


def _endpoint(db: ObjectDB, rule: Obj, name: str, deps: set[str]) -> dict[str, Any]:
    """An endpoint as stored, its address group (named as the API resolved it, among the
    rule's address_group_refs) expanded to ``address_group_prefixes``."""
    ep = dict(rule.props.get(name) or {})
    group = ep.get("address_group")
    if group:
        fq = str(group).split(":")
        wanted = (fq, [*rule.fq_name[:-1], fq[-1]])
        prefixes: list[str] = []
        for u in _ref_uuids(rule, "address_group_refs"):
            deps.add(u)
            ag = db.objs.get(u)
            if ag is not None and ag.fq_name in wanted:
                prefixes = [f"{s['ip_prefix']}/{s['ip_prefix_len']}"
                            for s in _coll(ag, "address_group_prefix", "subnet")
                            if s.get("ip_prefix") is not None
                            and s.get("ip_prefix_len") is not None]
                break
        ep["address_group_prefixes"] = prefixes
    return ep


def _rule_config(db: ObjectDB, rule: Obj, seq: str, deps: set[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "uuid": rule.uuid, "name": joined(rule.fq_name), "sequence": seq,
        "action_list": rule.props.get("action_list"),
        "direction": rule.props.get("direction"),
    }
    groups = _ref_uuids(rule, "service_group_refs")
    if groups:
        services: list[dict[str, Any]] = []
        for u in groups:
            deps.add(u)
            sg = db.objs.get(u)
            if sg is not None:
                services += [_service(s) for s in
                             _coll(sg, "service_group_firewall_service_list", "firewall_service")]
        entry["service_groups"] = services
    else:
        raw = rule.props.get("service") or {}
        entry["service"] = {**raw, **_service(raw)}
    entry["endpoint_1"] = _endpoint(db, rule, "endpoint_1", deps)
    entry["endpoint_2"] = _endpoint(db, rule, "endpoint_2", deps)
    entry["match_tag_types"] = list((rule.props.get("match_tag_types") or {}).get("tag_type")
                                    or [])
    return entry


def _ordered(db: ObjectDB, owner: Obj, field: str, rtype: str,
             deps: set[str]) -> list[tuple[str, Obj]]:
    """(sequence, target) of an owner's sequenced refs that exist, in sequence order."""
    out: list[tuple[str, Obj]] = []
    for ref in owner.refs.get(field, []):
        deps.add(ref["uuid"])
        target = db.objs.get(ref["uuid"])
        if target is not None and target.type == rtype:
            out.append((str((ref.get("attr") or {}).get("sequence") or ""), target))
    out.sort(key=lambda st: _sequence_key(st[0], st[1].uuid))
    return out


def aps_config(db: ObjectDB, uuid: str) -> tuple[PolicySetConfig | None, set[str]]:
    """An application-policy-set with its policies and their rules resolved, in order; and
    the uuids it was read from."""
    deps = {uuid}
    aps = db.objs.get(uuid)
    if aps is None or aps.type != "application-policy-set":
        return None, deps
    app_tag: int | None = None
    for u in _ref_uuids(aps, "tag_refs"):
        deps.add(u)
        tag = db.objs.get(u)
        if tag is not None and _tag_type(tag) == "application":
            app_tag = _tag_id(tag)
            break
    policies: list[FirewallPolicyConfig] = []
    for pseq, pol in _ordered(db, aps, "firewall_policy_refs", "firewall-policy", deps):
        rules = [_rule_config(db, rule, rseq, deps) for rseq, rule in
                 _ordered(db, pol, "firewall_rule_refs", "firewall-rule", deps)]
        policies.append(FirewallPolicyConfig(uuid=pol.uuid, name=joined(pol.fq_name),
                                             sequence=pseq, rules=rules))
    entry = PolicySetConfig(uuid=uuid, name=joined(aps.fq_name), application_tag=app_tag,
                            all_applications=bool(aps.props.get("all_applications")),
                            policies=policies)
    return entry, deps


def tag_sets(db: ObjectDB, tag: str) -> list[str]:
    """The application-policy-sets that refer to a tag."""
    return [u for u in db.back.get(tag, {})
            if (o := db.objs.get(u)) is not None and o.type == "application-policy-set"]


def config_view(db: ObjectDB, ports: set[str] | frozenset[str],
                memo: dict[str, Any] | None = None) -> tuple[View, set[str]]:
    """The config collections a node with these ports needs, and the uuids of every object
    they were read from (what the node must watch for changes).  ``memo`` shares the work
    between the nodes recomputed in one go (objects by uuid)."""
    cache: dict[str, Any] = {} if memo is None else memo

    def cached(uuid: str, fn: Any) -> Any:
        if uuid not in cache:
            cache[uuid] = fn(db, uuid)
        return cache[uuid]

    def cached_as(kind: str, uuid: str, fn: Any) -> Any:
        key = f"{kind}/{uuid}"  # a second result for the same uuid: keyed apart
        if key not in cache:
            cache[key] = fn(db, uuid)
        return cache[key]

    view: View = {c: {} for c in CONFIG_COLLECTIONS}
    deps: set[str] = set(ports)
    firewall: dict[str, Any] = {}

    def add_aps(uuid: str, app_tags: set[int] | None = None) -> None:
        if uuid in firewall:
            return
        entry, read = cached_as("aps", uuid, aps_config)
        deps.update(read)
        # a tag-selected set applies only through its own application tag
        if entry is not None and (app_tags is None or entry["application_tag"] in app_tags):
            firewall[uuid] = entry

    for uuid in ports:
        port = cached(uuid, port_config)
        if port is None:
            continue
        view["ports"][uuid] = port
        vmi = db.objs[uuid]
        tags, read = cached_as("tags", uuid, port_tags)
        deps.update(read)
        if port["network"] not in view["networks"]:
            net = cached(port["network"], network_config)
            if net is not None:
                view["networks"][port["network"]] = net
                deps.add(port["network"])
        for sg_uuid in _ref_uuids(vmi, "security_group_refs"):
            deps.add(sg_uuid)
            sg = cached(sg_uuid, sg_config)
            if sg is not None:
                view["security_groups"][str(sg["id"])] = sg
        for tag in tags:
            if _tag_type(tag) == "application":
                # a tag's referrers include every port carrying it: looked at once per flush
                for aps in cached_as("sets", tag.uuid, tag_sets):
                    add_aps(aps, set(port["tags"]))
        project = _project_of(db, vmi, db.objs.get(port["network"]))
        if project is not None:
            deps.add(project.uuid)  # a default set created later touches its project
            if (u := db.lookup("application-policy-set", [*project.fq_name, DEFAULT_APS])):
                add_aps(u)
    if view["ports"]:
        pm = db.lookup("policy-management", GLOBAL_POLICY_MANAGEMENT)
        if pm is not None:
            deps.add(pm)
            if (u := db.lookup("application-policy-set", [*GLOBAL_POLICY_MANAGEMENT,
                                                          DEFAULT_APS])):
                add_aps(u)
    if firewall:
        view[FIREWALL] = firewall
    return view, deps


def ri_targets(db: ObjectDB) -> dict[str, RiTargets]:
    """Route-target config of every routing instance, by RI name."""
    out: dict[str, RiTargets] = {}
    for ri in db.by_type.get("routing-instance", {}).values():
        imports: set[str] = set()
        exports: set[str] = set()
        for ref in ri.refs.get("route_target_refs", []):
            rt = db.objs.get(ref["uuid"])
            if rt is None:
                continue
            name = rt.fq_name[-1]
            mode = (ref.get("attr") or {}).get("import_export")
            if mode != "export":
                imports.add(name)
            if mode != "import":
                exports.add(name)
        peers = {joined(p.fq_name) for u in _ref_uuids(ri, "routing_instance_refs")
                 if (p := db.objs.get(u)) is not None}
        out[joined(ri.fq_name)] = RiTargets(frozenset(imports), frozenset(exports),
                                            frozenset(peers))
    return out
