"""A tenant's workflow driven end to end by TF's unmodified ``vnc_api`` client.

Each test starts its own controller (the ``vnc`` fixture) and checks the concrete values the
reference promises (vnc-api.md §2-§6), not just that calls succeed.  Helpers at the top are
shared with the other ``test_vnc_api_*`` modules.
"""

from __future__ import annotations

import ipaddress
import json
import uuid as uuidlib
from typing import Any

import pytest
import requests
from vnc_api import vnc_api as v
from vnc_api.exceptions import BadRequest, NoIdError, RefsExistError

DOMAIN = ["default-domain"]
V4_NET, V4_LEN = "192.0.2.0", 24
V6_NET, V6_LEN = "2001:db8:1::", 64


# ----------------------------------------------------------------------------------------------
# helpers (also imported by the sibling modules)
def make_project(vnc: Any, name: str = "tenant") -> Any:
    domain = vnc.domain_read(fq_name=DOMAIN)
    uuid = vnc.project_create(v.Project(name, domain))
    return vnc.project_read(id=uuid)


def make_ipam(vnc: Any, project: Any, name: str = "ipam") -> Any:
    uuid = vnc.network_ipam_create(v.NetworkIpam(name, project))
    return vnc.network_ipam_read(id=uuid)


def subnet(prefix: str, plen: int, **kw: Any) -> Any:
    return v.IpamSubnetType(subnet=v.SubnetType(prefix, plen), **kw)


def make_vn(vnc: Any, project: Any, name: str, ipam: Any | None = None,
            subnets: list[tuple[str, int]] | None = None, **kw: Any) -> Any:
    vn = v.VirtualNetwork(name, project, **kw)
    if ipam is not None:
        vn.add_network_ipam(ipam, v.VnSubnetsType([subnet(p, n) for p, n in subnets or []]))
    uuid = vnc.virtual_network_create(vn)
    return vnc.virtual_network_read(id=uuid)


def make_port(vnc: Any, project: Any, name: str, vn: Any, **kw: Any) -> Any:
    vmi = v.VirtualMachineInterface(name, project, **kw)
    vmi.add_virtual_network(vn)
    uuid = vnc.virtual_machine_interface_create(vmi)
    return vnc.virtual_machine_interface_read(id=uuid)


def make_iip(vnc: Any, name: str, vn: Any, port: Any | None = None, **kw: Any) -> Any:
    iip = v.InstanceIp(name, **kw)
    iip.add_virtual_network(vn)
    if port is not None:
        iip.add_virtual_machine_interface(port)
    uuid = vnc.instance_ip_create(iip)
    return vnc.instance_ip_read(id=uuid)


def ipam_subnets(vn: Any) -> list[Any]:
    return [s for ref in vn.get_network_ipam_refs() or [] for s in ref["attr"].ipam_subnets]


def raw(vnc_or_url: Any) -> str:
    """The server root URL of a VncApi (or a URL given directly)."""
    if isinstance(vnc_or_url, str):
        return vnc_or_url
    return f"http://127.0.0.1:{vnc_or_url._web_port}"


# ----------------------------------------------------------------------------------------------
# project, ipam and networks
def test_project_gets_default_application_policy_set(vnc: Any) -> None:
    project = make_project(vnc, "acme")
    assert project.get_fq_name() == ["default-domain", "acme"]
    assert project.parent_type == "domain"
    assert project.get_display_name() == "acme"
    # perms2.owner of a project is its own uuid without dashes
    assert project.get_perms2().owner == project.uuid.replace("-", "")
    # id_perms.uuid mirrors the uuid as two 64-bit halves
    n = uuidlib.UUID(project.uuid).int
    ip_uuid = project.get_id_perms().uuid
    assert (ip_uuid.uuid_mslong, ip_uuid.uuid_lslong) == (n >> 64, n & ((1 << 64) - 1))
    aps_fq = ["default-domain", "acme", "default-application-policy-set"]
    refs = project.get_application_policy_set_refs()
    assert [r["to"] for r in refs] == [aps_fq]
    children = vnc.project_read(id=project.uuid, fields=["application_policy_sets"])
    assert [c["to"] for c in children.get_application_policy_sets()] == [aps_fq]
    aps = vnc.application_policy_set_read(fq_name=aps_fq)
    assert aps.get_all_applications() is True


def test_network_v4_and_v6_subnets_get_gateway_dns_and_routing_instance(vnc: Any) -> None:
    project = make_project(vnc)
    ipam = make_ipam(vnc, project)
    vn = make_vn(vnc, project, "blue", ipam, [(V4_NET, V4_LEN), (V6_NET, V6_LEN)])
    v4, v6 = ipam_subnets(vn)
    assert (v4.default_gateway, v4.dns_server_address) == ("192.0.2.254", "192.0.2.253")
    # TF reserves network.last - 1 and - 2 for v6 too
    ip6 = ipaddress.ip_address
    assert ip6(v6.default_gateway) == ip6("2001:db8:1::ffff:ffff:ffff:fffe")
    assert ip6(v6.dns_server_address) == ip6("2001:db8:1::ffff:ffff:ffff:fffd")
    for s in (v4, v6):
        assert str(uuidlib.UUID(s.subnet_uuid)) == s.subnet_uuid
    assert v4.subnet_uuid != v6.subnet_uuid
    # addr_from_start puts them at the bottom of the subnet instead
    vn2 = make_vn(vnc, project, "green", None)
    vn2.add_network_ipam(ipam, v.VnSubnetsType([subnet("198.51.100.0", 24,
                                                       addr_from_start=True)]))
    vnc.virtual_network_update(vn2)
    s2 = ipam_subnets(vnc.virtual_network_read(id=vn2.uuid))[0]
    assert (s2.default_gateway, s2.dns_server_address) == ("198.51.100.1", "198.51.100.2")
    # the network id is allocated, distinct per network
    ids = {vn.get_virtual_network_network_id(),
           vnc.virtual_network_read(id=vn2.uuid).get_virtual_network_network_id()}
    assert len(ids) == 2 and all(i >= 1 for i in ids)
    # a derived primary routing instance named after the network
    full = vnc.virtual_network_read(id=vn.uuid, fields=["routing_instances"])
    ris = full.get_routing_instances()
    assert [r["to"] for r in ris] == [[*vn.fq_name, "blue"]]
    ri = vnc.routing_instance_read(id=ris[0]["uuid"])
    assert ri.get_routing_instance_is_default() is True
    assert ri.parent_uuid == vn.uuid


def test_port_mac_and_routing_instance_ref(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net", make_ipam(vnc, project), [(V4_NET, V4_LEN)])
    port = make_port(vnc, project, "port1", vn)
    u = port.uuid
    expected = "02:" + ":".join([u[0:2], u[2:4], u[4:6], u[6:8], u[9:11]])
    assert port.get_virtual_machine_interface_mac_addresses().mac_address == [expected]
    ri_refs = port.get_routing_instance_refs()
    assert [r["to"] for r in ri_refs] == [[*vn.fq_name, "net"]]
    assert ri_refs[0]["attr"].direction == "both"
    # a given MAC keeps its value, with '-' normalised to ':'
    port2 = make_port(vnc, project, "port2", vn,
                      virtual_machine_interface_mac_addresses=v.MacAddressesType(
                          ["02-00-5e-00-53-01"]))
    assert port2.get_virtual_machine_interface_mac_addresses().mac_address == [
        "02:00:5e:00:53:01"]
    # the network lists its ports as back refs
    back = vnc.virtual_network_read(id=vn.uuid, fields=["virtual_machine_interface_back_refs"])
    assert {r["uuid"] for r in back.get_virtual_machine_interface_back_refs()} == {
        port.uuid, port2.uuid}


def test_instance_ips_allocate_from_the_top_and_refuse_duplicates(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net", make_ipam(vnc, project),
                 [(V4_NET, V4_LEN), (V6_NET, V6_LEN)])
    port = make_port(vnc, project, "port", vn)
    first = make_iip(vnc, "iip-1", vn, port)
    second = make_iip(vnc, "iip-2", vn, port)
    assert first.get_instance_ip_address() == "192.0.2.252"
    assert second.get_instance_ip_address() == "192.0.2.251"
    v4_subnet = ipam_subnets(vn)[0]
    assert first.get_subnet_uuid() == v4_subnet.subnet_uuid
    sn = first.get_instance_ip_subnet()
    assert (sn.ip_prefix, sn.ip_prefix_len) == (V4_NET, V4_LEN)
    # a requested address is honoured
    asked = make_iip(vnc, "iip-asked", vn, instance_ip_address="192.0.2.10")
    assert asked.get_instance_ip_address() == "192.0.2.10"
    # ... and refused while in use (409)
    with pytest.raises(RefsExistError):
        make_iip(vnc, "iip-dup", vn, instance_ip_address="192.0.2.10")
    with pytest.raises(RefsExistError):
        make_iip(vnc, "iip-dup2", vn, instance_ip_address="192.0.2.252")
    # the gateway is never handed to a port (400)
    with pytest.raises(BadRequest):
        make_iip(vnc, "iip-gw", vn, instance_ip_address="192.0.2.254")
    # v6 on request by family
    six = make_iip(vnc, "iip-6", vn, port, instance_ip_family="v6")
    addr6 = ipaddress.ip_address(six.get_instance_ip_address())
    assert addr6 in ipaddress.ip_network(f"{V6_NET}/{V6_LEN}")
    assert six.get_instance_ip_address() not in (
        ipam_subnets(vn)[1].default_gateway, ipam_subnets(vn)[1].dns_server_address)
    # the port and the network see the instance-ips as back refs
    p = vnc.virtual_machine_interface_read(id=port.uuid, fields=["instance_ip_back_refs"])
    assert {r["uuid"] for r in p.get_instance_ip_back_refs()} == {
        first.uuid, second.uuid, six.uuid}
    # deleting frees the address for the next request
    vnc.instance_ip_delete(id=asked.uuid)
    again = make_iip(vnc, "iip-again", vn, instance_ip_address="192.0.2.10")
    assert again.get_instance_ip_address() == "192.0.2.10"
    # the address cannot be changed afterwards (400)
    again.set_instance_ip_address("192.0.2.11")
    with pytest.raises(BadRequest):
        vnc.instance_ip_update(again)


def test_floating_ips_come_from_the_pool_network_and_attach_to_ports(vnc: Any) -> None:
    project = make_project(vnc)
    ipam = make_ipam(vnc, project)
    private = make_vn(vnc, project, "private", ipam, [(V4_NET, V4_LEN)])
    public = make_vn(vnc, project, "public", ipam, [("203.0.113.0", 24)],
                     router_external=True)
    pool_uuid = vnc.floating_ip_pool_create(v.FloatingIpPool("pool", public))
    pool = vnc.floating_ip_pool_read(id=pool_uuid)
    assert pool.get_fq_name() == [*public.fq_name, "pool"]
    port = make_port(vnc, project, "port", private)
    fip = v.FloatingIp("fip1", pool)
    fip.add_project(project)
    fip.add_virtual_machine_interface(port)
    fip_uuid = vnc.floating_ip_create(fip)
    got = vnc.floating_ip_read(id=fip_uuid)
    assert got.get_floating_ip_address() == "203.0.113.252"
    assert got.get_floating_ip_address_family() == "v4"
    assert [r["uuid"] for r in got.get_virtual_machine_interface_refs()] == [port.uuid]
    assert [r["uuid"] for r in got.get_project_refs()] == [project.uuid]
    # without project_refs the server fills in the project of fq_name[:2]
    bare_uuid = vnc.floating_ip_create(v.FloatingIp("fip2", pool))
    bare = vnc.floating_ip_read(id=bare_uuid)
    assert bare.get_floating_ip_address() == "203.0.113.251"
    assert [r["to"] for r in bare.get_project_refs()] == [project.fq_name]
    # a requested address already in use: 409
    with pytest.raises(RefsExistError):
        vnc.floating_ip_create(v.FloatingIp("fip3", pool, floating_ip_address="203.0.113.252"))
    # a pool limited to some subnets of its network allocates only from them
    # (set_ replaces the ref list in one PUT; the first subnet keeps its uuid)
    old_uuid = ipam_subnets(public)[0].subnet_uuid
    public.set_network_ipam(ipam, v.VnSubnetsType(
        [subnet("203.0.113.0", 24), subnet("198.51.100.0", 24)]))
    vnc.virtual_network_update(public)
    first_subnet, second_subnet = ipam_subnets(vnc.virtual_network_read(id=public.uuid))
    assert first_subnet.subnet_uuid == old_uuid
    assert second_subnet.subnet.ip_prefix == "198.51.100.0"
    limited = v.FloatingIpPool("limited", public, floating_ip_pool_subnets=(
        v.FloatingIpPoolSubnetType([second_subnet.subnet_uuid])))
    limited_fip = vnc.floating_ip_create(
        v.FloatingIp("fip4", vnc.floating_ip_pool_read(id=vnc.floating_ip_pool_create(limited))))
    assert vnc.floating_ip_read(id=limited_fip).get_floating_ip_address() == "198.51.100.252"
    # the port sees its floating ip as a back ref
    p = vnc.virtual_machine_interface_read(id=port.uuid, fields=["floating_ip_back_refs"])
    assert [r["uuid"] for r in p.get_floating_ip_back_refs()] == [fip_uuid]
    # detach through the del_ helper (ref-update DELETE)
    got.del_virtual_machine_interface(port)
    vnc.floating_ip_update(got)
    assert vnc.floating_ip_read(id=fip_uuid).get_virtual_machine_interface_refs() is None


def test_service_template_instance_and_port_tuple(vnc: Any) -> None:
    project = make_project(vnc)
    domain = vnc.domain_read(fq_name=DOMAIN)
    props = v.ServiceTemplateType(
        version=2, service_mode="in-network", service_type="firewall",
        interface_type=[v.ServiceTemplateInterfaceType(service_interface_type="left"),
                        v.ServiceTemplateInterfaceType(service_interface_type="right")])
    st_uuid = vnc.service_template_create(
        v.ServiceTemplate("fw-template", domain, service_template_properties=props))
    st = vnc.service_template_read(id=st_uuid)
    assert st.get_fq_name() == ["default-domain", "fw-template"]
    assert st.get_service_template_properties().service_mode == "in-network"
    # a template is shared read-only with its domain
    share = [(s.tenant, s.tenant_access) for s in st.get_perms2().share]
    assert (f"domain:{domain.uuid}", 5) in share
    ipam = make_ipam(vnc, project)
    left = make_vn(vnc, project, "left", ipam, [(V4_NET, V4_LEN)])
    right = make_vn(vnc, project, "right", ipam, [("198.51.100.0", 24)])
    si = v.ServiceInstance("fw", project, service_instance_properties=v.ServiceInstanceType(
        interface_list=[v.ServiceInstanceInterfaceType(virtual_network=left.get_fq_name_str()),
                        v.ServiceInstanceInterfaceType(
                            virtual_network=right.get_fq_name_str())]))
    si.add_service_template(st)
    si_uuid = vnc.service_instance_create(si)
    pt_uuid = vnc.port_tuple_create(v.PortTuple("pt", vnc.service_instance_read(id=si_uuid)))
    pt = vnc.port_tuple_read(id=pt_uuid)
    assert pt.get_fq_name() == [*project.fq_name, "fw", "pt"]
    left_port = make_port(vnc, project, "si-left", left)
    left_port.add_port_tuple(pt)
    left_port.set_virtual_machine_interface_properties(
        v.VirtualMachineInterfacePropertiesType(service_interface_type="left"))
    vnc.virtual_machine_interface_update(left_port)
    pt = vnc.port_tuple_read(id=pt_uuid, fields=["virtual_machine_interface_back_refs"])
    assert [r["uuid"] for r in pt.get_virtual_machine_interface_back_refs()] == [left_port.uuid]
    si_read = vnc.service_instance_read(id=si_uuid, fields=["port_tuples"])
    assert [c["uuid"] for c in si_read.get_port_tuples()] == [pt_uuid]
    st_back = vnc.service_template_read(id=st_uuid, fields=["service_instance_back_refs"])
    assert [r["uuid"] for r in st_back.get_service_instance_back_refs()] == [si_uuid]
    # the template is in use: it cannot go before the instance
    with pytest.raises(RefsExistError):
        vnc.service_template_delete(id=st_uuid)
    vnc.virtual_machine_interface_delete(id=left_port.uuid)
    vnc.service_instance_delete(id=si_uuid)  # takes its (derived) port tuple with it
    with pytest.raises(NoIdError):
        vnc.port_tuple_read(id=pt_uuid)
    vnc.service_template_delete(id=st_uuid)


# ----------------------------------------------------------------------------------------------
# read and update
def test_read_with_fields_and_lazy_getters(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net", make_ipam(vnc, project), [(V4_NET, V4_LEN)],
                 display_name="Net One")
    got = vnc.virtual_network_read(id=vn.uuid, fields=["display_name"])
    assert got.get_display_name() == "Net One"
    assert got.get_id_perms() is not None and got.get_perms2() is not None
    # fields leaves out what was not asked for
    resp = requests.get(f"{raw(vnc)}/virtual-network/{vn.uuid}",
                        params={"fields": "display_name"}, timeout=10).json()["virtual-network"]
    assert "network_ipam_refs" not in resp and "virtual_network_network_id" not in resp
    assert {"uuid", "fq_name", "display_name", "id_perms", "perms2"} <= set(resp)
    # a default read leaves out back refs and children; the lazy getters fetch them
    default = vnc.virtual_network_read(id=vn.uuid)
    assert default.get_virtual_network_network_id() >= 1
    assert [r["to"][-1] for r in default.get_routing_instances()] == ["net"]
    by_name = vnc.virtual_network_read(fq_name=vn.fq_name)
    assert by_name.uuid == vn.uuid
    by_str = vnc.virtual_network_read(fq_name_str=vn.get_fq_name_str())
    assert by_str.uuid == vn.uuid


def test_update_semantics(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net", make_ipam(vnc, project), [(V4_NET, V4_LEN)])
    before = vn.get_id_perms().last_modified
    vn.set_display_name("renamed")
    perms = vn.get_id_perms()
    perms.set_description("the blue network")
    vn.set_id_perms(perms)
    vn.set_flood_unknown_unicast(True)
    vnc.virtual_network_update(vn)
    got = vnc.virtual_network_read(id=vn.uuid)
    assert got.get_display_name() == "renamed"
    assert got.get_id_perms().description == "the blue network"
    assert got.get_flood_unknown_unicast() is True
    assert got.get_id_perms().last_modified >= before
    # a PUT replaces only the fields it carries; absent fields keep their values
    url = f"{raw(vnc)}/virtual-network/{vn.uuid}"
    r = requests.put(url, json={"virtual-network": {"uuid": vn.uuid, "is_shared": False}},
                     timeout=10)
    assert r.status_code == 200
    assert r.json()["virtual-network"]["uuid"] == vn.uuid
    got = vnc.virtual_network_read(id=vn.uuid)
    assert got.get_display_name() == "renamed"
    assert len(ipam_subnets(got)) == 1
    # a property set to null is deleted
    r = requests.put(url, json={"virtual-network": {"flood_unknown_unicast": None}}, timeout=10)
    assert r.status_code == 200
    stored = requests.get(url, timeout=10).json()["virtual-network"]
    assert "flood_unknown_unicast" not in stored
    # an empty body changes nothing: 200 with an empty body
    r = requests.put(url, json={"virtual-network": {}}, timeout=10)
    assert (r.status_code, r.text) == (200, "")
    # only enable and description of id_perms can be changed
    created = got.get_id_perms().created
    r = requests.put(url, json={"virtual-network": {"id_perms": {
        "created": "2000-01-01T00:00:00", "enable": False}}}, timeout=10)
    assert r.status_code == 200
    perms = vnc.virtual_network_read(id=vn.uuid).get_id_perms()
    assert (perms.created, perms.enable) == (created, False)
    # set_<ref>_list([]) sends refs: [] and removes them all
    policy_uuid = vnc.network_policy_create(v.NetworkPolicy("pol", project))
    policy = vnc.network_policy_read(id=policy_uuid)
    got = vnc.virtual_network_read(id=vn.uuid)
    got.set_network_policy(policy, v.VirtualNetworkPolicyType(sequence=v.SequenceType(1, 0)))
    vnc.virtual_network_update(got)
    assert len(vnc.virtual_network_read(id=vn.uuid).get_network_policy_refs()) == 1
    got = vnc.virtual_network_read(id=vn.uuid)
    got.set_network_policy_list([], [])
    vnc.virtual_network_update(got)
    assert vnc.virtual_network_read(id=vn.uuid).get_network_policy_refs() is None
    # nothing pending: the client sends no PUT and returns None
    assert vnc.virtual_network_update(vnc.virtual_network_read(id=vn.uuid)) is None


def test_ref_helpers_use_ref_update(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net", make_ipam(vnc, project), [(V4_NET, V4_LEN)])
    pols = [vnc.network_policy_read(id=vnc.network_policy_create(v.NetworkPolicy(n, project)))
            for n in ("p1", "p2")]
    vn.add_network_policy(pols[0], v.VirtualNetworkPolicyType(sequence=v.SequenceType(1, 0)))
    vn.add_network_policy(pols[1], v.VirtualNetworkPolicyType(sequence=v.SequenceType(2, 0)))
    vnc.virtual_network_update(vn)
    refs = vnc.virtual_network_read(id=vn.uuid).get_network_policy_refs()
    by_uuid = {r["uuid"]: r["attr"] for r in refs}
    assert by_uuid[pols[0].uuid].sequence.major == 1
    assert by_uuid[pols[1].uuid].sequence.major == 2
    # the policy lists the network as a back ref
    p = vnc.network_policy_read(id=pols[0].uuid, fields=["virtual_network_back_refs"])
    assert [r["uuid"] for r in p.get_virtual_network_back_refs()] == [vn.uuid]
    assert p.get_virtual_network_back_refs()[0]["attr"]["sequence"]["major"] == 1
    got = vnc.virtual_network_read(id=vn.uuid)
    got.del_network_policy(pols[0])
    vnc.virtual_network_update(got)
    refs = vnc.virtual_network_read(id=vn.uuid).get_network_policy_refs()
    assert [r["uuid"] for r in refs] == [pols[1].uuid]
    # ref_update directly: ADD of an existing ref only replaces attr; DELETE of a missing
    # ref is a no-op; by fq_name works too
    attr = v.VirtualNetworkPolicyType(sequence=v.SequenceType(7, 1))
    assert vnc.ref_update("virtual-network", vn.uuid, "network_policy_refs", pols[1].uuid,
                          None, "ADD", attr) == vn.uuid
    refs = vnc.virtual_network_read(id=vn.uuid).get_network_policy_refs()
    assert len(refs) == 1 and refs[0]["attr"].sequence.major == 7
    vnc.ref_update("virtual-network", vn.uuid, "network-policy", None, pols[0].fq_name, "ADD",
                   attr)
    vnc.ref_update("virtual-network", vn.uuid, "network-policy", pols[0].uuid, None, "DELETE")
    vnc.ref_update("virtual-network", vn.uuid, "network-policy", pols[0].uuid, None, "delete")
    refs = vnc.virtual_network_read(id=vn.uuid).get_network_policy_refs()
    assert [r["uuid"] for r in refs] == [pols[1].uuid]


def test_ref_relax_for_delete(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net", make_ipam(vnc, project), [(V4_NET, V4_LEN)])
    policy = vnc.network_policy_read(id=vnc.network_policy_create(v.NetworkPolicy("p", project)))
    vn.add_network_policy(policy, v.VirtualNetworkPolicyType(sequence=v.SequenceType(1, 0)))
    vnc.virtual_network_update(vn)
    with pytest.raises(RefsExistError):
        vnc.network_policy_delete(id=policy.uuid)
    assert vnc.ref_relax_for_delete(vn.uuid, policy.uuid) == vn.uuid
    vnc.network_policy_delete(id=policy.uuid)
    # the relaxed ref went away with its target
    assert vnc.virtual_network_read(id=vn.uuid).get_network_policy_refs() is None


# ----------------------------------------------------------------------------------------------
# list and map properties
def test_annotations_map_through_update_helpers(vnc: Any) -> None:
    project = make_project(vnc)
    vn = v.VirtualNetwork("net", project)
    vn.add_annotations(v.KeyValuePair("owner", "alice"))  # sent after the create
    uuid = vnc.virtual_network_create(vn)
    got = vnc.virtual_network_read(id=uuid)
    assert [(kv.key, kv.value) for kv in got.get_annotations().key_value_pair] == [
        ("owner", "alice")]
    got.add_annotations(v.KeyValuePair("team", "blue"))
    vnc.virtual_network_update(got)
    got = vnc.virtual_network_read(id=uuid)
    assert sorted(kv.key for kv in got.get_annotations().key_value_pair) == ["owner", "team"]
    got.del_annotations(elem_position="owner")
    vnc.virtual_network_update(got)
    got = vnc.virtual_network_read(id=uuid)
    assert [(kv.key, kv.value) for kv in got.get_annotations().key_value_pair] == [
        ("team", "blue")]
    # the prop_map_* client methods
    vnc.prop_map_set_element(uuid, "annotations", v.KeyValuePair("team", "red"))
    assert vnc.prop_map_get(uuid, "annotations") == [[{"key": "team", "value": "red"}, "team"]]
    assert vnc.prop_map_get(uuid, "annotations", position="team")[0][0]["value"] == "red"
    vnc.prop_map_delete_element(uuid, "annotations", "team")
    assert vnc.prop_map_get(uuid, "annotations") == []
    assert vnc.virtual_network_read(id=uuid).get_annotations() is None


def test_prop_list_methods_and_positions(vnc: Any) -> None:
    project = make_project(vnc)
    fat = v.FatFlowProtocols([v.ProtocolType("tcp", 80), v.ProtocolType("udp", 53)])
    vn = v.VirtualNetwork("net", project, virtual_network_fat_flow_protocols=fat)
    uuid = vnc.virtual_network_create(vn)
    field = "virtual_network_fat_flow_protocols"
    # elements written at create get positions "0", "1", ...
    got = vnc.prop_list_get(uuid, field)
    assert [(e["protocol"], e["port"], p) for e, p in got] == [("tcp", 80, "0"),
                                                              ("udp", 53, "1")]
    vnc.prop_list_add_element(uuid, field, v.ProtocolType("tcp", 443))
    got = vnc.prop_list_get(uuid, field)
    added = next(p for e, p in got if e["port"] == 443)
    assert str(uuidlib.UUID(added)) == added  # an add without a position gets a uuid
    vnc.prop_list_modify_element(uuid, field, v.ProtocolType("udp", 5353), "1")
    assert vnc.prop_list_get(uuid, field, position="1")[0][0]["port"] == 5353
    vnc.prop_list_delete_element(uuid, field, "0")
    got = vnc.prop_list_get(uuid, field)
    assert sorted(e["port"] for e, _ in got) == [443, 5353]
    # the read returns the wrapped list in position order
    read = vnc.virtual_network_read(id=uuid).get_virtual_network_fat_flow_protocols()
    assert [p.port for p in read.fat_flow_protocol] == [e["port"] for e, _ in got]
    # raw /prop-collection-get, several fields at once
    r = requests.get(f"{raw(vnc)}/prop-collection-get",
                     params={"uuid": uuid, "fields": f"{field},annotations"}, timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert len(body[field]) == 2 and body["annotations"] == []
    # a field that is not a collection: 400
    with pytest.raises(BadRequest):
        vnc.prop_list_get(uuid, "display_name")
    # unknown uuid: 404
    with pytest.raises(NoIdError):
        vnc.prop_list_get(str(uuidlib.uuid4()), field)


# ----------------------------------------------------------------------------------------------
# actions
def test_useragent_kv(vnc: Any) -> None:
    vnc.kv_store("neutron:port:1", "value-one")
    vnc.kv_store("neutron:port:2", "value-two")
    assert vnc.kv_retrieve("neutron:port:1") == "value-one"
    assert vnc.kv_retrieve(["neutron:port:1", "neutron:port:2"]) == ["value-one", "value-two"]
    everything = {e["key"]: e["value"] for e in vnc.kv_retrieve()}
    assert everything == {"neutron:port:1": "value-one", "neutron:port:2": "value-two"}
    vnc.kv_store("neutron:port:1", "changed")
    assert vnc.kv_retrieve("neutron:port:1") == "changed"
    vnc.kv_delete("neutron:port:1")
    with pytest.raises(NoIdError):
        vnc.kv_retrieve("neutron:port:1")
    vnc.kv_delete("neutron:port:never")  # deleting an unknown key is fine


def test_chown_chmod_and_obj_perms(vnc: Any) -> None:
    alice = make_project(vnc, "alice")
    bob = make_project(vnc, "bob")
    vn = make_vn(vnc, alice, "net")
    assert vn.get_perms2().owner == alice.uuid.replace("-", "")
    vnc.chown(vn.uuid, bob.uuid)
    assert vnc.virtual_network_read(id=vn.uuid).get_perms2().owner == bob.uuid.replace("-", "")
    vnc.chmod(vn.uuid, owner_access=5, share=[(f"tenant:{alice.uuid}", 5)], global_access=7)
    perms2 = vnc.virtual_network_read(id=vn.uuid).get_perms2()
    assert perms2.owner_access == 5 and perms2.global_access == 7
    assert [(s.tenant, s.tenant_access) for s in perms2.share] == [(f"tenant:{alice.uuid}", 5)]
    # global_access 7 on a network makes it shared
    assert vnc.virtual_network_read(id=vn.uuid).get_is_shared() is True
    vnc.chmod(vn.uuid, global_access=0)
    assert vnc.virtual_network_read(id=vn.uuid).get_is_shared() is False
    with pytest.raises(BadRequest):
        vnc.chmod(vn.uuid, owner_access=9)
    with pytest.raises(BadRequest):
        vnc.chown(vn.uuid, "not-a-uuid")
    with pytest.raises(NoIdError):
        vnc.chown(str(uuidlib.uuid4()), bob.uuid)
    perms = vnc.obj_perms(None, vn.uuid)
    assert perms["permissions"] == "RWX"
    assert perms["token_info"] is None
    assert perms["is_global_read_only_role"] is False


def test_aaa_mode(vnc: Any) -> None:
    assert vnc.get_aaa_mode() == {"aaa-mode": "no-auth"}
    assert vnc.set_aaa_mode("cloud-admin") == {"aaa-mode": "cloud-admin"}
    assert vnc.get_aaa_mode() == {"aaa-mode": "cloud-admin"}
    vnc.set_aaa_mode("no-auth")
    assert vnc.get_aaa_mode()["aaa-mode"] == "no-auth"
    r = requests.put(f"{raw(vnc)}/aaa-mode", json={"aaa-mode": "bogus"}, timeout=10)
    assert r.status_code == 400


def test_fq_name_to_id_and_back(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net")
    assert vnc.fq_name_to_id("virtual-network", vn.fq_name) == vn.uuid
    assert vnc.fq_name_to_id("virtual_network", vn.fq_name) == vn.uuid
    assert vnc.id_to_fq_name(vn.uuid) == vn.fq_name
    assert vnc.id_to_fq_name_type(vn.uuid) == (vn.fq_name, "virtual-network")
    assert vnc.id_to_fq_name_type(project.uuid) == (project.fq_name, "project")
    # the fq_name is unique per type, not across types
    ipam = make_ipam(vnc, project, "net")
    assert vnc.fq_name_to_id("network-ipam", ipam.fq_name) == ipam.uuid != vn.uuid
    with pytest.raises(NoIdError):
        vnc.fq_name_to_id("virtual-network", [*project.fq_name, "nope"])
    with pytest.raises(NoIdError):
        vnc.id_to_fq_name(str(uuidlib.uuid4()))
    assert vnc.get_default_project_id() == vnc.fq_name_to_id(
        "project", ["default-domain", "default-project"])


def test_virtual_network_ip_alloc_free_and_count(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net", make_ipam(vnc, project),
                 [(V4_NET, V4_LEN), (V6_NET, V6_LEN)])
    got = vnc.virtual_network_ip_alloc(vn, count=2, family="v4")
    assert got == ["192.0.2.252", "192.0.2.251"]
    v6_uuid = ipam_subnets(vn)[1].subnet_uuid
    got6 = vnc.virtual_network_ip_alloc(vn, subnet=v6_uuid)
    assert ipaddress.ip_address(got6[0]) in ipaddress.ip_network(f"{V6_NET}/{V6_LEN}")
    # reserved addresses are skipped by instance-ip allocation
    iip = make_iip(vnc, "iip", vn)
    assert iip.get_instance_ip_address() == "192.0.2.250"
    count = vnc.virtual_network_subnet_ip_count(vn, ["192.0.2.0/24", "2001:db8:1::/64"])
    assert _json(count) == {"ip_count_list": [3, 1]}
    vnc.virtual_network_ip_free(vn, ["192.0.2.252"])
    count = vnc.virtual_network_subnet_ip_count(vn, ["192.0.2.0/24"])
    assert _json(count) == {"ip_count_list": [2]}
    again = make_iip(vnc, "iip2", vn, instance_ip_address="192.0.2.252")
    assert again.get_instance_ip_address() == "192.0.2.252"
    with pytest.raises(NoIdError):
        vnc.virtual_network_ip_alloc(vn, subnet=str(uuidlib.uuid4()))


def _json(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str | bytes) else text


# ----------------------------------------------------------------------------------------------
# delete and the wire format of successes
def test_teardown_in_order_removes_everything(vnc: Any) -> None:
    project = make_project(vnc, "short-lived")
    ipam = make_ipam(vnc, project)
    vn = make_vn(vnc, project, "net", ipam, [(V4_NET, V4_LEN)])
    port = make_port(vnc, project, "port", vn)
    iip = make_iip(vnc, "iip-teardown", vn, port)
    ri_uuid = vnc.virtual_network_read(id=vn.uuid).get_routing_instances()[0]["uuid"]
    vnc.instance_ip_delete(id=iip.uuid)
    vnc.virtual_machine_interface_delete(id=port.uuid)
    vnc.virtual_network_delete(id=vn.uuid)
    for read, u in ((vnc.virtual_network_read, vn.uuid), (vnc.routing_instance_read, ri_uuid),
                    (vnc.instance_ip_read, iip.uuid)):
        with pytest.raises(NoIdError):
            read(id=u)
    vnc.network_ipam_delete(fq_name=ipam.fq_name)
    # the project's default application-policy-set does not block its delete
    vnc.project_delete(id=project.uuid)
    with pytest.raises(NoIdError):
        vnc.project_read(id=project.uuid)
    with pytest.raises(NoIdError):
        vnc.application_policy_set_read(
            fq_name=["default-domain", "short-lived", "default-application-policy-set"])


def test_successes_are_200_with_tf_shapes(vnc: Any) -> None:
    base = raw(vnc)
    project = make_project(vnc)
    body = {"virtual-network": {"uuid": None, "fq_name": [*project.fq_name, "raw-net"],
                                "parent_type": "project", "display_name": None,
                                "id_perms": {"enable": True, "permissions": None}}}
    r = requests.post(f"{base}/virtual-networks", json=body, timeout=10)
    assert r.status_code == 200
    created = r.json()["virtual-network"]
    assert created["parent_type"] == "project" and created["parent_uuid"] == project.uuid
    assert created["fq_name"] == [*project.fq_name, "raw-net"]
    assert created["href"] == f"{base}/virtual-network/{created['uuid']}"
    r = requests.get(created["href"], timeout=10)
    assert r.status_code == 200
    obj = r.json()["virtual-network"]
    assert obj["parent_href"] == f"{base}/project/{project.uuid}"
    assert obj["name"] == "raw-net" and obj["display_name"] == "raw-net"
    assert r.headers["ETag"] == f'"{obj["id_perms"]["last_modified"]}"'
    # empty ref, back-ref and child lists are left out, never []
    assert not [k for k, val in obj.items() if val == []]
    # a canonical uuid given by the client is used
    mine = str(uuidlib.uuid4())
    r = requests.post(f"{base}/network-ipams", json={"network-ipam": {
        "uuid": mine, "fq_name": [*project.fq_name, "mine"], "parent_type": "project"}},
        timeout=10)
    assert r.status_code == 200 and r.json()["network-ipam"]["uuid"] == mine
    r = requests.delete(created["href"], timeout=10)
    assert (r.status_code, r.text) == (200, "")
    r = requests.get(f"{base}/", timeout=10)
    links = {ln["link"]["name"]: ln["link"] for ln in r.json()["links"]
             if ln["link"]["rel"] == "action"}
    for name in ("name-to-id", "id-to-name", "ref-update", "ref-relax-for-delete",
                 "prop-collection-get", "prop-collection-update", "useragent-keyvalue",
                 "list-bulk-collection", "chown", "chmod", "set-tag", "aaa-mode",
                 "virtual-network-ip-alloc"):
        assert links[name]["href"].startswith(r.json()["href"])


def test_boot_time_defaults(vnc: Any) -> None:
    gsc = vnc.global_system_config_read(fq_name=["default-global-system-config"])
    assert gsc.get_autonomous_system() == 64512
    vnc.global_vrouter_config_read(
        fq_name=["default-global-system-config", "default-global-vrouter-config"])
    dp = ["default-domain", "default-project"]
    ipam = vnc.network_ipam_read(fq_name=[*dp, "default-network-ipam"])
    assert ipam.get_perms2().global_access == 5
    flat = vnc.network_ipam_read(fq_name=[*dp, "service-chain-flat-ipam"])
    assert flat.get_ipam_subnet_method() == "flat-subnet"
    for vn_name, ris in (("default-virtual-network", {"default-virtual-network"}),
                         ("ip-fabric", {"ip-fabric", "__default__"}),
                         ("__link_local__", {"__link_local__"}),
                         ("dci-network", {"dci-network", "__default__"})):
        vn = vnc.virtual_network_read(fq_name=[*dp, vn_name])
        assert {r["to"][-1] for r in vn.get_routing_instances()} == ris, vn_name
        primary = vnc.routing_instance_read(fq_name=[*dp, vn_name, vn_name])
        assert primary.get_routing_instance_is_default() is True
    assert vnc.virtual_network_read(fq_name=[*dp, "ip-fabric"]).get_is_provider_network()
    no_rule = vnc.security_group_read(fq_name=[*dp, "__no_rule__"])
    assert no_rule.get_perms2().global_access == 5
    for i, name in enumerate(["label", "application", "tier", "deployment", "site",
                              "neutron_fwaas", "neutron_tag"]):
        tt = vnc.tag_type_read(fq_name=[name])
        assert tt.get_tag_type_id() == f"0x{i:04x}"
        assert tt.get_id_perms().user_visible is False
    vnc.namespace_read(fq_name=["default-domain", "default-namespace"])
    vnc.fabric_read(fq_name=["default-global-system-config", "default-fabric"])
    # boot-time projects got no extra default children over REST semantics
    fresh = make_project(vnc, "fresh")
    assert vnc.virtual_networks_list(parent_id=fresh.uuid) == {"virtual-networks": []}
    assert vnc.network_ipams_list(parent_id=fresh.uuid) == {"network-ipams": []}


def test_action_endpoints_answer_200(vnc: Any) -> None:
    base = raw(vnc)
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net")
    policy = vnc.network_policy_create(v.NetworkPolicy("p", project))
    r = requests.post(f"{base}/ref-update", json={
        "type": "virtual-network", "uuid": vn.uuid, "ref-type": "network-policy",
        "ref-uuid": policy, "ref-fq-name": None, "operation": "ADD",
        "attr": {"sequence": {"major": 0, "minor": 0}}}, timeout=10)
    assert (r.status_code, r.json()) == (200, {"uuid": vn.uuid})
    r = requests.post(f"{base}/ref-relax-for-delete",
                      json={"uuid": vn.uuid, "ref-uuid": policy}, timeout=10)
    assert (r.status_code, r.json()) == (200, {"uuid": vn.uuid})
    r = requests.post(f"{base}/prop-collection-update", json={"uuid": vn.uuid, "updates": [
        {"field": "annotations", "operation": "set", "value": {"key": "k", "value": "v"},
         "position": "k"}]}, timeout=10)
    assert (r.status_code, r.text) == (200, "")
    r = requests.post(f"{base}/useragent-kv",
                      json={"operation": "STORE", "key": "k", "value": "v"}, timeout=10)
    assert (r.status_code, r.text) == (200, "")
    r = requests.post(f"{base}/useragent-kv", json={"operation": "RETRIEVE", "key": "k"},
                      timeout=10)
    assert (r.status_code, r.json()) == (200, {"value": "v"})
    r = requests.post(f"{base}/chown", json={"uuid": vn.uuid, "owner": project.uuid},
                      timeout=10)
    assert (r.status_code, r.json()) == (200, {})
    r = requests.post(f"{base}/chmod", json={"uuid": vn.uuid, "global_access": 5}, timeout=10)
    assert (r.status_code, r.json()) == (200, {})
    r = requests.post(f"{base}/set-tag", json={"obj_type": "virtual_network",
                                               "obj_uuid": vn.uuid, "application": None},
                      timeout=10)
    assert (r.status_code, r.json()) == (200, {})
    r = requests.get(f"{base}/obj-perms", params={"uuid": vn.uuid}, timeout=10)
    assert r.status_code == 200 and r.json()["permissions"] == "RWX"
    r = requests.post(f"{base}/id-to-fqname", json={"uuid": vn.uuid}, timeout=10)
    assert r.json() == {"fq_name": vn.fq_name, "type": "virtual-network"}
    r = requests.post(f"{base}/fqname-to-id",
                      json={"type": "virtual_network", "fq_name": vn.fq_name}, timeout=10)
    assert r.json() == {"uuid": vn.uuid}


def test_read_exclude_flags_count_by_presence(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net")
    make_port(vnc, project, "port", make_vn(vnc, project, "with-subnet",
                                            make_ipam(vnc, project), [(V4_NET, V4_LEN)]))
    url = f"{raw(vnc)}/virtual-network/{vn.uuid}"
    full = requests.get(url, timeout=10).json()["virtual-network"]
    assert "routing_instances" in full
    # only the presence of the key counts, not its value
    for value in ("False", "True", ""):
        r = requests.get(url, params={"exclude_children": value}, timeout=10)
        assert "routing_instances" not in r.json()["virtual-network"], value
    proj_url = f"{raw(vnc)}/project/{project.uuid}"
    assert "virtual_networks" in requests.get(proj_url, timeout=10).json()["project"]
    body = requests.get(proj_url, params={"exclude_children": "False",
                                          "exclude_back_refs": "False"}, timeout=10).json()
    assert "virtual_networks" not in body["project"]
    ipam = vnc.network_ipam_read(fq_name=[*project.fq_name, "ipam"])
    ipam_url = f"{raw(vnc)}/network-ipam/{ipam.uuid}"
    assert "virtual_network_back_refs" in requests.get(ipam_url, timeout=10).json()[
        "network-ipam"]
    body = requests.get(ipam_url, params={"exclude_back_refs": "false"}, timeout=10).json()
    assert "virtual_network_back_refs" not in body["network-ipam"]


def test_state_and_allocations_survive_a_restart(controller: Any) -> None:
    def connect() -> Any:
        return v.VncApi(api_server_host="127.0.0.1", api_server_port=controller.port,
                        auth_type="noauth")

    api = connect()
    project = make_project(api)
    vn = make_vn(api, project, "net", make_ipam(api, project), [(V4_NET, V4_LEN)])
    first = make_iip(api, "iip-1", vn)
    sg = api.security_group_read(id=api.security_group_create(v.SecurityGroup(
        "sg", project, security_group_entries=v.PolicyEntriesType([]))))
    api.kv_store("survives", "yes")
    controller.restart()
    api = connect()
    assert api.virtual_network_read(id=vn.uuid).get_virtual_network_network_id() == (
        vn.get_virtual_network_network_id())
    assert api.instance_ip_read(id=first.uuid).get_instance_ip_address() == "192.0.2.252"
    # allocation goes on where it was, without handing out a taken address or id
    assert make_iip(api, "iip-2", vn).get_instance_ip_address() == "192.0.2.251"
    with pytest.raises(RefsExistError):
        make_iip(api, "iip-3", vn, instance_ip_address="192.0.2.252")
    vn2 = make_vn(api, project, "net2")
    assert vn2.get_virtual_network_network_id() != vn.get_virtual_network_network_id()
    sg2 = api.security_group_read(id=api.security_group_create(v.SecurityGroup(
        "sg2", project, security_group_entries=v.PolicyEntriesType([]))))
    assert sg2.get_security_group_id() != sg.get_security_group_id()
    assert api.kv_retrieve("survives") == "yes"
    with pytest.raises(RefsExistError):
        make_project(api)


def test_logical_router_and_bgp_router_defaults(vnc: Any) -> None:
    project = make_project(vnc)
    snat = vnc.logical_router_read(id=vnc.logical_router_create(v.LogicalRouter("lr", project)))
    assert snat.get_logical_router_type() == "snat-routing"
    lr_uuid = vnc.logical_router_create(v.LogicalRouter(
        "evpn", project, logical_router_type="vxlan-routing"))
    lr = vnc.logical_router_read(id=lr_uuid)
    refs = lr.get_virtual_network_refs()
    assert len(refs) == 1
    assert refs[0]["attr"].logical_router_virtual_network_type == "InternalVirtualNetwork"
    assert refs[0]["to"] == [*project.fq_name, f"__contrail_lr_internal_vn_{lr_uuid}__"]
    internal = vnc.virtual_network_read(id=refs[0]["uuid"])
    assert internal.get_display_name() == "LR::evpn"
    vnc.logical_router_delete(id=lr_uuid)
    with pytest.raises(NoIdError):
        vnc.virtual_network_read(id=internal.uuid)
    ri = vnc.routing_instance_read(
        fq_name=["default-domain", "default-project", "ip-fabric", "__default__"])
    ctrl = vnc.bgp_router_read(id=vnc.bgp_router_create(v.BgpRouter(
        "control-1", ri, bgp_router_parameters=v.BgpRouterParams(
            vendor="contrail", address="192.0.2.11", identifier="192.0.2.11",
            autonomous_system=64512))))
    assert ctrl.get_bgp_router_parameters().router_type == "control-node"
    peer = vnc.bgp_router_read(id=vnc.bgp_router_create(v.BgpRouter(
        "mx-1", ri, bgp_router_parameters=v.BgpRouterParams(
            vendor="juniper", address="192.0.2.1", identifier="192.0.2.1",
            autonomous_system=64512))))
    assert peer.get_bgp_router_parameters().router_type == "router"


def test_client_default_parents(vnc: Any) -> None:
    # no parent given: the client puts the object under default-domain:default-project
    uuid = vnc.virtual_network_create(v.VirtualNetwork("orphan"))
    got = vnc.virtual_network_read(id=uuid)
    assert got.get_fq_name() == ["default-domain", "default-project", "orphan"]
    assert got.parent_uuid == vnc.get_default_project_id()
    # config-root children have a one-element fq_name and no parent
    vm_uuid = vnc.virtual_machine_create(v.VirtualMachine("vm-1"))
    vm = vnc.virtual_machine_read(id=vm_uuid)
    assert vm.get_fq_name() == ["vm-1"]
    r = requests.get(f"{raw(vnc)}/virtual-machine/{vm_uuid}", timeout=10).json()
    assert "parent_type" not in r["virtual-machine"]
    # a port under the virtual machine
    vmi = v.VirtualMachineInterface("vm-1-eth0", vm)
    vmi.add_virtual_network(got)
    vmi_uuid = vnc.virtual_machine_interface_create(vmi)
    assert vnc.virtual_machine_interface_read(id=vmi_uuid).get_fq_name() == [
        "vm-1", "vm-1-eth0"]
    children = vnc.virtual_machine_read(id=vm_uuid, fields=["virtual_machine_interfaces"])
    assert [c["uuid"] for c in children.get_virtual_machine_interfaces()] == [vmi_uuid]


def test_flat_subnet_ipam_is_one_address_space(vnc: Any) -> None:
    """A flat-subnet ipam (as kube-manager uses for pods) is shared by every network that
    refers to it: addresses are unique across them, and its gateway and DNS are reserved."""
    project = make_project(vnc)
    ipam_uuid = vnc.network_ipam_create(v.NetworkIpam(
        "pods", project, ipam_subnet_method="flat-subnet",
        ipam_subnets=v.IpamSubnets([subnet("198.18.0.0", 24)])))
    ipam = vnc.network_ipam_read(id=ipam_uuid)
    flat = ipam.get_ipam_subnets().subnets[0]
    assert str(uuidlib.UUID(flat.subnet_uuid)) == flat.subnet_uuid
    nets = []
    for name in ("pods-a", "pods-b"):
        vn = v.VirtualNetwork(name, project)
        vn.add_network_ipam(ipam, v.VnSubnetsType([]))
        nets.append(vnc.virtual_network_read(id=vnc.virtual_network_create(vn)))
    # the network's ref attr gets a subnet_uuid of its own
    attr = nets[0].get_network_ipam_refs()[0]["attr"]
    assert len(attr.ipam_subnets) == 1 and attr.ipam_subnets[0].subnet_uuid
    got = [make_iip(vnc, f"pod-{i}", nets[i % 2]).get_instance_ip_address() for i in range(3)]
    assert got == ["198.18.0.252", "198.18.0.251", "198.18.0.250"]
    # an instance-ip on the ipam itself draws from the same space
    direct = v.InstanceIp("direct")
    direct.add_network_ipam(ipam)
    addr = vnc.instance_ip_read(id=vnc.instance_ip_create(direct)).get_instance_ip_address()
    assert addr == "198.18.0.249"
    with pytest.raises(RefsExistError):
        make_iip(vnc, "pod-dup", nets[1], instance_ip_address="198.18.0.252")
