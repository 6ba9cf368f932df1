"""Subnets of networks and address allocation for instance-, floating- and alias-IPs.

Every allocated address is a claim ``claim/ip/<scope uuid>/<address>`` written in the same
transaction as its owner (the scope is the network, or a flat ipam), so two owners can never
hold one address and a crash can never leave an address allocated without an owner.
"""

from __future__ import annotations

import functools
import ipaddress
import uuid as uuidlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tungsten.api.context import RequestCtx
from tungsten.api.errors import ApiError, bad_request, conflict, not_found
from tungsten.api.ipam import (
    SubnetAllocator,
    SubnetError,
    default_dns,
    default_gateway,
    parse_subnet,
    to_str,
)
from tungsten.api.objdb import CLAIM, Obj, WriteSet
from tungsten.model.schema import ResourceType

if TYPE_CHECKING:
    from tungsten.api.core import ConfigApi

RESERVED_OWNER = "reserved"  # addresses taken through the ip-alloc action
NO_ALLOC_VNS = {"ip-fabric", "__link_local__"}


def ip_claim(scope: str, addr: str) -> str:
    return f"{CLAIM}ip/{scope}/{addr}"


# ----------------------------------------------------------------------------------------------
# subnets of a network
def vn_subnets(ws: WriteSet, vn: Obj) -> Iterator[tuple[dict[str, Any], bool]]:
    """(ipam subnet dict, is_flat) for every subnet of a network."""
    for ref in vn.refs.get("network_ipam_refs", []):
        attr = ref.get("attr") or {}
        subnets = attr.get("ipam_subnets") or []
        ipam = ws.get(ref["uuid"])
        flat = ipam is not None and ipam.props.get("ipam_subnet_method") == "flat-subnet"
        if flat and ipam is not None:
            for s in flat_subnets(ipam):
                yield s, True
            continue
        for s in subnets:
            if isinstance(s, dict) and s.get("subnet"):
                yield s, False


def flat_subnets(ipam: Obj) -> list[dict[str, Any]]:
    """The subnets of a flat ipam that allocation can use.  Entries that are not strict
    prefixes (the boot-time ``::ffff/104`` of service-chain-flat-ipam) only mark a range."""
    out = []
    for _, s in ipam.colls.get("ipam_subnets", []):
        try:
            parse_subnet(s.get("subnet"))
        except SubnetError:
            continue
        out.append(s)
    return out


def fill_vn_subnets(api: ConfigApi, ws: WriteSet, vn: Obj, old: Obj | None) -> None:
    """Fill subnet_uuid, default_gateway and dns_server_address; refuse overlaps and removing
    a subnet whose addresses are in use."""
    old_uuids: dict[str, str] = {}
    if old is not None:
        for s, _ in vn_subnets(ws, old):
            if s.get("subnet_uuid"):
                old_uuids[_prefix_key(s)] = s["subnet_uuid"]
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for ref in vn.refs.get("network_ipam_refs", []):
        ipam = ws.get(ref["uuid"])
        attr = ref.get("attr") or {}
        if ipam is not None and ipam.props.get("ipam_subnet_method") == "flat-subnet":
            subnets = attr.get("ipam_subnets") or [{}]
            for s in subnets:
                if isinstance(s, dict) and not s.get("subnet_uuid"):
                    s["subnet_uuid"] = str(uuidlib.uuid4())
            ref["attr"] = {**attr, "ipam_subnets": subnets}
            continue
        for s in attr.get("ipam_subnets") or []:
            if not isinstance(s, dict):
                continue
            try:
                net = parse_subnet(s.get("subnet"))
            except SubnetError as e:
                raise bad_request(f"Bad subnet in network_ipam_refs: {e}") from e
            for other in nets:
                if net.version == other.version and net.overlaps(other):
                    raise bad_request(f"Overlapping subnets {net} and {other} in one network")
            nets.append(net)
            from_start = bool(s.get("addr_from_start"))
            if not s.get("subnet_uuid"):
                s["subnet_uuid"] = old_uuids.get(_prefix_key(s)) or str(uuidlib.uuid4())
            if s.get("default_gateway") is None:
                s["default_gateway"] = default_gateway(net, from_start)
            if s.get("dns_server_address") is None:
                s["dns_server_address"] = default_dns(net, from_start)
            for key in ("default_gateway", "dns_server_address"):
                value = s.get(key)
                if value is None or value in ("0.0.0.0", "::"):
                    continue
                try:
                    if ipaddress.ip_address(value) not in net:
                        raise bad_request(f"Bad subnet: {key} {value} is not inside {net}")
                except ValueError as e:
                    raise bad_request(f"Bad subnet: {key} {value!r} is not an address") from e
            try:
                SubnetAllocator.build(s)
            except SubnetError as e:
                raise bad_request(f"Bad subnet: {e}") from e
    if old is not None:
        _check_removed_subnets(ws, vn, nets)
    ws.after_commit.append(lambda: invalidate(api, vn.uuid))


def _prefix_key(s: dict[str, Any]) -> str:
    sub = s.get("subnet") or {}
    return f"{sub.get('ip_prefix')}/{sub.get('ip_prefix_len')}"


def _check_removed_subnets(
    ws: WriteSet, vn: Obj, nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> None:
    prefix = ip_claim(vn.uuid, "")
    for key, owner in ws.db.claims.items():
        if not key.startswith(prefix) or ws.claim_owner(key) is None:
            continue
        addr = ipaddress.ip_address(key[len(prefix):])
        if not any(addr.version == n.version and addr in n for n in nets):
            raise conflict(
                f"Cannot remove the subnet holding {addr}: the address is in use by {owner}; "
                "delete its instance-ip first"
            )


def fill_flat_subnets(ipam: Obj) -> None:
    for _, s in ipam.colls.get("ipam_subnets", []):
        if isinstance(s, dict) and not s.get("subnet_uuid"):
            s["subnet_uuid"] = str(uuidlib.uuid4())
        if not isinstance(s, dict) or not s.get("subnet"):
            continue
        # TF reserves the gateway and DNS addresses of flat subnets too
        try:
            net = parse_subnet(s["subnet"])
        except SubnetError:
            continue  # e.g. the boot-time ::ffff/104, which has host bits set
        from_start = bool(s.get("addr_from_start"))
        if s.get("default_gateway") is None:
            s["default_gateway"] = default_gateway(net, from_start)
        if s.get("dns_server_address") is None:
            s["dns_server_address"] = default_dns(net, from_start)


def invalidate(api: ConfigApi, vn_uuid: str) -> None:
    for key in [k for k in api.allocators if k[0] == vn_uuid]:
        del api.allocators[key]


def release_vn(api: ConfigApi, ws: WriteSet, vn: Obj) -> None:
    """A deleted network frees its ip-alloc reservations."""
    prefix = ip_claim(vn.uuid, "")
    for key in [k for k in ws.db.claims if k.startswith(prefix)]:
        ws.release(key)
    ws.after_commit.append(lambda: invalidate(api, vn.uuid))


# ----------------------------------------------------------------------------------------------
# allocation
def _allocator(api: ConfigApi, scope: str, s: dict[str, Any]) -> SubnetAllocator:
    key = (scope, str(s.get("subnet_uuid")))
    alloc = api.allocators.get(key)
    if alloc is None:
        alloc = api.allocators[key] = SubnetAllocator.build(s)
    return alloc


def _family_ok(s: dict[str, Any], family: str | None) -> bool:
    if family is None:
        return True
    version = parse_subnet(s.get("subnet")).version
    return (family == "v4" and version == 4) or (family == "v6" and version == 6)


def allocate(
    api: ConfigApi, ws: WriteSet, scope: str, subnets: list[dict[str, Any]], owner: str,
    family: str | None = None, subnet_uuid: str | None = None,
) -> tuple[str, dict[str, Any]] | None:
    """Allocate one address; returns (address, subnet) or None when every subnet is full."""
    if subnet_uuid is not None:
        subnets = [s for s in subnets if s.get("subnet_uuid") == subnet_uuid]
        if not subnets:
            raise not_found(f"Subnet {subnet_uuid} not found")
    for s in subnets:
        if not s.get("subnet") or not _family_ok(s, family):
            continue
        alloc = _allocator(api, scope, s)
        version = alloc.net.version

        def used(addr: int, version: int = version) -> bool:
            return ws.claim_owner(ip_claim(scope, to_str(addr, version))) is not None

        addr = alloc.allocate(used)
        if addr is None:
            continue
        text = to_str(addr, version)
        ws.claim(ip_claim(scope, text), owner)
        ws.after_commit.append(functools.partial(alloc.advance, addr))
        return text, s
    return None


def claim_address(
    api: ConfigApi, ws: WriteSet, scope: str, subnets: list[dict[str, Any]], owner: str,
    address: str, kind: str,
) -> dict[str, Any] | None:
    """Claim a requested address; the subnet holding it (None when outside every subnet)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as e:
        raise bad_request(f"Bad property: {kind} {address!r} is not an IP address") from e
    address = str(ip)
    holder: dict[str, Any] | None = None
    for s in subnets:
        if s.get("subnet") and ip in parse_subnet(s["subnet"]):
            holder = s
            if address in (s.get("default_gateway"), s.get("dns_server_address")):
                raise bad_request(
                    f"Bad Request: {address} is the gateway or DNS address of its subnet"
                )
            break
    if not ws.claim(ip_claim(scope, address), owner):
        raise conflict(f"IP address already in use: {address}")
    return holder


def _subnet_props(obj: Obj, s: dict[str, Any] | None, prefix: str) -> None:
    if s is None:
        return
    if prefix == "instance_ip":
        obj.props["subnet_uuid"] = s.get("subnet_uuid")
        obj.props["instance_ip_subnet"] = dict(s["subnet"])


# ----------------------------------------------------------------------------------------------
# instance-ip
def iip_scope(ws: WriteSet, obj: Obj) -> tuple[str | None, list[dict[str, Any]], Obj | None]:
    """(scope uuid, subnets, network) that an instance-ip takes its address from."""
    vn_refs = obj.refs.get("virtual_network_refs")
    if vn_refs:
        vn = ws.get(vn_refs[0]["uuid"])
        if vn is None:
            return None, [], None
        subnets = list(vn_subnets(ws, vn))
        flat_ipams = {r["uuid"] for r in vn.refs.get("network_ipam_refs", [])
                      if (i := ws.get(r["uuid"])) is not None
                      and i.props.get("ipam_subnet_method") == "flat-subnet"}
        if subnets and len(flat_ipams) == 1 and all(flat for _, flat in subnets):
            # a flat ipam is one address space, shared by every network that uses it
            return flat_ipams.pop(), [s for s, _ in subnets], vn
        return vn.uuid, [s for s, _ in subnets], vn
    ipam_refs = obj.refs.get("network_ipam_refs")
    if ipam_refs:
        ipam = ws.get(ipam_refs[0]["uuid"])
        if ipam is not None:
            return ipam.uuid, flat_subnets(ipam), None
    return None, [], None


def iip_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    scope, subnets, vn = iip_scope(ws, obj)
    if scope is None:
        raise bad_request(
            "Bad Request: an instance-ip needs virtual_network_refs (or a flat network_ipam_refs)"
        )
    if vn is not None and vn.fq_name[-1] in NO_ALLOC_VNS:
        return
    family = obj.props.get("instance_ip_family")
    address = obj.props.get("instance_ip_address")
    if address:
        holder = claim_address(api, ws, scope, subnets, obj.uuid, address, "instance_ip_address")
        obj.props["instance_ip_address"] = str(ipaddress.ip_address(address))
        _subnet_props(obj, holder, "instance_ip")
        return
    if not subnets:
        name = vn.fq_name if vn is not None else scope
        raise bad_request(f"Bad Request: virtual network {name} has no subnets to allocate from")
    got = allocate(api, ws, scope, subnets, obj.uuid, family, obj.props.get("subnet_uuid"))
    if got is None:
        name = vn.fq_name if vn is not None else scope
        raise bad_request(
            f"Bad Request: virtual network {name} has exhausted its subnet(s): no free "
            "address left; add a subnet or free addresses"
        )
    address, s = got
    obj.props["instance_ip_address"] = address
    obj.props.setdefault("instance_ip_family", "v6" if ":" in address else "v4")
    _subnet_props(obj, s, "instance_ip")


def iip_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    if "instance_ip_address" in data and new.props.get("instance_ip_address") != old.props.get(
            "instance_ip_address"):
        raise bad_request("Bad Request: instance_ip_address cannot be changed")
    if new.refs.get("virtual_network_refs") != old.refs.get("virtual_network_refs"):
        raise bad_request("Bad Request: the network of an instance-ip cannot be changed")


# ----------------------------------------------------------------------------------------------
# floating-ip and alias-ip
def _pool_scope(ws: WriteSet, obj: Obj, pool_type: str) -> tuple[Obj, list[dict[str, Any]]]:
    parent = ws.get(obj.parent_uuid or "")
    if parent is None:
        raise bad_request(f"Bad Request: the {pool_type} of {obj.fq_name} does not exist")
    if parent.type == "instance-ip":
        _scope, subnets, vn = iip_scope(ws, parent)
        if vn is None:
            raise bad_request("Bad Request: the instance-ip parent has no network")
        return vn, subnets
    vn = ws.get(parent.parent_uuid or "")
    if vn is None:
        raise bad_request(f"Bad Request: the network of {parent.fq_name} does not exist")
    subnets = [s for s, _ in vn_subnets(ws, vn)]
    limit = (parent.props.get("floating_ip_pool_subnets") or {}).get("subnet_uuid")
    if limit:
        subnets = [s for s in subnets if s.get("subnet_uuid") in limit]
    return vn, subnets


def _pool_ip_pre_create(api: ConfigApi, ws: WriteSet, obj: Obj, prefix: str, pool: str) -> None:
    vn, subnets = _pool_scope(ws, obj, pool)
    addr_key = f"{prefix}_address"
    family = obj.props.get(f"{prefix}_address_family")
    address = obj.props.get(addr_key)
    if address:
        claim_address(api, ws, vn.uuid, subnets, obj.uuid, address, addr_key)
        obj.props[addr_key] = str(ipaddress.ip_address(address))
    else:
        got = allocate(api, ws, vn.uuid, subnets, obj.uuid, family)
        if got is None:
            raise bad_request(
                f"Bad Request: the {pool} of network {vn.fq_name} has no free address left"
            )
        obj.props[addr_key] = got[0]
    obj.props.setdefault(f"{prefix}_address_family",
                         "v6" if ":" in obj.props[addr_key] else "v4")
    if not obj.refs.get("project_refs") and len(obj.fq_name) >= 2:
        project = ws.lookup("project", obj.fq_name[:2])
        if project is not None:
            obj.refs["project_refs"] = [{"uuid": project, "attr": None}]


def fip_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    _pool_ip_pre_create(api, ws, obj, "floating_ip", "floating-ip-pool")


def aip_pre_create(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    _pool_ip_pre_create(api, ws, obj, "alias_ip", "alias-ip-pool")


def fip_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    if new.props.get("floating_ip_address") != old.props.get("floating_ip_address"):
        raise bad_request("Bad Request: floating_ip_address cannot be changed")


def aip_pre_update(api: ConfigApi, ws: WriteSet, rt: ResourceType, old: Obj, new: Obj,
                   data: dict[str, Any], ctx: RequestCtx) -> None:
    # the address is claimed at create: changing it would orphan the claim
    if new.props.get("alias_ip_address") != old.props.get("alias_ip_address"):
        raise bad_request("Bad Request: alias_ip_address cannot be changed")


def _owned_address(obj: Obj) -> str | None:
    for key in ("instance_ip_address", "floating_ip_address", "alias_ip_address"):
        if obj.props.get(key):
            return str(obj.props[key])
    return None


def ip_owner_post_delete(api: ConfigApi, ws: WriteSet, rt: ResourceType, obj: Obj,
                         ctx: RequestCtx) -> None:
    address = _owned_address(obj)
    if address is None:
        return
    scope: str | None = None
    if obj.type == "instance-ip":
        scope = iip_scope(ws, obj)[0]
    else:
        try:
            scope = _pool_scope(ws, obj, obj.type + "-pool")[0].uuid
        except ApiError:
            scope = None
    if scope is not None and ws.claim_owner(ip_claim(scope, address)) == obj.uuid:
        keys = [(ip_claim(scope, address), obj.uuid)]
    else:  # the scope is gone or changed: find the claim the slow way
        keys = list(_claims_of(ws, address))
    for key, owner in keys:
        if owner == obj.uuid:
            ws.release(key)
            scope = key[len(CLAIM) + 3 : -(len(address) + 1)]
            ws.after_commit.append(functools.partial(_freed, api, scope, address))


def _claims_of(ws: WriteSet, address: str) -> Iterator[tuple[str, str]]:
    suffix = "/" + address
    for key, owner in ws.db.claims.items():
        if key.startswith(CLAIM + "ip/") and key.endswith(suffix):
            yield key, owner
    for key, staged in ws.claims.items():
        if staged is not None and key.startswith(CLAIM + "ip/") and key.endswith(suffix):
            yield key, staged


def _freed(api: ConfigApi, scope: str, address: str) -> None:
    n = int(ipaddress.ip_address(address))
    for (s, _), alloc in api.allocators.items():
        if s == scope and alloc.contains(n):
            alloc.freed(n)


# ----------------------------------------------------------------------------------------------
# the virtual-network ip-alloc / ip-free / subnet-ip-count actions
def ip_alloc(api: ConfigApi, vn_uuid: str, body: Any) -> dict[str, Any]:
    vn = _action_vn(api, vn_uuid)
    body = body if isinstance(body, dict) else {}
    count = body.get("count") or 1
    if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= 4096:
        raise bad_request("Bad Request: count must be an integer in [1, 4096]")
    family = body.get("family")
    if family not in (None, "v4", "v6"):
        raise bad_request("Bad Request: family must be v4 or v6")

    def run(ws: WriteSet) -> list[str]:
        subnets = [s for s, _ in vn_subnets(ws, vn)]
        out = []
        for _ in range(count):
            got = allocate(api, ws, vn.uuid, subnets, RESERVED_OWNER, family, body.get("subnet"))
            if got is None:
                raise ApiError(409, f"Virtual network {vn.fq_name} has no free address left")
            out.append(got[0])
        return out

    return {"ip_addr": api.write(run)}


def ip_free(api: ConfigApi, vn_uuid: str, body: Any) -> None:
    vn = _action_vn(api, vn_uuid)
    addrs = body.get("ip_addr") if isinstance(body, dict) else None
    if not isinstance(addrs, list):
        raise bad_request("Bad Request: ip_addr must be a list of addresses")

    def run(ws: WriteSet) -> None:
        for a in addrs:
            try:
                text = str(ipaddress.ip_address(str(a)))
            except ValueError as e:
                raise bad_request(f"Bad Request: {a!r} is not an IP address") from e
            key = ip_claim(vn.uuid, text)
            if ws.claim_owner(key) == RESERVED_OWNER:
                ws.release(key)
                ws.after_commit.append(functools.partial(_freed, api, vn.uuid, text))

    api.write(run)


def subnet_ip_count(api: ConfigApi, vn_uuid: str, body: Any) -> dict[str, Any]:
    vn = _action_vn(api, vn_uuid)
    subnets = body.get("subnet_list") if isinstance(body, dict) else None
    if not isinstance(subnets, list):
        raise bad_request("Bad Request: subnet_list must be a list of a.b.c.d/nn prefixes")
    nets = []
    for text in subnets:
        try:
            nets.append(ipaddress.ip_network(str(text), strict=False))
        except ValueError as e:
            raise bad_request(f"Bad Request: {text!r} is not a prefix") from e
    prefix = ip_claim(vn.uuid, "")
    used = [ipaddress.ip_address(k[len(prefix):]) for k in api.db.claims if k.startswith(prefix)]
    counts = [sum(1 for a in used if a.version == n.version and a in n) for n in nets]
    return {"ip_count_list": counts}


def _action_vn(api: ConfigApi, vn_uuid: str) -> Obj:
    vn = api.db.get(vn_uuid)
    if vn is None or vn.type != "virtual-network":
        raise not_found(f"Virtual network {vn_uuid} not found")
    return vn
