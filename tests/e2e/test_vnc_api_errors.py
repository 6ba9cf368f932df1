"""Every error path of vnc-api.md §5, as TF's client sees it (its exception classes) and on
the wire (status codes and plain-text bodies)."""

from __future__ import annotations

import json
import uuid as uuidlib
from typing import Any

import pytest
import requests
from vnc_api import vnc_api as v
from vnc_api.exceptions import BadRequest, NoIdError, PermissionDenied, RefsExistError

from tests.e2e.test_vnc_api_workflow import (
    V4_LEN,
    V4_NET,
    make_iip,
    make_ipam,
    make_port,
    make_project,
    make_vn,
    raw,
    subnet,
)


def assert_plain_text(r: requests.Response, status: int, *needles: str) -> None:
    """TF's error bodies are the plain message, not JSON."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text
    with pytest.raises(ValueError):
        json.loads(r.text)
    for n in needles:
        assert n in r.text, (n, r.text)


# ----------------------------------------------------------------------------------------------
# 409: duplicates and deletes that are still needed
def test_duplicate_create_is_refs_exist(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net")
    with pytest.raises(RefsExistError) as e:
        vnc.virtual_network_create(v.VirtualNetwork("net", project))
    assert "already exists with uuid" in str(e.value) and vn.uuid in str(e.value)
    with pytest.raises(RefsExistError):
        make_project(vnc)
    # the same uuid twice (different fq_names)
    mine = str(uuidlib.uuid4())
    ipam = v.NetworkIpam("a", project)
    ipam.uuid = mine
    vnc.network_ipam_create(ipam)
    other = v.NetworkIpam("b", project)
    other.uuid = mine
    with pytest.raises(RefsExistError):
        vnc.network_ipam_create(other)
    r = requests.post(f"{raw(vnc)}/virtual-networks", json={"virtual-network": {
        "fq_name": vn.fq_name, "parent_type": "project"}}, timeout=10)
    assert_plain_text(r, 409, "already exists")


def test_delete_while_referenced_lists_the_referrers(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net", make_ipam(vnc, project), [(V4_NET, V4_LEN)])
    port = make_port(vnc, project, "port", vn)
    with pytest.raises(RefsExistError) as e:
        vnc.virtual_network_delete(id=vn.uuid)
    assert "still referred" in str(e.value)
    assert f"/virtual-machine-interface/{port.uuid}" in str(e.value)
    r = requests.delete(f"{raw(vnc)}/virtual-network/{vn.uuid}", timeout=10)
    assert_plain_text(r, 409, f"{raw(vnc)}/virtual-machine-interface/{port.uuid}")
    # the network is still intact after the refused delete
    assert vnc.virtual_network_read(id=vn.uuid).get_routing_instances()
    vnc.virtual_machine_interface_delete(id=port.uuid)
    vnc.virtual_network_delete(id=vn.uuid)


def test_delete_with_children_lists_the_children(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net")
    with pytest.raises(RefsExistError) as e:
        vnc.project_delete(id=project.uuid)
    assert "children still present" in str(e.value)
    assert f"/virtual-network/{vn.uuid}" in str(e.value)
    # derived children (the routing instance) do not block; the pool child does
    pool = vnc.floating_ip_pool_create(v.FloatingIpPool("pool", vn))
    with pytest.raises(RefsExistError) as e:
        vnc.virtual_network_delete(id=vn.uuid)
    assert f"/floating-ip-pool/{pool}" in str(e.value)
    vnc.floating_ip_pool_delete(id=pool)
    vnc.virtual_network_delete(id=vn.uuid)
    vnc.project_delete(id=project.uuid)


def test_system_networks_cannot_be_deleted(vnc: Any) -> None:
    fq = ["default-domain", "default-project", "ip-fabric"]
    u = vnc.fq_name_to_id("virtual-network", fq)
    with pytest.raises(RefsExistError) as e:
        vnc.virtual_network_delete(id=u)
    assert "Can not delete system created default virtual-network" in str(e.value)


def test_address_conflicts(vnc: Any) -> None:
    project = make_project(vnc)
    ipam = make_ipam(vnc, project)
    vn = make_vn(vnc, project, "tiny", ipam, [("198.51.100.0", 29)])
    # a /29 has 8 addresses: network, broadcast, gateway (.6), dns (.5) leave .1-.4
    got = [make_iip(vnc, f"iip-{i}", vn).get_instance_ip_address() for i in range(4)]
    assert got == ["198.51.100.4", "198.51.100.3", "198.51.100.2", "198.51.100.1"]
    with pytest.raises(BadRequest):  # exhausted: 400 for an instance-ip
        make_iip(vnc, "iip-x", vn)
    with pytest.raises(RefsExistError):  # exhausted: 409 for ip-alloc
        vnc.virtual_network_ip_alloc(vn)
    empty = make_vn(vnc, project, "empty")
    with pytest.raises(BadRequest):  # no subnet to allocate from
        make_iip(vnc, "iip-y", empty)
    # overlapping subnets in one network
    bad = v.VirtualNetwork("overlap", project)
    bad.add_network_ipam(ipam, v.VnSubnetsType([subnet("192.0.2.0", 24),
                                                subnet("192.0.2.128", 25)]))
    with pytest.raises(BadRequest):
        vnc.virtual_network_create(bad)


# ----------------------------------------------------------------------------------------------
# 404
def test_unknown_ids_are_no_id_errors(vnc: Any) -> None:
    missing = str(uuidlib.uuid4())
    with pytest.raises(NoIdError):
        vnc.virtual_network_read(id=missing)
    with pytest.raises(NoIdError):
        vnc.virtual_network_delete(id=missing)
    ghost = v.VirtualNetwork("ghost")
    ghost.uuid = missing
    ghost.set_display_name("x")
    with pytest.raises(NoIdError):
        vnc.virtual_network_update(ghost)
    with pytest.raises(NoIdError):
        vnc.virtual_network_read(fq_name=["default-domain", "default-project", "ghost"])
    # a uuid of another type is not found either
    project = make_project(vnc)
    with pytest.raises(NoIdError):
        vnc.virtual_network_read(id=project.uuid)
    with pytest.raises(NoIdError):
        vnc.virtual_network_delete(id=project.uuid)
    base = raw(vnc)
    assert_plain_text(requests.get(f"{base}/virtual-network/{missing}", timeout=10), 404,
                      missing)
    assert_plain_text(requests.delete(f"{base}/virtual-network/{missing}", timeout=10), 404,
                      missing)
    r = requests.put(f"{base}/virtual-network/{missing}",
                     json={"virtual-network": {"display_name": "x"}}, timeout=10)
    assert_plain_text(r, 404)
    assert_plain_text(requests.get(f"{base}/no-such-types", timeout=10), 404)
    # the client turns a 404 on a list into an empty result
    r = requests.post(f"{base}/fqname-to-id", json={"type": "virtual-network",
                                                    "fq_name": ["a", "b", "c"]}, timeout=10)
    assert_plain_text(r, 404, "not found")
    # ref-update to a missing target or on a missing object
    vn = make_vn(vnc, project, "net")
    with pytest.raises(NoIdError):
        vnc.ref_update("virtual-network", vn.uuid, "network-policy", missing, None, "ADD")
    with pytest.raises(NoIdError):
        vnc.ref_update("virtual-network", vn.uuid, "network-policy", None,
                       [*project.fq_name, "nope"], "ADD")
    with pytest.raises(NoIdError):
        vnc.ref_update("virtual-network", missing, "network-policy", vn.uuid, None, "ADD")
    with pytest.raises(NoIdError):
        vnc.ref_relax_for_delete(missing, vn.uuid)
    with pytest.raises(NoIdError):
        vnc.virtual_network_ip_alloc(ghost)


# ----------------------------------------------------------------------------------------------
# 400: validation
@pytest.mark.parametrize("field,value", [
    ("virtual_network_properties", "not-an-object"),        # complex type
    ("mac_aging_time", 100000),                             # range [0, 86400]
    ("virtual_network_category", "bogus"),                  # enum
    ("is_shared", "yes"),                                   # boolean
    ("virtual_network_properties", {"forwarding_mode": "l9"}),  # nested enum
    ("virtual_network_properties", {"no_such_key": 1}),     # unknown nested field
])
def test_bad_property_is_bad_request(vnc: Any, field: str, value: Any) -> None:
    project = make_project(vnc)
    vn = v.VirtualNetwork("net", project)
    setattr(vn, "_" + field, value)
    vn._pending_field_updates.add(field)
    with pytest.raises(BadRequest) as e:
        vnc.virtual_network_create(vn)
    assert field in str(e.value)
    # and on update
    good = make_vn(vnc, project, "good")
    r = requests.put(f"{raw(vnc)}/virtual-network/{good.uuid}",
                     json={"virtual-network": {field: value}}, timeout=10)
    assert_plain_text(r, 400, field)


def test_bad_link_attribute_is_bad_request(vnc: Any) -> None:
    project = make_project(vnc)
    ipam = make_ipam(vnc, project)
    r = requests.post(f"{raw(vnc)}/virtual-networks", json={"virtual-network": {
        "fq_name": [*project.fq_name, "net"], "parent_type": "project",
        "network_ipam_refs": [{"to": ipam.fq_name, "attr": {"ipam_subnets": "oops"}}]}},
        timeout=10)
    assert_plain_text(r, 400, "ipam_subnets")
    r = requests.post(f"{raw(vnc)}/virtual-networks", json={"virtual-network": {
        "fq_name": [*project.fq_name, "net"], "parent_type": "project",
        "network_ipam_refs": [{"to": ipam.fq_name, "attr": {"ipam_subnets": [
            {"subnet": {"ip_prefix": "192.0.2.7", "ip_prefix_len": 24}}]}}]}}, timeout=10)
    assert_plain_text(r, 400)


def test_unknown_field_in_body_is_named(vnc: Any) -> None:
    project = make_project(vnc)
    base = raw(vnc)
    r = requests.post(f"{base}/virtual-networks", json={"virtual-network": {
        "fq_name": [*project.fq_name, "net"], "parent_type": "project",
        "frobnicate": True}}, timeout=10)
    assert_plain_text(r, 400, "frobnicate")
    vn = make_vn(vnc, project, "net")
    r = requests.put(f"{base}/virtual-network/{vn.uuid}",
                     json={"virtual-network": {"colour": "blue"}}, timeout=10)
    assert_plain_text(r, 400, "colour")


def test_bad_parent_and_fq_name(vnc: Any) -> None:
    domain = vnc.domain_read(fq_name=["default-domain"])
    bad = v.VirtualNetwork("net", domain)  # networks live under projects only
    with pytest.raises(BadRequest) as e:
        vnc.virtual_network_create(bad)
    assert "parent type" in str(e.value).lower()
    base = raw(vnc)
    for body in (
        {"fq_name": [], "parent_type": "project"},                        # empty fq_name
        {"parent_type": "project"},                                       # no fq_name
        {"fq_name": ["net"], "parent_type": "project"},                   # too short
        {"fq_name": ["default-domain", "default-project", "a:b"]},        # ':' in a name
        {"fq_name": ["default-domain", "default-project", "n"], "uuid": "not-a-uuid"},
        {"fq_name": ["default-domain", "default-project", "n"],
         "uuid": str(uuidlib.uuid4()).upper()},                           # not canonical
    ):
        r = requests.post(f"{base}/virtual-networks", json={"virtual-network": body},
                          timeout=10)
        assert_plain_text(r, 400)
    # a parent that does not exist
    r = requests.post(f"{base}/virtual-networks", json={"virtual-network": {
        "fq_name": ["default-domain", "no-project", "n"], "parent_type": "project"}},
        timeout=10)
    assert r.status_code in (400, 404)
    # a VMI has several parents: parent_type is required
    r = requests.post(f"{base}/virtual-machine-interfaces", json={
        "virtual-machine-interface": {"fq_name": ["default-domain", "default-project", "p"]}},
        timeout=10)
    assert_plain_text(r, 400, "parent")


def test_unknown_ref_target_is_bad_request(vnc: Any) -> None:
    project = make_project(vnc)
    vn = v.VirtualNetwork("net", project)
    vn.add_network_policy(v.NetworkPolicy("ghost-policy", project),
                          v.VirtualNetworkPolicyType(sequence=v.SequenceType(1, 0)))
    with pytest.raises(BadRequest) as e:
        vnc.virtual_network_create(vn)
    assert "Unknown reference" in str(e.value)
    good = make_vn(vnc, project, "good")
    r = requests.put(f"{raw(vnc)}/virtual-network/{good.uuid}", json={"virtual-network": {
        "network_policy_refs": [{"to": [*project.fq_name, "ghost"], "attr": None}]}},
        timeout=10)
    assert_plain_text(r, 400, "Unknown reference")
    # a port without a network
    with pytest.raises(BadRequest):
        vnc.virtual_machine_interface_create(v.VirtualMachineInterface("p", project))


def test_system_allocated_ids_are_permission_denied(vnc: Any) -> None:
    project = make_project(vnc)
    with pytest.raises(PermissionDenied):
        vnc.virtual_network_create(
            v.VirtualNetwork("net", project, virtual_network_network_id=4242))
    vn = make_vn(vnc, project, "net")
    vn.set_virtual_network_network_id(vn.get_virtual_network_network_id() + 1000)
    with pytest.raises(PermissionDenied):
        vnc.virtual_network_update(vn)
    with pytest.raises(PermissionDenied):
        vnc.security_group_create(v.SecurityGroup("sg", project, security_group_id=8000123))
    r = requests.post(f"{raw(vnc)}/security-groups", json={"security-group": {
        "fq_name": [*project.fq_name, "sg2"], "parent_type": "project",
        "security_group_id": 8000124}}, timeout=10)
    assert_plain_text(r, 403)


def test_malformed_requests_are_400(vnc: Any) -> None:
    base = raw(vnc)
    headers = {"Content-Type": "application/json"}
    for url in (f"{base}/virtual-networks", f"{base}/ref-update", f"{base}/fqname-to-id",
                f"{base}/list-bulk-collection", f"{base}/useragent-kv"):
        r = requests.post(url, data=b'{"virtual-network": {', headers=headers, timeout=10)
        assert_plain_text(r, 400)
    # a body that is JSON but not the wrapped object
    r = requests.post(f"{base}/virtual-networks", json=["not", "an", "object"], timeout=10)
    assert_plain_text(r, 400)
    r = requests.post(f"{base}/virtual-networks", json={"network-ipam": {}}, timeout=10)
    assert_plain_text(r, 400)
    # ref-update with a field missing or a bad operation
    vn_uuid = vnc.fq_name_to_id("virtual-network",
                                ["default-domain", "default-project", "default-virtual-network"])
    full = {"type": "virtual-network", "uuid": vn_uuid, "ref-type": "network-policy",
            "ref-uuid": None, "ref-fq-name": ["a", "b", "c"], "operation": "ADD"}
    for key in ("type", "uuid", "ref-type", "operation"):
        body = {k: val for k, val in full.items() if k != key}
        assert_plain_text(requests.post(f"{base}/ref-update", json=body, timeout=10), 400, key)
    r = requests.post(f"{base}/ref-update", json={**full, "operation": "REPLACE"}, timeout=10)
    assert_plain_text(r, 400)
    r = requests.post(f"{base}/ref-update", json={**full, "ref-fq-name": None}, timeout=10)
    assert_plain_text(r, 400)
    # ref-relax, prop-collection, useragent-kv and id-to-fqname with missing fields
    assert_plain_text(requests.post(f"{base}/ref-relax-for-delete", json={"uuid": vn_uuid},
                                    timeout=10), 400)
    assert_plain_text(requests.get(f"{base}/prop-collection-get", params={"uuid": vn_uuid},
                                   timeout=10), 400)
    r = requests.post(f"{base}/prop-collection-update", json={"uuid": vn_uuid, "updates": [
        {"field": "annotations", "operation": "explode", "value": None}]}, timeout=10)
    assert_plain_text(r, 400)
    r = requests.post(f"{base}/prop-collection-update", json={"uuid": vn_uuid, "updates": [
        {"field": "display_name", "operation": "set", "value": "x"}]}, timeout=10)
    assert_plain_text(r, 400)
    assert_plain_text(requests.post(f"{base}/useragent-kv", json={"key": "k"}, timeout=10), 400)
    r = requests.post(f"{base}/useragent-kv", json={"operation": "MUNGE", "key": "k"},
                      timeout=10)
    assert_plain_text(r, 404)
    assert_plain_text(requests.post(f"{base}/id-to-fqname", json={}, timeout=10), 400)
    # perms2 in a PUT must carry an owner
    r = requests.put(f"{base}/virtual-network/{vn_uuid}",
                     json={"virtual-network": {"perms2": {"global_access": 5}}}, timeout=10)
    assert_plain_text(r, 400, "owner")


def test_immutable_fields(vnc: Any) -> None:
    project = make_project(vnc)
    ipam = vnc.network_ipam_read(id=vnc.network_ipam_create(
        v.NetworkIpam("flat", project, ipam_subnet_method="flat-subnet")))
    ipam.set_ipam_subnet_method("user-defined-subnet")
    with pytest.raises(BadRequest):
        vnc.network_ipam_update(ipam)
    vn = make_vn(vnc, project, "net")
    ri_uuid = vn.get_routing_instances()[0]["uuid"]
    r = requests.put(f"{raw(vnc)}/routing-instance/{ri_uuid}", json={"routing-instance": {
        "routing_instance_is_default": False}}, timeout=10)
    assert_plain_text(r, 409)
    r = requests.post(f"{raw(vnc)}/routing-instances", json={"routing-instance": {
        "fq_name": [*vn.fq_name, "extra"], "parent_type": "virtual-network",
        "routing_instance_is_default": True}}, timeout=10)
    assert_plain_text(r, 409)


def test_type_hook_refusals(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net", make_ipam(vnc, project), [(V4_NET, V4_LEN)])
    port = make_port(vnc, project, "port", vn)
    iip = make_iip(vnc, "iip-hooks", vn, port)
    # a port still used by an instance-ip cannot go
    with pytest.raises(RefsExistError) as e:
        vnc.virtual_machine_interface_delete(id=port.uuid)
    assert iip.uuid in str(e.value)
    # sub-interface VLAN tags are 0-4094
    bad = v.VirtualMachineInterface("sub", project, virtual_machine_interface_properties=(
        v.VirtualMachineInterfacePropertiesType(sub_interface_vlan_tag=4095)))
    bad.add_virtual_network(vn)
    with pytest.raises(BadRequest):
        vnc.virtual_machine_interface_create(bad)
    # a VXLAN id can be used by one network only
    make_vn(vnc, project, "vx1", virtual_network_properties=v.VirtualNetworkType(
        vxlan_network_identifier=5001))
    with pytest.raises(BadRequest):
        make_vn(vnc, project, "vx2", virtual_network_properties=v.VirtualNetworkType(
            vxlan_network_identifier=5001))
    # only one global-system-config
    with pytest.raises(BadRequest):
        vnc.global_system_config_create(v.GlobalSystemConfig("second", autonomous_system=64513))
    # tag_type_refs is the server's
    tt = vnc.tag_type_read(fq_name=["application"])
    tag = v.Tag(parent_obj=project, tag_type_name="application", tag_value="x")
    tag.add_tag_type(tt)
    with pytest.raises(BadRequest):
        vnc.tag_create(tag)
