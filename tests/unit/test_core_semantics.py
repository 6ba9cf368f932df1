"""Server-side semantics of the config API core, in process on an in-memory store (§2, §4, §6)."""

from __future__ import annotations

import re
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from tungsten.api import hooks
from tungsten.api.context import RequestCtx
from tungsten.api.core import ConfigApi
from tungsten.api.errors import ApiError
from tungsten.store import open_store

CTX = RequestCtx()
DOMAIN = ["default-domain"]
PROJECT = ["default-domain", "default-project"]
IPAM = [*PROJECT, "default-network-ipam"]


@pytest.fixture
def api() -> ConfigApi:
    return ConfigApi(open_store("sqlite:///:memory:"))


# -- helpers -------------------------------------------------------------------------------------
def create(api: ConfigApi, rtype: str, fq_name: list[str], parent: str | None = None,
           **fields: Any) -> str:
    body: dict[str, Any] = {"fq_name": fq_name, "uuid": None, **fields}
    if parent:
        body["parent_type"] = parent
    return str(api.create(rtype, {rtype: body}, CTX)[rtype]["uuid"])


def read(api: ConfigApi, rtype: str, uuid: str) -> dict[str, Any]:
    body: dict[str, Any] = api.read(rtype, uuid, CTX)[rtype]
    return body


def uuid_of(api: ConfigApi, rtype: str, fq_name: list[str]) -> str:
    return str(api.fq_name_to_id({"type": rtype, "fq_name": fq_name})["uuid"])


def fails(status: int, fn: Any, *args: Any, match: str | None = None, **kwargs: Any
          ) -> ApiError:
    """Call ``fn`` and check the ApiError it raises (``match`` is a regex on the message)."""
    with pytest.raises(ApiError) as e:
        fn(*args, **kwargs)
    assert e.value.status == status, e.value.message
    if match is not None:
        assert re.search(match, e.value.message), e.value.message
    return e.value


def subnet(prefix: str, length: int, **extra: Any) -> dict[str, Any]:
    return {"subnet": {"ip_prefix": prefix, "ip_prefix_len": length}, **extra}


def ipam_ref(*subnets: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"to": IPAM, "attr": {"ipam_subnets": list(subnets), "host_routes": None}}]


def make_vn(api: ConfigApi, name: str, *subnets: dict[str, Any], **fields: Any) -> str:
    if subnets:
        fields["network_ipam_refs"] = ipam_ref(*subnets)
    return create(api, "virtual-network", [*PROJECT, name], "project", **fields)


def vn_subnets(api: ConfigApi, vn: str) -> list[dict[str, Any]]:
    refs = read(api, "virtual-network", vn)["network_ipam_refs"]
    return [s for r in refs for s in r["attr"]["ipam_subnets"]]


def make_iip(api: ConfigApi, name: str, vn_fq: list[str], **fields: Any) -> str:
    return create(api, "instance-ip", [name], virtual_network_refs=[{"to": vn_fq}], **fields)


def iip_addr(api: ConfigApi, uuid: str) -> str:
    return str(read(api, "instance-ip", uuid)["instance_ip_address"])


def make_vmi(api: ConfigApi, name: str, vn_fq: list[str], **fields: Any) -> str:
    return create(api, "virtual-machine-interface", [*PROJECT, name], "project",
                  virtual_network_refs=[{"to": vn_fq}], **fields)


def snapshot(api: ConfigApi) -> tuple[dict[str, str], set[str]]:
    return dict(api.db.claims), set(api.db.objs)


# -- boot defaults ------------------------------------------------------------------------------
BOOT_OBJECTS = [
    ("global-system-config", ["default-global-system-config"]),
    ("global-vrouter-config", ["default-global-system-config", "default-global-vrouter-config"]),
    ("domain", DOMAIN),
    ("project", PROJECT),
    ("network-ipam", IPAM),
    ("virtual-network", [*PROJECT, "default-virtual-network"]),
    ("routing-instance", [*PROJECT, "default-virtual-network", "default-virtual-network"]),
    ("virtual-network", [*PROJECT, "ip-fabric"]),
    ("routing-instance", [*PROJECT, "ip-fabric", "ip-fabric"]),
    ("routing-instance", [*PROJECT, "ip-fabric", "__default__"]),
    ("virtual-network", [*PROJECT, "__link_local__"]),
    ("routing-instance", [*PROJECT, "__link_local__", "__link_local__"]),
    ("policy-management", ["default-policy-management"]),
    ("application-policy-set", ["default-policy-management", "default-application-policy-set"]),
    ("security-group", [*PROJECT, "__no_rule__"]),
]


@pytest.mark.parametrize(("rtype", "fq_name"), BOOT_OBJECTS)
def test_boot_object_exists(api: ConfigApi, rtype: str, fq_name: list[str]) -> None:
    assert api.db.lookup(rtype, fq_name) is not None


def test_boot_object_values(api: ConfigApi) -> None:
    gsc = read(api, "global-system-config", uuid_of(api, "global-system-config",
                                                    ["default-global-system-config"]))
    assert gsc["autonomous_system"] == 64512
    ipam = read(api, "network-ipam", uuid_of(api, "network-ipam", IPAM))
    assert ipam["perms2"]["global_access"] == 5
    ipf = read(api, "virtual-network", uuid_of(api, "virtual-network", [*PROJECT, "ip-fabric"]))
    assert ipf["is_provider_network"] is True
    ri = read(api, "routing-instance", uuid_of(
        api, "routing-instance", [*PROJECT, "default-virtual-network", "default-virtual-network"]))
    assert ri["routing_instance_is_default"] is True
    aps = read(api, "application-policy-set", uuid_of(
        api, "application-policy-set",
        ["default-policy-management", "default-application-policy-set"]))
    assert aps["all_applications"] is True
    assert aps["global_vrouter_config_refs"][0]["to"] == [
        "default-global-system-config", "default-global-vrouter-config"]
    sg = read(api, "security-group", uuid_of(api, "security-group", [*PROJECT, "__no_rule__"]))
    assert not sg.get("security_group_entries", {}).get("policy_rule")
    assert sg["perms2"]["global_access"] == 5
    default_vn = read(api, "virtual-network",
                      uuid_of(api, "virtual-network", [*PROJECT, "default-virtual-network"]))
    assert isinstance(default_vn["virtual_network_network_id"], int)


def test_boot_tag_types(api: ConfigApi) -> None:
    names = ["label", "application", "tier", "deployment", "site", "neutron_fwaas", "neutron_tag"]
    for n, name in enumerate(names):
        tt = read(api, "tag-type", uuid_of(api, "tag-type", [name]))
        assert tt["tag_type_id"] == f"0x{n:04x}"
        assert tt["id_perms"]["user_visible"] is False


def test_restart_creates_no_duplicates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'config.db'}"
    first = ConfigApi(open_store(url))
    vn = make_vn(first, "survivor", subnet("192.0.2.0", 24))
    iip = make_iip(first, "iip-survivor", [*PROJECT, "survivor"])
    objs = {u: (o.type, tuple(o.fq_name)) for u, o in first.db.objs.items()}
    claims = dict(first.db.claims)
    first.db.store.close()

    second = ConfigApi(open_store(url))
    assert {u: (o.type, tuple(o.fq_name)) for u, o in second.db.objs.items()} == objs
    assert second.db.claims == claims
    per_name = [(o.type, tuple(o.fq_name)) for o in second.db.objs.values()]
    assert len(per_name) == len(set(per_name))
    # the state is usable: the next address continues below the first one, ids stay unique
    assert iip_addr(second, iip) == "192.0.2.252"
    assert iip_addr(second, make_iip(second, "iip-2", [*PROJECT, "survivor"])) == "192.0.2.251"
    other = make_vn(second, "after-restart")
    ids = [o.props["virtual_network_network_id"]
           for o in second.db.by_type["virtual-network"].values()]
    assert len(ids) == len(set(ids))
    assert read(second, "virtual-network", vn)["virtual_network_network_id"] != read(
        second, "virtual-network", other)["virtual_network_network_id"]
    second.db.store.close()


# -- create basics, id_perms and perms2 -----------------------------------------------------------
def test_create_reply_and_defaults(api: ConfigApi) -> None:
    r = api.create("virtual-network",
                   {"virtual-network": {"fq_name": [*PROJECT, "vn"], "parent_type": "project",
                                        "uuid": None}}, CTX)["virtual-network"]
    assert r["fq_name"] == [*PROJECT, "vn"] and r["name"] == "vn"
    assert r["parent_type"] == "project"
    assert r["parent_uuid"] == uuid_of(api, "project", PROJECT)
    assert str(uuidlib.UUID(r["uuid"])) == r["uuid"]
    vn = read(api, "virtual-network", r["uuid"])
    assert vn["display_name"] == "vn"
    ip = vn["id_perms"]
    assert ip["permissions"] == {"owner": "cloud-admin", "owner_access": 7,
                                 "group": "cloud-admin-group", "group_access": 7,
                                 "other_access": 7}
    assert ip["enable"] is True and ip["user_visible"] is True
    assert ip["description"] is None and ip["creator"] is None
    assert ip["created"] == ip["last_modified"]
    n = uuidlib.UUID(r["uuid"]).int
    assert ip["uuid"] == {"uuid_mslong": n >> 64, "uuid_lslong": n & ((1 << 64) - 1)}
    # owner: the parent's owner, which for default-project is its uuid without dashes
    project = uuid_of(api, "project", PROJECT)
    assert vn["perms2"] == {"owner": project.replace("-", ""), "owner_access": 7,
                            "global_access": 0, "share": []}


def test_perms2_owner_rules(api: ConfigApi) -> None:
    p = create(api, "project", [*DOMAIN, "tenant"], "domain")
    assert read(api, "project", p)["perms2"]["owner"] == p.replace("-", "")
    d = create(api, "domain", ["other-domain"])
    assert read(api, "domain", d)["perms2"]["owner"] == "cloud-admin"
    ctx = RequestCtx(project_id="0123456789abcdef0123456789abcdef")
    vm = api.create("virtual-machine", {"virtual-machine": {"fq_name": ["vm1"]}}, ctx)
    got = read(api, "virtual-machine", vm["virtual-machine"]["uuid"])
    assert got["perms2"]["owner"] == "0123456789abcdef0123456789abcdef"
    given = create(api, "virtual-machine", ["vm2"], perms2={"owner": "someone",
                                                            "owner_access": 5})
    assert read(api, "virtual-machine", given)["perms2"]["owner"] == "someone"
    assert read(api, "virtual-machine", given)["perms2"]["owner_access"] == 5


def test_id_perms_given_at_create(api: ConfigApi) -> None:
    vm = create(api, "virtual-machine", ["vm"], id_perms={
        "enable": False, "description": "d", "creator": "me", "user_visible": True,
        "permissions": None, "uuid": None, "created": None, "last_modified": None})
    ip = read(api, "virtual-machine", vm)["id_perms"]
    assert (ip["enable"], ip["description"], ip["creator"]) == (False, "d", "me")
    assert ip["uuid"]["uuid_mslong"] == uuidlib.UUID(vm).int >> 64


def test_user_invisible_needs_admin(api: ConfigApi) -> None:
    body = {"virtual-machine": {"fq_name": ["hidden"], "id_perms": {"user_visible": False}}}
    fails(400, api.create, "virtual-machine", body, RequestCtx(is_admin=False))
    api.create("virtual-machine", body, CTX)


def test_id_perms_update_only_enable_and_description(api: ConfigApi) -> None:
    vm = create(api, "virtual-machine", ["vm"])
    before = read(api, "virtual-machine", vm)["id_perms"]
    api.update("virtual-machine", vm, {"virtual-machine": {"id_perms": {
        "enable": False, "description": "new", "creator": "intruder", "user_visible": False,
        "uuid": {"uuid_mslong": 1, "uuid_lslong": 2}, "created": "1999-01-01T00:00:00",
        "permissions": {"owner": "x", "owner_access": 0, "group": "g", "group_access": 0,
                        "other_access": 0}}}}, CTX)
    after = read(api, "virtual-machine", vm)["id_perms"]
    assert after["enable"] is False and after["description"] == "new"
    for key in ("creator", "user_visible", "uuid", "created", "permissions"):
        assert after[key] == before[key], key
    assert after["last_modified"] >= before["last_modified"]


def test_perms2_update_needs_owner(api: ConfigApi) -> None:
    vm = create(api, "virtual-machine", ["vm"])
    fails(400, api.update, "virtual-machine", vm,
          {"virtual-machine": {"perms2": {"global_access": 5}}}, CTX, match="owner")
    api.update("virtual-machine", vm, {"virtual-machine": {"perms2": {
        "owner": "new-owner", "global_access": 5, "owner_access": 7, "share": []}}}, CTX)
    p2 = read(api, "virtual-machine", vm)["perms2"]
    assert p2["owner"] == "new-owner" and p2["global_access"] == 5


def test_empty_update_is_a_no_op(api: ConfigApi) -> None:
    vm = create(api, "virtual-machine", ["vm"])
    before = read(api, "virtual-machine", vm)
    assert api.update("virtual-machine", vm, {"virtual-machine": {}}, CTX) == {}
    assert read(api, "virtual-machine", vm) == before


def test_create_errors(api: ConfigApi) -> None:
    fails(400, api.create, "virtual-network", {"virtual-network": {"fq_name": []}}, CTX,
          match="no fq_name")
    fails(400, api.create, "virtual-network",
          {"virtual-network": {"fq_name": [*PROJECT, "a:b"], "parent_type": "project"}}, CTX)
    fails(400, api.create, "virtual-network",
          {"virtual-network": {"fq_name": [*PROJECT, "vn"], "parent_type": "domain"}}, CTX,
          match="Invalid parent type")
    fails(400, api.create, "virtual-network",
          {"virtual-network": {"fq_name": [*PROJECT, "vn"], "parent_type": "project",
                               "virtual_network_properties": "l2"}}, CTX,
          match="Bad property")
    fails(400, api.create, "virtual-network",
          {"virtual-network": {"fq_name": [*PROJECT, "vn"], "parent_type": "project",
                               "uuid": "ABC"}}, CTX, match="Invalid UUID")
    fails(404, api.create, "virtual-network",
          {"virtual-network": {"fq_name": [*DOMAIN, "nope", "vn"], "parent_type": "project"}},
          CTX)
    fails(400, api.create, "virtual-network",
          {"virtual-network": {"fq_name": [*PROJECT, "vn"], "parent_type": "project",
                               "network_policy_refs": [{"to": [*PROJECT, "ghost"]}]}}, CTX,
          match="Unknown reference")
    fails(404, api.create, "no-such-type", {"no-such-type": {"fq_name": ["x"]}}, CTX)


def test_duplicate_fq_name_and_uuid(api: ConfigApi) -> None:
    u = str(uuidlib.uuid4())
    create(api, "virtual-machine", ["vm"], uuid=u)
    assert read(api, "virtual-machine", u)["uuid"] == u
    fails(409, create, api, "virtual-machine", ["vm"], match="already exists")
    fails(409, create, api, "virtual-machine", ["vm-other"], uuid=u)
    # fq_names are unique per type, not across types
    create(api, "tag-type", ["vm"])


def test_parent_type_inferred_when_single(api: ConfigApi) -> None:
    r = api.create("virtual-network", {"virtual-network": {"fq_name": [*PROJECT, "vn"]}}, CTX)
    assert r["virtual-network"]["parent_type"] == "project"


# -- virtual networks -----------------------------------------------------------------------------
def test_vn_ids_unique_and_freed(api: ConfigApi) -> None:
    a = make_vn(api, "a")
    b = make_vn(api, "b")
    ids = {read(api, "virtual-network", u)["virtual_network_network_id"] for u in (a, b)}
    all_ids = [o.props["virtual_network_network_id"]
               for o in api.db.by_type["virtual-network"].values()]
    assert len(all_ids) == len(set(all_ids))
    assert all(1 <= n < 1 << 24 for n in all_ids)
    freed = read(api, "virtual-network", a)["virtual_network_network_id"]
    claim = f"claim/id/vn/{freed}"
    assert api.db.claims[claim] == a
    api.delete("virtual-network", a, CTX)
    assert claim not in api.db.claims
    c = make_vn(api, "c")
    assert read(api, "virtual-network", c)["virtual_network_network_id"] == freed
    assert freed in ids


def test_vn_id_is_system_allocated(api: ConfigApi) -> None:
    fails(403, make_vn, api, "x", virtual_network_network_id=77)
    vn = make_vn(api, "y")
    n = read(api, "virtual-network", vn)["virtual_network_network_id"]
    fails(403, api.update, "virtual-network", vn,
          {"virtual-network": {"virtual_network_network_id": n + 1}}, CTX)


def test_vn_primary_routing_instance(api: ConfigApi) -> None:
    vn = make_vn(api, "vn")
    ris = read(api, "virtual-network", vn)["routing_instances"]
    assert [r["to"] for r in ris] == [[*PROJECT, "vn", "vn"]]
    ri = read(api, "routing-instance", ris[0]["uuid"])
    assert ri["routing_instance_is_default"] is True


def test_vn_subnet_fields_filled(api: ConfigApi) -> None:
    vn = make_vn(api, "vn", subnet("192.0.2.0", 24), subnet("198.51.100.0", 24,
                                                            addr_from_start=True),
                 subnet("2001:db8::", 64))
    s4, s4start, s6 = vn_subnets(api, vn)
    assert (s4["default_gateway"], s4["dns_server_address"]) == ("192.0.2.254", "192.0.2.253")
    assert (s4start["default_gateway"], s4start["dns_server_address"]) == (
        "198.51.100.1", "198.51.100.2")
    assert s6["default_gateway"] == "2001:db8::ffff:ffff:ffff:fffe"
    uuids = [s["subnet_uuid"] for s in (s4, s4start, s6)]
    assert len(set(uuids)) == 3
    for u in uuids:
        assert str(uuidlib.UUID(u)) == u


def test_vn_user_gateway_kept(api: ConfigApi) -> None:
    vn = make_vn(api, "vn", subnet("192.0.2.0", 24, default_gateway="192.0.2.1",
                                   subnet_uuid="11111111-2222-3333-4444-555555555555"))
    (s,) = vn_subnets(api, vn)
    assert s["default_gateway"] == "192.0.2.1"
    assert s["subnet_uuid"] == "11111111-2222-3333-4444-555555555555"
    fails(400, make_vn, api, "bad-gw", subnet("192.0.2.0", 24, default_gateway="198.51.100.1"))


def test_subnet_uuid_kept_on_update(api: ConfigApi) -> None:
    vn = make_vn(api, "vn", subnet("192.0.2.0", 24))
    (before,) = vn_subnets(api, vn)
    api.update("virtual-network", vn, {"virtual-network": {"network_ipam_refs": ipam_ref(
        subnet("192.0.2.0", 24), subnet("198.51.100.0", 24))}}, CTX)
    first, second = vn_subnets(api, vn)
    assert first["subnet_uuid"] == before["subnet_uuid"]
    assert second["subnet_uuid"] != before["subnet_uuid"]


@pytest.mark.parametrize(
    "subnets",
    [
        [subnet("192.0.2.0", 24), subnet("192.0.2.128", 25)],
        [subnet("198.18.0.0", 15), subnet("198.19.1.0", 24)],
        [subnet("2001:db8::", 64), subnet("2001:db8::", 96)],
    ],
)
def test_overlapping_subnets(api: ConfigApi, subnets: list[dict[str, Any]]) -> None:
    before = snapshot(api)
    fails(400, make_vn, api, "overlap", *subnets, match="Overlapping")
    assert snapshot(api) == before


def test_invalid_subnet(api: ConfigApi) -> None:
    fails(400, make_vn, api, "bad", subnet("192.0.2.1", 24))
    fails(400, make_vn, api, "bad", subnet("192.0.2.0", 24, allocation_pools=[
        {"start": "198.51.100.1", "end": "198.51.100.9"}]))


def test_remove_subnet_in_use(api: ConfigApi) -> None:
    vn = make_vn(api, "vn", subnet("192.0.2.0", 24), subnet("198.51.100.0", 24))
    make_iip(api, "iip", [*PROJECT, "vn"], instance_ip_address="198.51.100.10")
    # removing the other subnet is fine
    api.update("virtual-network", vn, {"virtual-network": {"network_ipam_refs": ipam_ref(
        subnet("198.51.100.0", 24))}}, CTX)
    fails(409, api.update, "virtual-network", vn,
          {"virtual-network": {"network_ipam_refs": ipam_ref(subnet("203.0.113.0", 24))}}, CTX)
    fails(409, api.update, "virtual-network", vn,
          {"virtual-network": {"network_ipam_refs": []}}, CTX)
    assert [s["subnet"]["ip_prefix"] for s in vn_subnets(api, vn)] == ["198.51.100.0"]


def test_system_vns_cannot_be_deleted(api: ConfigApi) -> None:
    for name in ("ip-fabric", "__link_local__"):
        u = uuid_of(api, "virtual-network", [*PROJECT, name])
        fails(409, api.delete, "virtual-network", u, CTX, match="system created")


def test_is_shared_and_global_access(api: ConfigApi) -> None:
    shared = make_vn(api, "shared", is_shared=True)
    assert read(api, "virtual-network", shared)["perms2"]["global_access"] == 7
    by_perms = make_vn(api, "by-perms", perms2={"owner": "o", "global_access": 7})
    assert read(api, "virtual-network", by_perms)["is_shared"] is True
    plain = make_vn(api, "plain")
    assert read(api, "virtual-network", plain)["is_shared"] is False


def test_vxlan_id_unique(api: ConfigApi) -> None:
    make_vn(api, "a", virtual_network_properties={"vxlan_network_identifier": 4000})
    fails(400, make_vn, api, "b", virtual_network_properties={"vxlan_network_identifier": 4000})


# -- instance IPs ----------------------------------------------------------------------------------
def test_iip_top_down_allocation(api: ConfigApi) -> None:
    make_vn(api, "vn", subnet("192.0.2.0", 24))
    got = [iip_addr(api, make_iip(api, f"iip{i}", [*PROJECT, "vn"])) for i in range(3)]
    assert got == ["192.0.2.252", "192.0.2.251", "192.0.2.250"]


def test_iip_from_start(api: ConfigApi) -> None:
    make_vn(api, "vn", subnet("192.0.2.0", 24, addr_from_start=True))
    assert iip_addr(api, make_iip(api, "iip", [*PROJECT, "vn"])) == "192.0.2.3"


def test_iip_fields_set(api: ConfigApi) -> None:
    vn = make_vn(api, "vn", subnet("192.0.2.0", 24))
    (s,) = vn_subnets(api, vn)
    iip = read(api, "instance-ip", make_iip(api, "iip", [*PROJECT, "vn"]))
    assert iip["subnet_uuid"] == s["subnet_uuid"]
    assert iip["instance_ip_subnet"] == {"ip_prefix": "192.0.2.0", "ip_prefix_len": 24}
    assert iip["instance_ip_family"] == "v4"
    # the VN shows the instance-ip as a back ref
    assert read(api, "virtual-network", vn)["instance_ip_back_refs"][0]["uuid"] == iip["uuid"]


def test_iip_family_and_subnet_choice(api: ConfigApi) -> None:
    vn = make_vn(api, "vn", subnet("192.0.2.0", 24), subnet("2001:db8::", 64),
                 subnet("198.51.100.0", 24))
    v6 = make_iip(api, "v6", [*PROJECT, "vn"], instance_ip_family="v6")
    assert iip_addr(api, v6) == "2001:db8::ffff:ffff:ffff:fffc"
    third = vn_subnets(api, vn)[2]["subnet_uuid"]
    chosen = make_iip(api, "chosen", [*PROJECT, "vn"], subnet_uuid=third)
    assert iip_addr(api, chosen) == "198.51.100.252"


def test_iip_requested_address_and_in_use(api: ConfigApi) -> None:
    make_vn(api, "vn", subnet("192.0.2.0", 24))
    u = make_iip(api, "iip", [*PROJECT, "vn"], instance_ip_address="192.0.2.10")
    assert iip_addr(api, u) == "192.0.2.10"
    fails(409, make_iip, api, "again", [*PROJECT, "vn"], instance_ip_address="192.0.2.10",
          match="already in use")
    # the allocator skips an address someone asked for
    make_iip(api, "top", [*PROJECT, "vn"], instance_ip_address="192.0.2.252")
    assert iip_addr(api, make_iip(api, "next", [*PROJECT, "vn"])) == "192.0.2.251"


def test_iip_gateway_refused(api: ConfigApi) -> None:
    make_vn(api, "vn", subnet("192.0.2.0", 24))
    fails(400, make_iip, api, "gw", [*PROJECT, "vn"], instance_ip_address="192.0.2.254")
    fails(400, make_iip, api, "dns", [*PROJECT, "vn"], instance_ip_address="192.0.2.253")


def test_iip_exhausted(api: ConfigApi) -> None:
    make_vn(api, "vn", subnet("192.0.2.0", 29))
    got = [iip_addr(api, make_iip(api, f"iip{i}", [*PROJECT, "vn"])) for i in range(4)]
    assert got == ["192.0.2.4", "192.0.2.3", "192.0.2.2", "192.0.2.1"]
    before = snapshot(api)
    fails(400, make_iip, api, "one-too-many", [*PROJECT, "vn"], match="exhausted")
    assert snapshot(api) == before


def test_iip_without_subnets_or_network(api: ConfigApi) -> None:
    make_vn(api, "empty")
    fails(400, make_iip, api, "iip", [*PROJECT, "empty"], match="no subnets")
    fails(400, create, api, "instance-ip", ["orphan"])


def test_iip_delete_frees_and_address_is_reused(api: ConfigApi) -> None:
    vn = make_vn(api, "vn", subnet("192.0.2.0", 24))
    a = make_iip(api, "a", [*PROJECT, "vn"])
    make_iip(api, "b", [*PROJECT, "vn"])
    claim = f"claim/ip/{vn}/192.0.2.252"
    assert api.db.claims[claim] == a
    api.delete("instance-ip", a, CTX)
    assert claim not in api.db.claims
    assert iip_addr(api, make_iip(api, "c", [*PROJECT, "vn"])) == "192.0.2.252"


def test_iip_on_ip_fabric_allocates_nothing(api: ConfigApi) -> None:
    u = make_iip(api, "fabric-ip", [*PROJECT, "ip-fabric"])
    assert "instance_ip_address" not in read(api, "instance-ip", u)


def test_iip_address_cannot_change(api: ConfigApi) -> None:
    make_vn(api, "vn", subnet("192.0.2.0", 24))
    u = make_iip(api, "iip", [*PROJECT, "vn"])
    fails(400, api.update, "instance-ip", u,
          {"instance-ip": {"instance_ip_address": "192.0.2.9"}}, CTX)


def test_failed_iip_create_leaves_nothing(api: ConfigApi, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    make_vn(api, "vn", subnet("192.0.2.0", 24))

    def boom(*args: Any) -> None:
        raise ApiError(500, "injected failure after allocation")

    before = snapshot(api)
    monkeypatch.setitem(hooks.POST_CREATE, "instance-ip", boom)
    fails(500, make_iip, api, "doomed", [*PROJECT, "vn"], match="injected")
    fails(500, make_iip, api, "doomed-too", [*PROJECT, "vn"], instance_ip_address="192.0.2.7")
    assert snapshot(api) == before
    assert api.db.lookup("instance-ip", ["doomed"]) is None
    monkeypatch.undo()
    # the address the failed request picked was never claimed: it is handed out again
    assert iip_addr(api, make_iip(api, "ok", [*PROJECT, "vn"])) == "192.0.2.252"
    assert iip_addr(api, make_iip(api, "ok7", [*PROJECT, "vn"],
                                  instance_ip_address="192.0.2.7")) == "192.0.2.7"


def test_failed_vn_create_leaves_nothing(api: ConfigApi, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    def boom(*args: Any) -> None:
        raise ApiError(500, "injected failure after the routing instance")

    before = snapshot(api)
    monkeypatch.setitem(hooks.POST_CREATE, "virtual-network", boom)
    fails(500, make_vn, api, "doomed", subnet("192.0.2.0", 24))
    assert snapshot(api) == before
    monkeypatch.undo()
    make_vn(api, "doomed", subnet("192.0.2.0", 24))


def test_failed_write_is_not_persisted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'config.db'}"
    api = ConfigApi(open_store(url))
    make_vn(api, "vn", subnet("192.0.2.0", 29))
    for i in range(4):
        make_iip(api, f"iip{i}", [*PROJECT, "vn"])
    fails(400, make_iip, api, "too-many", [*PROJECT, "vn"])
    fails(400, make_vn, api, "overlap", subnet("198.51.100.0", 24), subnet("198.51.100.0", 25))
    claims = dict(api.db.claims)
    api.db.store.close()
    again = ConfigApi(open_store(url))
    assert again.db.claims == claims
    assert again.db.lookup("virtual-network", [*PROJECT, "overlap"]) is None
    again.db.store.close()


# -- floating IPs ----------------------------------------------------------------------------------
def test_floating_ip_from_pool_network(api: ConfigApi) -> None:
    make_vn(api, "private", subnet("192.0.2.0", 24))
    pub = make_vn(api, "public", subnet("203.0.113.0", 24))
    create(api, "floating-ip-pool", [*PROJECT, "public", "pool"], "virtual-network")
    f = create(api, "floating-ip", [*PROJECT, "public", "pool", "fip"], "floating-ip-pool")
    fip = read(api, "floating-ip", f)
    assert fip["floating_ip_address"] == "203.0.113.252"
    assert fip["project_refs"][0]["to"] == PROJECT
    assert api.db.claims[f"claim/ip/{pub}/203.0.113.252"] == f
    # the pool's network shares its address space with its instance IPs
    assert iip_addr(api, make_iip(api, "iip", [*PROJECT, "public"])) == "203.0.113.251"
    fails(409, create, api, "floating-ip", [*PROJECT, "public", "pool", "dup"],
          "floating-ip-pool", floating_ip_address="203.0.113.252")
    api.delete("floating-ip", f, CTX)
    assert f"claim/ip/{pub}/203.0.113.252" not in api.db.claims


def test_floating_ip_pool_subnet_limit(api: ConfigApi) -> None:
    vn = make_vn(api, "public", subnet("203.0.113.0", 24), subnet("198.51.100.0", 24))
    second = vn_subnets(api, vn)[1]["subnet_uuid"]
    create(api, "floating-ip-pool", [*PROJECT, "public", "pool"], "virtual-network",
           floating_ip_pool_subnets={"subnet_uuid": [second]})
    f = create(api, "floating-ip", [*PROJECT, "public", "pool", "fip"], "floating-ip-pool")
    assert read(api, "floating-ip", f)["floating_ip_address"] == "198.51.100.252"


# -- virtual machine interfaces -------------------------------------------------------------------
def test_vmi_mac_from_uuid(api: ConfigApi) -> None:
    make_vn(api, "vn")
    u = "1234abcd-ef56-4789-8abc-def012345678"
    create(api, "virtual-machine-interface", [*PROJECT, "port"], "project", uuid=u,
           virtual_network_refs=[{"to": [*PROJECT, "vn"]}])
    macs = read(api, "virtual-machine-interface", u)["virtual_machine_interface_mac_addresses"]
    assert macs == {"mac_address": ["02:12:34:ab:cd:ef"]}


def test_vmi_given_mac_normalised(api: ConfigApi) -> None:
    make_vn(api, "vn")
    u = make_vmi(api, "port", [*PROJECT, "vn"], virtual_machine_interface_mac_addresses={
        "mac_address": ["02-00-5e-00-53-01"]})
    macs = read(api, "virtual-machine-interface", u)["virtual_machine_interface_mac_addresses"]
    assert macs == {"mac_address": ["02:00:5e:00:53:01"]}


def test_vmi_needs_network_and_gets_ri_ref(api: ConfigApi) -> None:
    fails(400, create, api, "virtual-machine-interface", [*PROJECT, "port"], "project")
    make_vn(api, "vn")
    u = make_vmi(api, "port", [*PROJECT, "vn"])
    refs = read(api, "virtual-machine-interface", u)["routing_instance_refs"]
    assert [(r["to"], r["attr"]) for r in refs] == [([*PROJECT, "vn", "vn"],
                                                     {"direction": "both"})]


# -- security groups and policies ----------------------------------------------------------------
def sg_rule(**extra: Any) -> dict[str, Any]:
    rule = {"direction": ">", "protocol": "any", "ethertype": "IPv4",
            "src_addresses": [{"security_group": "local"}],
            "dst_addresses": [{"subnet": {"ip_prefix": "0.0.0.0", "ip_prefix_len": 0}}],
            "src_ports": [{"start_port": 0, "end_port": 65535}],
            "dst_ports": [{"start_port": 0, "end_port": 65535}]}
    rule.update(extra)
    return rule


def test_sg_ids_and_rule_uuids(api: ConfigApi) -> None:
    a = create(api, "security-group", [*PROJECT, "a"], "project",
               security_group_entries={"policy_rule": [sg_rule(), sg_rule(protocol="tcp")]})
    b = create(api, "security-group", [*PROJECT, "b"], "project")
    sa, sb = read(api, "security-group", a), read(api, "security-group", b)
    ids = [o.props["security_group_id"] for o in api.db.by_type["security-group"].values()]
    assert len(ids) == len(set(ids))
    assert all(n >= 8_000_000 for n in ids)
    assert sb["security_group_id"] == sa["security_group_id"] + 1
    rules = sa["security_group_entries"]["policy_rule"]
    uuids = [r["rule_uuid"] for r in rules]
    assert all(str(uuidlib.UUID(u)) == u for u in uuids) and len(set(uuids)) == 2
    fails(403, create, api, "security-group", [*PROJECT, "c"], "project",
          security_group_id=8_123_456)
    fails(403, api.update, "security-group", a,
          {"security-group": {"security_group_id": 8_123_456}}, CTX)


def test_sg_configured_id(api: ConfigApi) -> None:
    u = create(api, "security-group", [*PROJECT, "cfg"], "project",
               configured_security_group_id=42)
    assert read(api, "security-group", u)["security_group_id"] == 42


def test_sg_id_freed_on_delete(api: ConfigApi) -> None:
    a = create(api, "security-group", [*PROJECT, "a"], "project")
    n = read(api, "security-group", a)["security_group_id"]
    api.delete("security-group", a, CTX)
    b = create(api, "security-group", [*PROJECT, "b"], "project")
    assert read(api, "security-group", b)["security_group_id"] == n


def test_sg_rule_checks(api: ConfigApi) -> None:
    no_local = sg_rule(src_addresses=[{"subnet": {"ip_prefix": "192.0.2.0",
                                                  "ip_prefix_len": 24}}])
    fails(400, create, api, "security-group", [*PROJECT, "x"], "project",
          security_group_entries={"policy_rule": [no_local]}, match="local")
    fails(409, create, api, "security-group", [*PROJECT, "x"], "project",
          security_group_entries={"policy_rule": [sg_rule(), sg_rule()]})
    u = create(api, "security-group", [*PROJECT, "x"], "project")
    fails(400, api.update, "security-group", u,
          {"security-group": {"security_group_entries": {"policy_rule": [no_local]}}}, CTX)


def np_rule(**extra: Any) -> dict[str, Any]:
    rule = {"direction": "<>", "protocol": "any",
            "src_addresses": [{"virtual_network": "any"}],
            "dst_addresses": [{"virtual_network": "any"}],
            "src_ports": [{"start_port": -1, "end_port": -1}],
            "dst_ports": [{"start_port": -1, "end_port": -1}],
            "action_list": {"simple_action": "pass"}}
    rule.update(extra)
    return rule


def test_policy_rule_checks(api: ConfigApi) -> None:
    u = create(api, "network-policy", [*PROJECT, "pol"], "project",
               network_policy_entries={"policy_rule": [np_rule()]})
    (rule,) = read(api, "network-policy", u)["network_policy_entries"]["policy_rule"]
    assert str(uuidlib.UUID(rule["rule_uuid"])) == rule["rule_uuid"]
    fails(400, create, api, "network-policy", [*PROJECT, "p2"], "project",
          network_policy_entries={"policy_rule": [np_rule(action_list=None)]},
          match="action_list")
    fails(400, create, api, "network-policy", [*PROJECT, "p3"], "project",
          network_policy_entries={"policy_rule": [np_rule(
              src_addresses=[{"security_group": "local"}])]}, match="security group")
    fails(409, create, api, "network-policy", [*PROJECT, "p4"], "project",
          network_policy_entries={"policy_rule": [np_rule(), np_rule()]})
    fails(400, create, api, "network-policy", [*PROJECT, "p5"], "project",
          network_policy_entries={"policy_rule": [np_rule(direction="<")]})


# -- tags ------------------------------------------------------------------------------------------
def test_tag_naming_and_id(api: ConfigApi) -> None:
    t = create(api, "tag", ["whatever"], tag_type_name="Application", tag_value="web")
    tag = read(api, "tag", t)
    assert tag["fq_name"] == ["application=web"]
    assert tag["display_name"] == "application=web"
    assert tag["tag_type_name"] == "application"
    assert tag["tag_id"].startswith("0x0001") and len(tag["tag_id"]) == 10
    assert tag["tag_type_refs"][0]["to"] == ["application"]
    t2 = create(api, "tag", ["x"], tag_type_name="application", tag_value="db")
    assert read(api, "tag", t2)["tag_id"] != tag["tag_id"]
    assert read(api, "tag", t2)["tag_id"].startswith("0x0001")
    fails(409, create, api, "tag", ["y"], tag_type_name="application", tag_value="web")


def test_tag_in_project(api: ConfigApi) -> None:
    t = create(api, "tag", [*PROJECT, "x"], "project", tag_type_name="tier", tag_value="db")
    assert read(api, "tag", t)["fq_name"] == [*PROJECT, "tier=db"]
    assert read(api, "tag", t)["tag_id"].startswith("0x0002")


def test_tag_type_auto_created(api: ConfigApi) -> None:
    assert api.db.lookup("tag-type", ["color"]) is None
    t = create(api, "tag", ["x"], tag_type_name="color", tag_value="red")
    tt = api.db.lookup("tag-type", ["color"])
    assert tt is not None
    type_id = read(api, "tag-type", tt)["tag_type_id"]
    assert int(type_id, 16) >= 7  # after the predefined types
    assert read(api, "tag", t)["tag_id"].startswith(type_id)
    assert read(api, "tag-type", tt)["tag_back_refs"][0]["uuid"] == t


def test_tag_errors(api: ConfigApi) -> None:
    fails(400, create, api, "tag", ["x"], tag_value="web")
    fails(400, create, api, "tag", ["x"], tag_type_name="tier")
    tt = uuid_of(api, "tag-type", ["tier"])
    fails(400, create, api, "tag", ["x"], tag_type_name="tier", tag_value="web",
          tag_type_refs=[{"uuid": tt}])
    fails(400, create, api, "tag", ["x"], tag_type_name="tier", tag_value="web",
          tag_id="0x00020001")


# -- firewall rules --------------------------------------------------------------------------------
def fw_rule(api: ConfigApi, name: str, **fields: Any) -> str:
    return create(api, "firewall-rule", ["default-policy-management", name],
                  "policy-management", **fields)


@pytest.mark.parametrize(("protocol", "proto_id"),
                         [("tcp", 6), ("UDP", 17), ("icmp", 1), ("any", 0), ("47", 47)])
def test_firewall_rule_protocol_id(api: ConfigApi, protocol: str, proto_id: int) -> None:
    u = fw_rule(api, "r", service={"protocol": protocol,
                                   "dst_ports": {"start_port": 80, "end_port": 80}})
    rule = read(api, "firewall-rule", u)
    assert rule["service"]["protocol_id"] == proto_id
    assert rule["match_tag_types"] == {"tag_type": [1]}


def test_firewall_rule_service_exactly_one(api: ConfigApi) -> None:
    fails(400, fw_rule, api, "none", match="exactly one")
    sg = create(api, "service-group", ["default-policy-management", "sg"], "policy-management")
    fails(400, fw_rule, api, "both", service={"protocol": "tcp"},
          service_group_refs=[{"uuid": sg}], match="exactly one")
    u = fw_rule(api, "groups", service_group_refs=[{"uuid": sg}])
    assert read(api, "firewall-rule", u)["service_group_refs"][0]["uuid"] == sg
    fails(400, fw_rule, api, "bad-proto", service={"protocol": "bogus"})


def test_firewall_rule_endpoints(api: ConfigApi) -> None:
    tag = create(api, "tag", ["x"], tag_type_name="application", tag_value="web")
    u = fw_rule(api, "r", service={"protocol": "tcp"},
                endpoint_1={"tags": ["application=web"]}, endpoint_2={"any": True})
    rule = read(api, "firewall-rule", u)
    assert rule["tag_refs"][0]["uuid"] == tag
    assert rule["endpoint_1"]["tag_ids"] == [int(read(api, "tag", tag)["tag_id"], 16)]
    fails(400, fw_rule, api, "two", service={"protocol": "tcp"},
          endpoint_1={"tags": ["application=web"], "any": True})
    fails(400, fw_rule, api, "label", service={"protocol": "tcp"},
          match_tags={"tag_list": ["label"]})


def test_firewall_rule_match_tags(api: ConfigApi) -> None:
    u = fw_rule(api, "m", service={"protocol": "tcp"},
                match_tags={"tag_list": ["application", "Tier"]})
    rule = read(api, "firewall-rule", u)
    assert rule["match_tags"] == {"tag_list": ["application", "Tier"]}
    assert rule["match_tag_types"] == {"tag_type": [1, 2]}
    fails(400, fw_rule, api, "unknown", service={"protocol": "tcp"},
          match_tags={"tag_list": ["flavour"]})


# -- delete rules ----------------------------------------------------------------------------------
def test_delete_with_children(api: ConfigApi) -> None:
    p = create(api, "project", [*DOMAIN, "tenant"], "domain")
    vn = create(api, "virtual-network", [*DOMAIN, "tenant", "vn"], "project")
    fails(409, api.delete, "project", p, CTX, match="children still present")
    api.delete("virtual-network", vn, CTX)
    # the project's own default-application-policy-set does not block
    api.delete("project", p, CTX)
    assert api.db.lookup("project", [*DOMAIN, "tenant"]) is None
    assert api.db.lookup("application-policy-set",
                         [*DOMAIN, "tenant", "default-application-policy-set"]) is None


def test_delete_default_project_refused(api: ConfigApi) -> None:
    p = uuid_of(api, "project", PROJECT)
    fails(409, api.delete, "project", p, CTX)
    assert api.db.lookup("virtual-network", [*PROJECT, "ip-fabric"]) is not None


def test_delete_with_back_refs(api: ConfigApi) -> None:
    vn = make_vn(api, "vn")
    port = make_vmi(api, "port", [*PROJECT, "vn"])
    fails(409, api.delete, "virtual-network", vn, CTX, match="still referred")
    api.delete("virtual-machine-interface", port, CTX)
    api.delete("virtual-network", vn, CTX)


def test_relaxed_ref_does_not_block_and_is_removed(api: ConfigApi) -> None:
    pol = create(api, "network-policy", [*PROJECT, "pol"], "project")
    vn = make_vn(api, "vn", network_policy_refs=[
        {"to": [*PROJECT, "pol"], "attr": {"sequence": {"major": 0, "minor": 0},
                                           "timer": None}}])
    fails(409, api.delete, "network-policy", pol, CTX)
    api.ref_relax({"uuid": vn, "ref-uuid": pol})
    api.delete("network-policy", pol, CTX)
    assert "network_policy_refs" not in read(api, "virtual-network", vn)
    assert api.db.get(vn) is not None and not api.db.get(vn).relaxed  # type: ignore[union-attr]


def test_relax_through_ref_update(api: ConfigApi) -> None:
    pol = create(api, "network-policy", [*PROJECT, "pol"], "project")
    vn = make_vn(api, "vn")
    api.ref_update({"type": "virtual-network", "uuid": vn, "ref-type": "network-policy",
                    "ref-uuid": pol, "operation": "ADD", "relax_ref_for_delete": True,
                    "attr": {"sequence": {"major": 0, "minor": 0}}}, CTX)
    api.delete("network-policy", pol, CTX)
    assert "network_policy_refs" not in read(api, "virtual-network", vn)


def test_derived_children_cascade(api: ConfigApi) -> None:
    vn = make_vn(api, "vn", subnet("192.0.2.0", 24))
    ri = uuid_of(api, "routing-instance", [*PROJECT, "vn", "vn"])
    before_claims = set(api.db.claims)
    api.delete("virtual-network", vn, CTX)
    assert api.db.get(ri) is None
    assert api.db.get(vn) is None
    assert not any(vn in k or ri in k for k in api.db.claims)
    assert len(before_claims - set(api.db.claims)) >= 3  # fq_names of VN and RI, the VN id


def test_derived_port_tuple_cascades(api: ConfigApi) -> None:
    si = create(api, "service-instance", [*PROJECT, "si"], "project")
    pt = create(api, "port-tuple", [*PROJECT, "si", "pt"], "service-instance")
    api.delete("service-instance", si, CTX)
    assert api.db.get(pt) is None


def test_ref_into_cascaded_child_blocks(api: ConfigApi) -> None:
    make_vn(api, "vn")
    vn = uuid_of(api, "virtual-network", [*PROJECT, "vn"])
    make_vmi(api, "port", [*PROJECT, "vn"])  # refs the VN and its routing instance
    fails(409, api.delete, "virtual-network", vn, CTX)
    assert api.db.lookup("routing-instance", [*PROJECT, "vn", "vn"]) is not None


def test_delete_unknown(api: ConfigApi) -> None:
    fails(404, api.delete, "virtual-network", str(uuidlib.uuid4()), CTX)
    vm = create(api, "virtual-machine", ["vm"])
    fails(404, api.delete, "virtual-network", vm, CTX)  # wrong type


# -- routing instances, singletons -----------------------------------------------------------------
def test_routing_instance_is_default_is_system_owned(api: ConfigApi) -> None:
    make_vn(api, "vn")
    fails(409, create, api, "routing-instance", [*PROJECT, "vn", "ri"], "virtual-network",
          routing_instance_is_default=True)
    ri = uuid_of(api, "routing-instance", [*PROJECT, "vn", "vn"])
    fails(409, api.update, "routing-instance", ri,
          {"routing-instance": {"routing_instance_is_default": False}}, CTX)


def test_single_global_system_config(api: ConfigApi) -> None:
    fails(400, create, api, "global-system-config", ["another"], autonomous_system=64513)


def test_project_gets_default_aps(api: ConfigApi) -> None:
    p = create(api, "project", [*DOMAIN, "tenant"], "domain")
    refs = read(api, "project", p)["application_policy_set_refs"]
    assert refs[0]["to"] == [*DOMAIN, "tenant", "default-application-policy-set"]
    aps = read(api, "application-policy-set", refs[0]["uuid"])
    assert aps["all_applications"] is True
