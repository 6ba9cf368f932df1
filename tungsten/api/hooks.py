"""Type-specific server semantics that TF clients rely on (reference §6).

Each hook runs inside the request's write set, so everything it stages (derived objects,
allocated ids and addresses) commits in the same transaction as the object itself, or not at
all.  The dispatch functions at the bottom are what ``core`` calls.
"""

from __future__ import annotations

import functools
import uuid as uuidlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tungsten.api import addressing, rulecheck
from tungsten.api.context import RequestCtx
from tungsten.api.errors import ApiError, bad_request, conflict, forbidden
from tungsten.api.objdb import CLAIM, Obj, WriteSet
from tungsten.model.schema import ResourceType

if TYPE_CHECKING:
    from tungsten.api.core import ConfigApi

SYSTEM_CTX = RequestCtx()

VN_ID_MIN, VN_ID_MAX = 1, (1 << 24) - 1
SG_ID_MIN, SG_ID_MAX = 8_000_000, (1 << 32) - 1
DEFAULT_ASN = 64512
PREDEFINED_TAG_TYPES = ["label", "application", "tier", "deployment", "site", "neutron_fwaas",
                        "neutron_tag"]
MULTI_VALUE_TAG_TYPES = {"label", "neutron_fwaas", "neutron_tag"}
SYSTEM_VNS = {
    ("default-domain", "default-project", "ip-fabric"),
    ("default-domain", "default-project", "__link_local__"),
}
PROTOCOL_IDS = {"any": 0, "icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "icmp6": 58, "sctp": 132}


def alloc_id(ws: WriteSet, space: str, owner: str, lo: int, hi: int) -> int:
    """The lowest free id of ``space`` in [lo, hi] (claims make it unique).  A per-space hint
    (the lowest id that may be free) keeps allocation O(1) as spaces fill up."""
    hints = ws.db.id_hints
    n = max(lo, hints.get(space, lo))
    while n <= hi:
        key = f"{CLAIM}id/{space}/{n}"
        if ws.claim_owner(key) is None:
            ws.claim(key, owner)
            hints[space] = n + 1  # ids below are taken; a failed write only costs a rescan
            return n
        n += 1
    if hints.get(space, lo) > lo:  # ids were freed below the hint: scan once from the bottom
        hints[space] = lo
        return alloc_id(ws, space, owner, lo, hi)
    raise ApiError(409, f"no free {space} id left in [{lo}, {hi}]")


def release_ids(ws: WriteSet, space: str, owner: str, *ids: Any) -> None:
    for n in ids:
        if n is None:
            continue
        key = f"{CLAIM}id/{space}/{n}"
        if ws.claim_owner(key) == owner:
            ws.release(key)
            ws.after_commit.append(functools.partial(_lower_hint, ws.db.id_hints, space, int(n)))


def _lower_hint(hints: dict[str, int], space: str, n: int) -> None:
    hints[space] = min(hints.get(space, n), n)


# ----------------------------------------------------------------------------------------------
# virtual-network
def vn_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    if data.get("virtual_network_network_id") is not None:
        raise forbidden("Cannot set the virtual network ID, it is allocated by the system")
    obj.props["virtual_network_network_id"] = alloc_id(ws, "vn", obj.uuid, VN_ID_MIN, VN_ID_MAX)
    _claim_vxlan(ws, obj, None)
    _sync_shared(obj, data)
    addressing.fill_vn_subnets(api, ws, obj, None)


def vn_post_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                   ctx: RequestCtx) -> None:
    api.create_child(ws, "routing-instance", [*obj.fq_name, obj.fq_name[-1]], "virtual-network",
                     ctx, derived=True, routing_instance_is_default=True)


def vn_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    if new.props.get("virtual_network_network_id") != old.props.get("virtual_network_network_id"):
        raise forbidden("Cannot update the virtual network ID")
    _claim_vxlan(ws, new, old)
    if "is_shared" in data or "perms2" in data:
        _sync_shared(new, data)
    if "network_ipam_refs" in data:
        addressing.fill_vn_subnets(api, ws, new, old)


def vn_pre_delete(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                  ctx: RequestCtx) -> None:
    if tuple(obj.fq_name) in SYSTEM_VNS:
        raise conflict(f"Can not delete system created default virtual-network {obj.uuid}")


def vn_post_delete(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                   ctx: RequestCtx) -> None:
    release_ids(ws, "vn", obj.uuid, obj.props.get("virtual_network_network_id"))
    release_ids(ws, "vxlan", obj.uuid, _vxlan_of(obj))
    addressing.release_vn(api, ws, obj)


def _vxlan_of(obj: Obj) -> int | None:
    props = obj.props.get("virtual_network_properties") or {}
    vx = props.get("vxlan_network_identifier")
    return int(vx) if isinstance(vx, int) and not isinstance(vx, bool) else None


def _claim_vxlan(ws: WriteSet, new: Obj, old: Obj | None) -> None:
    vx_new = _vxlan_of(new)
    vx_old = _vxlan_of(old) if old is not None else None
    if vx_new == vx_old:
        return
    if vx_new is not None and not ws.claim(f"{CLAIM}id/vxlan/{vx_new}", new.uuid):
        raise bad_request(f"VxLAN ID {vx_new} is already in use")
    if vx_old is not None:
        release_ids(ws, "vxlan", new.uuid, vx_old)


def _sync_shared(obj: Obj, data: dict[str, Any]) -> None:
    p2 = obj.props["perms2"]
    if data.get("is_shared") is True:
        p2["global_access"] = 7
    elif data.get("is_shared") is False and "is_shared" in data and p2.get("global_access") == 7:
        p2["global_access"] = 0
    obj.props["is_shared"] = p2.get("global_access") == 7


# ----------------------------------------------------------------------------------------------
# routing-instance
def ri_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    if not obj.derived and data.get("routing_instance_is_default") is not None:
        raise conflict("routing_instance_is_default is set by the system")


def ri_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    if new.props.get("routing_instance_is_default") != old.props.get(
            "routing_instance_is_default"):
        raise conflict("routing_instance_is_default cannot be changed")


# ----------------------------------------------------------------------------------------------
# virtual-machine-interface
def vmi_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    if not obj.refs.get("virtual_network_refs"):
        raise bad_request(
            "Bad Request: a virtual-machine-interface needs virtual_network_refs (its network)"
        )
    macs = (obj.props.get("virtual_machine_interface_mac_addresses") or {}).get("mac_address")
    if macs:
        obj.props["virtual_machine_interface_mac_addresses"] = {
            "mac_address": [str(m).replace("-", ":") for m in macs]
        }
    else:
        u = obj.uuid
        mac = "02:" + ":".join([u[0:2], u[2:4], u[4:6], u[6:8], u[9:11]])
        obj.props["virtual_machine_interface_mac_addresses"] = {"mac_address": [mac]}
    _check_vlan(obj)
    bindings = dict(obj.colls.get("virtual_machine_interface_bindings", []))
    if bindings or data.get("virtual_machine_interface_bindings") is not None:
        for key, value in (("vnic_type", "normal"), ("vif_type", "vrouter")):
            if key not in bindings:
                bindings[key] = {"key": key, "value": value}
        obj.colls["virtual_machine_interface_bindings"] = sorted(
            [[k, v] for k, v in bindings.items()])
    _vmi_ri_ref(ws, obj)


def vmi_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    _check_vlan(new)
    if "virtual_network_refs" in data:
        if not new.refs.get("virtual_network_refs"):
            raise bad_request("Bad Request: a virtual-machine-interface needs a virtual network")
        _vmi_ri_ref(ws, new)


def _check_vlan(obj: Obj) -> None:
    props = obj.props.get("virtual_machine_interface_properties") or {}
    tag = props.get("sub_interface_vlan_tag")
    if tag is not None and not (isinstance(tag, int) and 0 <= tag <= 4094):
        raise bad_request(f"Bad property: sub_interface_vlan_tag {tag} must be in [0, 4094]")


def _vmi_ri_ref(ws: WriteSet, obj: Obj) -> None:
    """Point the port at its network's primary routing instance, as TF does."""
    vn = ws.get(obj.refs["virtual_network_refs"][0]["uuid"])
    if vn is None:
        return
    ri_uuid = ws.lookup("routing-instance", [*vn.fq_name, vn.fq_name[-1]])

    def other_primary(ref: dict[str, Any]) -> bool:
        ri = ws.get(ref["uuid"])
        return ri is not None and ri.uuid != ri_uuid and bool(
            ri.props.get("routing_instance_is_default"))

    # a port moved to another network leaves its old network's primary instance
    refs = [r for r in obj.refs.get("routing_instance_refs", []) if not other_primary(r)]
    if ri_uuid is not None and all(r["uuid"] != ri_uuid for r in refs):
        refs.append({"uuid": ri_uuid, "attr": {"direction": "both"}})
    if refs:
        obj.refs["routing_instance_refs"] = refs


# ----------------------------------------------------------------------------------------------
# security-group and network-policy rules
def _check_rules(entries: Any, *, sg: bool, ctx_name: str) -> list[dict[str, Any]]:
    rules = (entries or {}).get("policy_rule") or []
    seen: list[dict[str, Any]] = []
    for rule in rules:
        if not isinstance(rule, dict):
            raise bad_request(f"Bad Request: {ctx_name} rule must be an object")
        key = {k: v for k, v in rule.items() if k not in ("rule_uuid", "last_modified",
                                                          "created")}
        if key in seen:
            raise conflict(f"Rule already exists: {rule}")
        seen.append(key)
        addrs = (rule.get("src_addresses") or []) + (rule.get("dst_addresses") or [])
        if sg:
            local = [a for a in addrs if isinstance(a, dict) and a.get("security_group") == "local"]
            if not local:
                raise bad_request(
                    "Bad Request: a security group rule needs 'local' as its source or "
                    "destination security_group"
                )
        else:
            if rule.get("action_list") is None:
                raise bad_request("Bad Request: a policy rule needs an action_list")
            if any(isinstance(a, dict) and a.get("security_group") for a in addrs):
                raise bad_request("Bad Request: a network policy rule cannot name a security group")
        if not rule.get("rule_uuid"):
            rule["rule_uuid"] = str(uuidlib.uuid4())
    rulecheck.check_policy_rules(rules, sg=sg, ctx_name=ctx_name)
    return rules


def sg_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    if data.get("security_group_id") is not None:
        raise forbidden("Cannot set the security group ID, it is allocated by the system")
    _check_rules(obj.props.get("security_group_entries"), sg=True, ctx_name="security group")
    configured = obj.props.get("configured_security_group_id")
    if configured:
        if not ws.claim(f"{CLAIM}id/sg/{configured}", obj.uuid):
            raise conflict(f"Security group id {configured} is already in use")
        obj.props["security_group_id"] = configured
    else:
        obj.props["security_group_id"] = alloc_id(ws, "sg", obj.uuid, SG_ID_MIN, SG_ID_MAX)


def sg_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    if "security_group_id" in data and data["security_group_id"] != old.props.get(
            "security_group_id"):
        raise forbidden("Cannot update the security group ID")
    _check_rules(new.props.get("security_group_entries"), sg=True, ctx_name="security group")


def sg_post_delete(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                   ctx: RequestCtx) -> None:
    release_ids(ws, "sg", obj.uuid, obj.props.get("security_group_id"))


def np_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    _check_rules(obj.props.get("network_policy_entries"), sg=False, ctx_name="policy")


def np_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    _check_rules(new.props.get("network_policy_entries"), sg=False, ctx_name="policy")


# ----------------------------------------------------------------------------------------------
# tags
def tag_pre_alloc(api: ConfigApi, ws: WriteSet, rt: ResourceType, data: dict[str, Any],
                  fq_name: list[str]) -> None:
    ttype, value = data.get("tag_type_name"), data.get("tag_value")
    if not ttype or not value or not isinstance(ttype, str) or not isinstance(value, str):
        raise bad_request("Bad Request: a tag needs tag_type_name and tag_value")
    if data.get("tag_type_refs"):
        raise bad_request("Bad Request: tag_type_refs is set by the system")
    data["tag_type_name"] = ttype = ttype.lower()
    name = f"{ttype}={value}"
    fq_name[-1] = name
    data["display_name"] = name


def tag_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    if data.get("tag_id") is not None:
        raise bad_request("Bad Request: tag_id is allocated by the system")
    ttype = obj.props["tag_type_name"]
    tt_uuid = ws.lookup("tag-type", [ttype])
    if tt_uuid is None:
        tt = api.create_child(ws, "tag-type", [ttype], None, ctx, derived=True)
        tt_uuid = tt.uuid
    tt_obj = ws.get(tt_uuid)
    assert tt_obj is not None
    type_id = int(str(tt_obj.props["tag_type_id"]), 16)
    value_id = alloc_id(ws, f"tag/{type_id}", obj.uuid, 1, 0xFFFF)
    obj.props["tag_id"] = f"0x{type_id:04x}{value_id:04x}"
    obj.refs["tag_type_refs"] = [{"uuid": tt_uuid, "attr": None}]


def tag_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    for key in ("tag_type_name", "tag_value", "tag_id"):
        if key in data and new.props.get(key) != old.props.get(key):
            raise bad_request(f"Bad Request: {key} of a tag cannot be changed")
    if "tag_type_refs" in data:
        raise bad_request("Bad Request: tag_type_refs is set by the system")


def tag_post_delete(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                    ctx: RequestCtx) -> None:
    tid = int(str(obj.props.get("tag_id", "0x0")), 16)
    release_ids(ws, f"tag/{tid >> 16}", obj.uuid, tid & 0xFFFF)


def tag_type_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                        data: dict[str, Any], ctx: RequestCtx) -> None:
    name = obj.fq_name[-1]
    if name in PREDEFINED_TAG_TYPES:
        n = PREDEFINED_TAG_TYPES.index(name)
        ws.claim(f"{CLAIM}id/tag-type/{n}", obj.uuid)
    else:
        n = alloc_id(ws, "tag-type", obj.uuid, len(PREDEFINED_TAG_TYPES), 0xFFFF)
    obj.props["tag_type_id"] = f"0x{n:04x}"


def tag_type_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                        data: dict[str, Any], ctx: RequestCtx) -> None:
    # the id is claimed at create: changing it would orphan the claim
    if "tag_type_id" in data and new.props.get("tag_type_id") != old.props.get("tag_type_id"):
        raise bad_request("Bad Request: tag_type_id of a tag-type cannot be changed")


def tag_type_post_delete(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                         ctx: RequestCtx) -> None:
    release_ids(ws, "tag-type", obj.uuid, int(str(obj.props.get("tag_type_id", "0")), 16))


# ----------------------------------------------------------------------------------------------
# firewall
def fwr_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    _fix_firewall_rule(api, ws, obj, creating=True)


def fwr_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    _fix_firewall_rule(api, ws, new, creating=False)


def _fix_firewall_rule(api: ConfigApi, ws: WriteSet, obj: Obj, creating: bool) -> None:
    rulecheck.check_firewall_rule(obj.props)
    service = obj.props.get("service")
    has_groups = bool(obj.refs.get("service_group_refs"))
    if creating and bool(service) == has_groups:
        raise bad_request(
            "Bad Request: a firewall rule needs exactly one of service and service_group_refs"
        )
    if service:
        proto = str(service.get("protocol") or "any").lower()
        if proto.isdigit():
            service["protocol_id"] = int(proto)
        elif proto in PROTOCOL_IDS:
            service["protocol_id"] = PROTOCOL_IDS[proto]
        else:
            raise bad_request(f"Bad Request: unknown protocol {proto!r} in firewall rule service")
    if "match_tag_types" not in obj.props:
        obj.props["match_tag_types"] = {"tag_type": [1]}
    match = [e for _, e in obj.colls.get("match_tags", [])]
    if match:
        # match_tags is a list property wrapped as {"tag_list": [...]}: elements are names
        names = [str(t) for t in match]
        if "label" in [n.lower() for n in names]:
            raise bad_request("Bad Request: label tags cannot be used to match")
        ids = []
        for n in names:
            if n.lower() not in PREDEFINED_TAG_TYPES:
                raise bad_request(f"Bad Request: unknown tag type {n!r} in match_tags")
            ids.append(PREDEFINED_TAG_TYPES.index(n.lower()))
        obj.props["match_tag_types"] = {"tag_type": ids}
    tag_refs: dict[str, dict[str, Any]] = {}
    ag_refs: dict[str, dict[str, Any]] = {}
    for ep_name in ("endpoint_1", "endpoint_2"):
        ep = obj.props.get(ep_name)
        if not ep:
            continue
        selectors = [k for k in ("tags", "address_group", "virtual_network", "subnet", "any")
                     if ep.get(k) not in (None, [], False)]
        if len(selectors) > 1:
            raise bad_request(
                f"Bad Request: {ep_name} may use only one of tags, address_group, "
                f"virtual_network, subnet and any (has {', '.join(selectors)})"
            )
        if ep.get("tags"):
            tag_ids = []
            for t in ep["tags"]:
                tag = _find_tag(ws, obj, str(t))
                tag_ids.append(int(str(tag.props["tag_id"]), 16))
                tag_refs[tag.uuid] = {"uuid": tag.uuid, "attr": None}
            ep["tag_ids"] = tag_ids
        if ep.get("address_group"):
            ag = _find_scoped(ws, obj, "address-group", str(ep["address_group"]))
            ag_refs[ag.uuid] = {"uuid": ag.uuid, "attr": None}
    if tag_refs:
        obj.refs["tag_refs"] = list(tag_refs.values())
    if ag_refs:
        obj.refs["address_group_refs"] = list(ag_refs.values())


def _find_tag(ws: WriteSet, scope_obj: Obj, text: str) -> Obj:
    """A tag named ``type=value`` (``global:type=value`` for a global one)."""
    name = text
    if name.startswith("global:"):
        candidates = [[name[len("global:"):]]]
    else:
        candidates = [[*_project_of(scope_obj), name], [name]]
    for fq in candidates:
        u = ws.lookup("tag", [fq[0], *fq[1:]]) if fq else None
        if u is not None:
            tag = ws.get(u)
            assert tag is not None
            return tag
    raise bad_request(f"Bad Request: tag {text!r} not found")


def _find_scoped(ws: WriteSet, scope_obj: Obj, rtype: str, text: str) -> Obj:
    fq = text.split(":")
    for candidate in (fq, [*scope_obj.fq_name[:-1], fq[-1]]):
        u = ws.lookup(rtype, candidate)
        if u is not None:
            found = ws.get(u)
            assert found is not None
            return found
    raise bad_request(f"Bad Request: {rtype} {text!r} not found")


def _project_of(obj: Obj) -> list[str]:
    return list(obj.fq_name[:2]) if len(obj.fq_name) >= 3 else []


# ----------------------------------------------------------------------------------------------
# project, singletons and others
def project_post_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                        ctx: RequestCtx) -> None:
    aps = api.create_child(ws, "application-policy-set",
                           [*obj.fq_name, "default-application-policy-set"], "project", ctx,
                           derived=True, all_applications=True)
    obj.refs.setdefault("application_policy_set_refs", []).append({"uuid": aps.uuid, "attr": None})
    ws.put(obj)


def gsc_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    if ws.db.by_type.get("global-system-config"):
        raise bad_request("Bad Request: only one global-system-config may exist")


def bgp_router_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                          data: dict[str, Any], ctx: RequestCtx) -> None:
    params = obj.props.get("bgp_router_parameters")
    if params and not params.get("router_type"):
        params["router_type"] = "control-node" if params.get("vendor") in (
            None, "contrail") else "router"


def ipam_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                    data: dict[str, Any], ctx: RequestCtx) -> None:
    addressing.fill_flat_subnets(obj)


def ipam_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                    data: dict[str, Any], ctx: RequestCtx) -> None:
    if "ipam_subnet_method" in data and new.props.get("ipam_subnet_method") != old.props.get(
            "ipam_subnet_method"):
        raise bad_request("Bad Request: ipam_subnet_method cannot be changed")
    addressing.fill_flat_subnets(new)


def st_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    domain = ws.get(obj.parent_uuid or "")
    if domain is not None:
        share = obj.props["perms2"].setdefault("share", [])
        share.append({"tenant": f"domain:{domain.uuid}", "tenant_access": 5})


def lr_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    for ref in obj.refs.get("virtual_machine_interface_refs", []):
        port = ws.get(ref["uuid"])
        if port is not None and port.refs.get("virtual_machine_refs"):
            raise conflict(f"Port {port.uuid} is already used by a virtual machine")
    if obj.props.get("logical_router_type") == "vxlan-routing":
        project = obj.fq_name[:-1]
        name = f"__contrail_lr_internal_vn_{obj.uuid}__"
        vn = api.create_child(ws, "virtual-network", [*project, name], "project", ctx,
                              derived=True, display_name=f"LR::{obj.fq_name[-1]}")
        obj.refs.setdefault("virtual_network_refs", []).append(
            {"uuid": vn.uuid, "attr": {"logical_router_virtual_network_type":
                                       "InternalVirtualNetwork"}})
    else:
        obj.props.setdefault("logical_router_type", "snat-routing")


def lr_post_delete(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                   ctx: RequestCtx) -> None:
    release_route_targets(api, ws, rt, obj, ctx)
    for ref in obj.refs.get("virtual_network_refs", []):
        vn = ws.get(ref["uuid"])
        if vn is not None and vn.derived and vn.fq_name[-1].startswith("__contrail_lr_internal"):
            api._delete(ws, api.rtype("virtual-network"), vn, ctx, cascade=True)


def release_route_targets(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                          ctx: RequestCtx) -> None:
    """Free the route-target numbers the transformer allocated for a routing instance or
    logical router (claims named after its ``target:ASN:N`` refs) with their owner."""
    for ref in obj.refs.get("route_target_refs", []):
        target = ws.get(ref["uuid"])
        n = target.fq_name[-1].rpartition(":")[2] if target is not None else ""
        if n.isdigit():
            release_ids(ws, "route-target", obj.uuid, int(n))


def _list_prop(obj: Obj, name: str, wrapper: str) -> list[Any]:
    """A list property's elements: kept in ``colls`` by the API, else as a wrapped prop."""
    if name in obj.colls:
        return [e for _, e in obj.colls[name]]
    return list((obj.props.get(name) or {}).get(wrapper) or [])


def ag_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    rulecheck.check_address_group(_list_prop(obj, "address_group_prefix", "subnet"))


def ag_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                  data: dict[str, Any], ctx: RequestCtx) -> None:
    ag_pre_create(api, ws, rt, new, data, ctx)


def svcgroup_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                        data: dict[str, Any], ctx: RequestCtx) -> None:
    rulecheck.check_service_group(_list_prop(obj, "service_group_firewall_service_list",
                                             "firewall_service"))


def svcgroup_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                        data: dict[str, Any], ctx: RequestCtx) -> None:
    svcgroup_pre_create(api, ws, rt, new, data, ctx)


# ----------------------------------------------------------------------------------------------
# registry and dispatch
PreCreate = Callable[["ConfigApi", WriteSet, ResourceType, Obj, dict[str, Any], RequestCtx], None]
PostCreate = Callable[["ConfigApi", WriteSet, ResourceType, Obj, RequestCtx], None]
PreUpdate = Callable[
    ["ConfigApi", WriteSet, ResourceType, Obj, Obj, dict[str, Any], RequestCtx], None]
PreAlloc = Callable[["ConfigApi", WriteSet, ResourceType, dict[str, Any], list[str]], None]

PRE_ALLOC: dict[str, PreAlloc] = {"tag": tag_pre_alloc}
PRE_CREATE: dict[str, PreCreate] = {
    "virtual-network": vn_pre_create,
    "routing-instance": ri_pre_create,
    "virtual-machine-interface": vmi_pre_create,
    "instance-ip": addressing.iip_pre_create,
    "floating-ip": addressing.fip_pre_create,
    "alias-ip": addressing.aip_pre_create,
    "security-group": sg_pre_create,
    "network-policy": np_pre_create,
    "tag": tag_pre_create,
    "tag-type": tag_type_pre_create,
    "firewall-rule": fwr_pre_create,
    "address-group": ag_pre_create,
    "service-group": svcgroup_pre_create,
    "global-system-config": gsc_pre_create,
    "bgp-router": bgp_router_pre_create,
    "network-ipam": ipam_pre_create,
    "service-template": st_pre_create,
    "logical-router": lr_pre_create,
}
POST_CREATE: dict[str, PostCreate] = {
    "virtual-network": vn_post_create,
    "project": project_post_create,
}
PRE_UPDATE: dict[str, PreUpdate] = {
    "virtual-network": vn_pre_update,
    "routing-instance": ri_pre_update,
    "virtual-machine-interface": vmi_pre_update,
    "instance-ip": addressing.iip_pre_update,
    "floating-ip": addressing.fip_pre_update,
    "alias-ip": addressing.aip_pre_update,
    "security-group": sg_pre_update,
    "network-policy": np_pre_update,
    "tag": tag_pre_update,
    "tag-type": tag_type_pre_update,
    "firewall-rule": fwr_pre_update,
    "address-group": ag_pre_update,
    "service-group": svcgroup_pre_update,
    "network-ipam": ipam_pre_update,
}
PRE_DELETE: dict[str, PostCreate] = {"virtual-network": vn_pre_delete}
POST_DELETE: dict[str, PostCreate] = {
    "virtual-network": vn_post_delete,
    "instance-ip": addressing.ip_owner_post_delete,
    "floating-ip": addressing.ip_owner_post_delete,
    "alias-ip": addressing.ip_owner_post_delete,
    "security-group": sg_post_delete,
    "tag": tag_post_delete,
    "tag-type": tag_type_post_delete,
    "logical-router": lr_post_delete,
    "routing-instance": release_route_targets,
}


def pre_alloc(api: ConfigApi, ws: WriteSet, rt: ResourceType, data: dict[str, Any],
              fq_name: list[str]) -> None:
    fn = PRE_ALLOC.get(rt.name)
    if fn:
        fn(api, ws, rt, data, fq_name)


def pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj, data: dict[str, Any],
               ctx: RequestCtx) -> None:
    fn = PRE_CREATE.get(rt.name)
    if fn:
        fn(api, ws, rt, obj, data, ctx)


def post_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                ctx: RequestCtx) -> None:
    fn = POST_CREATE.get(rt.name)
    if fn:
        fn(api, ws, rt, obj, ctx)


def pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
               data: dict[str, Any], ctx: RequestCtx) -> None:
    fn = PRE_UPDATE.get(rt.name)
    if fn:
        fn(api, ws, rt, old, new, data, ctx)


def post_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                ctx: RequestCtx) -> None:
    if rt.name == "virtual-network":
        addressing.invalidate(api, new.uuid)


def pre_delete(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj, ctx: RequestCtx) -> None:
    fn = PRE_DELETE.get(rt.name)
    if fn:
        fn(api, ws, rt, obj, ctx)


def post_delete(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                ctx: RequestCtx) -> None:
    fn = POST_DELETE.get(rt.name)
    if fn:
        fn(api, ws, rt, obj, ctx)


def on_read(api: ConfigApi, rt: ResourceType, obj: Obj, ctx: RequestCtx) -> None:
    """Reading a project recreates its default application-policy-set if it is missing."""
    if rt.name != "project":
        return
    if api.db.lookup("application-policy-set",
                     [*obj.fq_name, "default-application-policy-set"]) is None:
        def fix(ws: WriteSet) -> None:
            project = ws.get(obj.uuid)
            if project is not None:
                project_post_create(api, ws, rt, project.copy(), ctx)
        api.write(fix)


# ----------------------------------------------------------------------------------------------
# boot-time defaults
def ensure_defaults(api: ConfigApi) -> None:
    """Create the objects TF creates at boot; idempotent, so every start converges."""
    ctx = SYSTEM_CTX
    dp = ["default-domain", "default-project"]

    def ensure(ws: WriteSet, rtype: str, fq: list[str], parent: str | None,
               **fields: Any) -> Obj:
        u = ws.lookup(rtype, fq)
        if u is not None:
            found = ws.get(u)
            assert found is not None
            return found
        return api.create_child(ws, rtype, fq, parent, ctx, **fields)

    def boot(ws: WriteSet) -> None:
        gsc = ["default-global-system-config"]
        ensure(ws, "global-system-config", gsc, None, autonomous_system=DEFAULT_ASN,
               config_version="1")
        gvc = ensure(ws, "global-vrouter-config", [*gsc, "default-global-vrouter-config"],
                     "global-system-config")
        ensure(ws, "fabric", [*gsc, "default-fabric"], "global-system-config")
        for tt in PREDEFINED_TAG_TYPES:
            ensure(ws, "tag-type", [tt], None, id_perms={"user_visible": False})
        ensure(ws, "domain", ["default-domain"], None)
        ensure(ws, "project", dp, "domain")
        ensure(ws, "namespace", ["default-domain", "default-namespace"], "domain")
        ensure(ws, "network-ipam", [*dp, "default-network-ipam"], "project",
               perms2={"global_access": 5})
        ensure(ws, "network-ipam", [*dp, "service-chain-flat-ipam"], "project",
               ipam_subnet_method="flat-subnet",
               ipam_subnets={"subnets": [
                   {"subnet": {"ip_prefix": "0.0.0.0", "ip_prefix_len": 8}},
                   {"subnet": {"ip_prefix": "::ffff", "ip_prefix_len": 104}}]})
        ensure(ws, "virtual-network", [*dp, "default-virtual-network"], "project")
        ipf = ensure(ws, "virtual-network", [*dp, "ip-fabric"], "project",
                     is_provider_network=True)
        ensure(ws, "routing-instance", [*ipf.fq_name, "__default__"], "virtual-network")
        ensure(ws, "virtual-network", [*dp, "__link_local__"], "project")
        dci = ensure(ws, "virtual-network", [*dp, "dci-network"], "project")
        ensure(ws, "routing-instance", [*dci.fq_name, "__default__"], "virtual-network")
        ensure(ws, "security-group", [*dp, "__no_rule__"], "project",
               security_group_entries={"policy_rule": []}, perms2={"global_access": 5})
        pm = ensure(ws, "policy-management", ["default-policy-management"], None)
        ensure(ws, "application-policy-set", [*pm.fq_name, "default-application-policy-set"],
               "policy-management", all_applications=True,
               global_vrouter_config_refs=[{"uuid": gvc.uuid}])

    api.write(boot)
