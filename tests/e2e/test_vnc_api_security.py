"""Security objects through TF's client: network policies, security groups, tags and the
tag-based firewall (vnc-api.md §6: rule uuids, ids, tag ids, protocol ids, endpoint tags)."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

import pytest
import requests
from vnc_api import vnc_api as v
from vnc_api.exceptions import BadRequest, NoIdError, PermissionDenied, RefsExistError

from tests.e2e.test_vnc_api_workflow import (
    V4_LEN,
    V4_NET,
    make_ipam,
    make_port,
    make_project,
    make_vn,
    raw,
)


def is_uuid(text: Any) -> bool:
    return isinstance(text, str) and str(uuidlib.UUID(text)) == text


def any_ports() -> list[Any]:
    return [v.PortType(0, 65535)]


def policy_rule(src_vn: str, dst_vn: str, action: str = "pass", **kw: Any) -> Any:
    return v.PolicyRuleType(
        direction="<>", protocol="tcp",
        src_addresses=[v.AddressType(virtual_network=src_vn)], src_ports=any_ports(),
        dst_addresses=[v.AddressType(virtual_network=dst_vn)], dst_ports=[v.PortType(80, 80)],
        action_list=v.ActionListType(simple_action=action), **kw)


def sg_rule(remote: Any, direction: str = "ingress", ethertype: str = "IPv4") -> Any:
    local = [v.AddressType(security_group="local")]
    src, dst = ([remote], local) if direction == "ingress" else (local, [remote])
    return v.PolicyRuleType(direction=">", protocol="any", ethertype=ethertype,
                            src_addresses=src, src_ports=any_ports(),
                            dst_addresses=dst, dst_ports=any_ports())


def make_tag(vnc: Any, ttype: str, value: str, parent: Any | None = None) -> Any:
    tag = v.Tag(parent_obj=parent, tag_type_name=ttype, tag_value=value) if parent else \
        v.Tag(tag_type_name=ttype, tag_value=value)
    return vnc.tag_read(id=vnc.tag_create(tag))


# ----------------------------------------------------------------------------------------------
# network policies
def test_network_policy_rules_and_attachment(vnc: Any) -> None:
    project = make_project(vnc)
    ipam = make_ipam(vnc, project)
    web = make_vn(vnc, project, "web", ipam, [(V4_NET, V4_LEN)])
    db = make_vn(vnc, project, "db", ipam, [("198.51.100.0", 24)])
    entries = v.PolicyEntriesType([policy_rule(web.get_fq_name_str(), db.get_fq_name_str()),
                                   policy_rule("any", db.get_fq_name_str(), "deny")])
    pol_uuid = vnc.network_policy_create(
        v.NetworkPolicy("web-to-db", project, network_policy_entries=entries))
    pol = vnc.network_policy_read(id=pol_uuid)
    rules = pol.get_network_policy_entries().policy_rule
    rule_uuids = [r.rule_uuid for r in rules]
    assert all(is_uuid(u) for u in rule_uuids)
    assert len(set(rule_uuids)) == 2
    assert rules[1].action_list.simple_action == "deny"
    # attach to both networks with a sequence
    for vn, major in ((web, 0), (db, 1)):
        vn.add_network_policy(pol, v.VirtualNetworkPolicyType(
            sequence=v.SequenceType(major, 0), timer=None))
        vnc.virtual_network_update(vn)
    got = vnc.virtual_network_read(id=db.uuid).get_network_policy_refs()
    assert got[0]["uuid"] == pol_uuid
    assert (got[0]["attr"].sequence.major, got[0]["attr"].sequence.minor) == (1, 0)
    back = vnc.network_policy_read(id=pol_uuid, fields=["virtual_network_back_refs"])
    assert {r["uuid"] for r in back.get_virtual_network_back_refs()} == {web.uuid, db.uuid}
    # rule uuids survive an update that sends them back, and new rules get one
    pol.get_network_policy_entries().add_policy_rule(policy_rule("any", "any"))
    pol.set_network_policy_entries(pol.get_network_policy_entries())
    vnc.network_policy_update(pol)
    again = vnc.network_policy_read(id=pol_uuid).get_network_policy_entries().policy_rule
    assert [r.rule_uuid for r in again[:2]] == rule_uuids
    assert is_uuid(again[2].rule_uuid)
    with pytest.raises(RefsExistError):
        vnc.network_policy_delete(id=pol_uuid)


def test_network_policy_rule_checks(vnc: Any) -> None:
    project = make_project(vnc)
    rule = policy_rule("any", "any")
    with pytest.raises(RefsExistError):  # duplicate rules
        vnc.network_policy_create(v.NetworkPolicy(
            "dup", project, network_policy_entries=v.PolicyEntriesType([rule, rule])))
    no_action = policy_rule("any", "any")
    no_action.action_list = None
    with pytest.raises(BadRequest):
        vnc.network_policy_create(v.NetworkPolicy(
            "noact", project, network_policy_entries=v.PolicyEntriesType([no_action])))
    with_sg = policy_rule("any", "any")
    with_sg.src_addresses = [v.AddressType(security_group="local")]
    with pytest.raises(BadRequest):
        vnc.network_policy_create(v.NetworkPolicy(
            "sg", project, network_policy_entries=v.PolicyEntriesType([with_sg])))


# ----------------------------------------------------------------------------------------------
# security groups
def test_security_group_ids_and_rule_uuids(vnc: Any) -> None:
    project = make_project(vnc)
    sg_fq = ":".join([*project.fq_name, "default"])
    rules = [sg_rule(v.AddressType(security_group=sg_fq)),
             sg_rule(v.AddressType(security_group=sg_fq), ethertype="IPv6"),
             sg_rule(v.AddressType(subnet=v.SubnetType("0.0.0.0", 0)), "egress"),
             sg_rule(v.AddressType(subnet=v.SubnetType("::", 0)), "egress", "IPv6")]
    sg_uuid = vnc.security_group_create(v.SecurityGroup(
        "default", project, security_group_entries=v.PolicyEntriesType(rules)))
    sg = vnc.security_group_read(id=sg_uuid)
    assert sg.get_security_group_id() >= 8_000_000
    got = sg.get_security_group_entries().policy_rule
    assert len(got) == 4 and all(is_uuid(r.rule_uuid) for r in got)
    other = vnc.security_group_read(id=vnc.security_group_create(
        v.SecurityGroup("empty", project, security_group_entries=v.PolicyEntriesType([]))))
    assert other.get_security_group_id() >= 8_000_000
    assert other.get_security_group_id() != sg.get_security_group_id()
    # configured_security_group_id overrides the allocated one
    conf = vnc.security_group_read(id=vnc.security_group_create(v.SecurityGroup(
        "conf", project, configured_security_group_id=4242,
        security_group_entries=v.PolicyEntriesType([]))))
    assert conf.get_security_group_id() == 4242
    # the id cannot be changed
    sg.set_security_group_id(sg.get_security_group_id() + 1)
    with pytest.raises(PermissionDenied):
        vnc.security_group_update(sg)
    # ports join it by ref; the group cannot go while they do
    vn = make_vn(vnc, project, "net", make_ipam(vnc, project), [(V4_NET, V4_LEN)])
    port = make_port(vnc, project, "port", vn)
    port.add_security_group(sg)
    vnc.virtual_machine_interface_update(port)
    back = vnc.security_group_read(id=sg_uuid, fields=["virtual_machine_interface_back_refs"])
    assert [r["uuid"] for r in back.get_virtual_machine_interface_back_refs()] == [port.uuid]
    with pytest.raises(RefsExistError):
        vnc.security_group_delete(id=sg_uuid)
    port = vnc.virtual_machine_interface_read(id=port.uuid)
    port.set_security_group_list([])
    vnc.virtual_machine_interface_update(port)
    vnc.security_group_delete(id=sg_uuid)


def test_security_group_rule_checks(vnc: Any) -> None:
    project = make_project(vnc)
    not_local = v.PolicyRuleType(
        direction=">", protocol="tcp", ethertype="IPv4",
        src_addresses=[v.AddressType(subnet=v.SubnetType("192.0.2.0", 24))], src_ports=any_ports(),
        dst_addresses=[v.AddressType(subnet=v.SubnetType("198.51.100.0", 24))],
        dst_ports=any_ports())
    with pytest.raises(BadRequest):
        vnc.security_group_create(v.SecurityGroup(
            "bad", project, security_group_entries=v.PolicyEntriesType([not_local])))
    rule = sg_rule(v.AddressType(subnet=v.SubnetType("203.0.113.0", 24)))
    with pytest.raises(RefsExistError):
        vnc.security_group_create(v.SecurityGroup(
            "dup", project, security_group_entries=v.PolicyEntriesType([rule, rule])))


# ----------------------------------------------------------------------------------------------
# tags
def test_tags_names_ids_and_types(vnc: Any) -> None:
    project = make_project(vnc)
    web = make_tag(vnc, "application", "web", project)
    assert web.get_fq_name() == [*project.fq_name, "application=web"]
    assert web.get_display_name() == "application=web"
    # tag_id: the tag type id (application is 0x0001) then a 4-hex value id
    assert web.get_tag_id().startswith("0x0001") and len(web.get_tag_id()) == 10
    assert [r["to"] for r in web.get_tag_type_refs()] == [["application"]]
    db = make_tag(vnc, "application", "db", project)
    assert db.get_tag_id() != web.get_tag_id() and db.get_tag_id().startswith("0x0001")
    glob = make_tag(vnc, "Tier", "frontend")  # global; the type name is lower-cased
    assert glob.get_fq_name() == ["tier=frontend"]
    assert glob.get_tag_id().startswith("0x0002")
    # a new tag type is created on first use
    custom = make_tag(vnc, "colour", "blue", project)
    tt = vnc.tag_type_read(fq_name=["colour"])
    assert custom.get_tag_id().startswith(tt.get_tag_type_id())
    assert int(tt.get_tag_type_id(), 16) >= 7
    with pytest.raises(BadRequest):  # type and value are required
        vnc.tag_create(v.Tag(parent_obj=project, tag_type_name="label"))
    with pytest.raises(RefsExistError):
        make_tag(vnc, "application", "web", project)


def test_set_tag_and_unset_tag(vnc: Any) -> None:
    project = make_project(vnc)
    vn = make_vn(vnc, project, "net")
    web = make_tag(vnc, "application", "web", project)
    db = make_tag(vnc, "application", "db", project)
    prod = make_tag(vnc, "deployment", "prod")  # global
    blue = make_tag(vnc, "label", "blue", project)
    red = make_tag(vnc, "label", "red", project)

    def tag_uuids() -> set[str]:
        return {r["uuid"] for r in vnc.virtual_network_read(id=vn.uuid).get_tag_refs() or []}

    vnc.set_tag(vn, "application", "web")
    assert tag_uuids() == {web.uuid}
    # a unique type replaces the previous value
    vnc.set_tag(vn, "application", "db")
    assert tag_uuids() == {db.uuid}
    vnc.set_tag(vn, "deployment", "prod", is_global=True)
    assert tag_uuids() == {db.uuid, prod.uuid}
    # labels take several values
    vnc.set_tags(vn, {"label": {"add_values": ["blue", "red"]}})
    assert tag_uuids() == {db.uuid, prod.uuid, blue.uuid, red.uuid}
    vnc.set_tags(vn, {"label": {"delete_values": ["blue"]}})
    assert tag_uuids() == {db.uuid, prod.uuid, red.uuid}
    vnc.unset_tag(vn, "application")
    assert tag_uuids() == {prod.uuid, red.uuid}
    back = vnc.tag_read(id=prod.uuid, fields=["virtual_network_back_refs"])
    assert [r["uuid"] for r in back.get_virtual_network_back_refs()] == [vn.uuid]
    # a tag that does not exist
    with pytest.raises(NoIdError):
        vnc.set_tag(vn, "application", "nope")
    # a tag in use cannot be deleted
    with pytest.raises(RefsExistError):
        vnc.tag_delete(id=prod.uuid)
    vnc.unset_tag(vn, "deployment")
    vnc.unset_tag(vn, "label")
    assert tag_uuids() == set()
    vnc.tag_delete(id=prod.uuid)


# ----------------------------------------------------------------------------------------------
# firewall
def test_firewall_rule_policy_and_application_policy_set(vnc: Any) -> None:
    project = make_project(vnc)
    web = make_tag(vnc, "application", "web", project)
    db = make_tag(vnc, "tier", "db", project)
    ag_uuid = vnc.address_group_create(v.AddressGroup(
        "office", project, address_group_prefix=v.SubnetListType(
            [v.SubnetType("203.0.113.0", 24)])))
    rule = v.FirewallRule(
        "web-to-db", project,
        action_list=v.ActionListType(simple_action="pass"), direction=">",
        service=v.FirewallServiceType(protocol="tcp", dst_ports=v.PortType(5432, 5432),
                                      src_ports=v.PortType(0, 65535)),
        endpoint_1=v.FirewallRuleEndpointType(tags=["application=web"]),
        endpoint_2=v.FirewallRuleEndpointType(tags=["tier=db"]))
    fr = vnc.firewall_rule_read(id=vnc.firewall_rule_create(rule))
    assert fr.get_service().protocol_id == 6
    assert fr.get_match_tag_types().tag_type == [1]  # application by default
    assert fr.get_endpoint_1().tag_ids == [int(web.get_tag_id(), 16)]
    assert fr.get_endpoint_2().tag_ids == [int(db.get_tag_id(), 16)]
    assert {r["uuid"] for r in fr.get_tag_refs()} == {web.uuid, db.uuid}
    # udp and an address group endpoint
    rule2 = v.FirewallRule(
        "office-dns", project, action_list=v.ActionListType(simple_action="pass"),
        direction="<>", service=v.FirewallServiceType(protocol="udp"),
        endpoint_1=v.FirewallRuleEndpointType(address_group=":".join(
            [*project.fq_name, "office"])),
        endpoint_2=v.FirewallRuleEndpointType(any=True))
    fr2 = vnc.firewall_rule_read(id=vnc.firewall_rule_create(rule2))
    assert fr2.get_service().protocol_id == 17
    assert [r["uuid"] for r in fr2.get_address_group_refs()] == [ag_uuid]
    # a firewall policy orders its rules with FirewallSequence
    fp = v.FirewallPolicy("app-policy", project)
    fp.add_firewall_rule(fr, v.FirewallSequence(sequence="1.0"))
    fp.add_firewall_rule(fr2, v.FirewallSequence(sequence="2.0"))
    fp_uuid = vnc.firewall_policy_create(fp)
    refs = vnc.firewall_policy_read(id=fp_uuid).get_firewall_rule_refs()
    assert {r["uuid"]: r["attr"].sequence for r in refs} == {fr.uuid: "1.0", fr2.uuid: "2.0"}
    # an application policy set takes the policy, and is tagged with the application
    aps = v.ApplicationPolicySet("web-aps", project)
    aps.add_firewall_policy(vnc.firewall_policy_read(id=fp_uuid),
                            v.FirewallSequence(sequence="1.0"))
    aps_uuid = vnc.application_policy_set_create(aps)
    aps = vnc.application_policy_set_read(id=aps_uuid)
    vnc.set_tag(aps, "application", "web")
    aps = vnc.application_policy_set_read(id=aps_uuid)
    assert [r["uuid"] for r in aps.get_firewall_policy_refs()] == [fp_uuid]
    assert [r["uuid"] for r in aps.get_tag_refs()] == [web.uuid]
    # rules in use by a policy cannot go first
    with pytest.raises(RefsExistError):
        vnc.firewall_rule_delete(id=fr.uuid)
    vnc.application_policy_set_delete(id=aps_uuid)
    vnc.firewall_policy_delete(id=fp_uuid)
    vnc.firewall_rule_delete(id=fr.uuid)
    vnc.firewall_rule_delete(id=fr2.uuid)
    # the endpoint tags no longer hold the tag
    vnc.tag_delete(id=db.uuid)


def test_firewall_rule_match_tags_and_checks(vnc: Any) -> None:
    project = make_project(vnc)
    make_tag(vnc, "application", "web", project)

    def rule(name: str, **kw: Any) -> Any:
        base: dict[str, Any] = {
            "action_list": v.ActionListType(simple_action="pass"), "direction": "<>",
            "service": v.FirewallServiceType(protocol="icmp"),
            "endpoint_1": v.FirewallRuleEndpointType(any=True),
            "endpoint_2": v.FirewallRuleEndpointType(any=True)}
        base.update(kw)
        return v.FirewallRule(name, project, **base)

    fr = vnc.firewall_rule_read(id=vnc.firewall_rule_create(rule(
        "match", match_tags=v.FirewallRuleMatchTagsType(tag_list=["application", "tier"]))))
    assert fr.get_service().protocol_id == 1
    assert sorted(fr.get_match_tag_types().tag_type) == [1, 2]
    assert fr.get_match_tags().tag_list == ["application", "tier"]
    with pytest.raises(BadRequest):  # label cannot be matched on
        vnc.firewall_rule_create(rule(
            "label", match_tags=v.FirewallRuleMatchTagsType(tag_list=["label"])))
    with pytest.raises(BadRequest):  # one selector per endpoint
        vnc.firewall_rule_create(rule("two", endpoint_1=v.FirewallRuleEndpointType(
            any=True, tags=["application=web"])))
    with pytest.raises(BadRequest):  # service or service_group_refs is needed
        vnc.firewall_rule_create(rule("nosvc", service=None))
    with pytest.raises(BadRequest):  # an endpoint tag that does not exist
        vnc.firewall_rule_create(rule("notag", endpoint_1=v.FirewallRuleEndpointType(
            tags=["application=nope"])))
    with pytest.raises(BadRequest):
        vnc.firewall_rule_create(rule("badproto", service=v.FirewallServiceType(
            protocol="warp")))
    r = requests.post(f"{raw(vnc)}/firewall-rules", json={"firewall-rule": {
        "fq_name": [*project.fq_name, "dir"], "parent_type": "project", "direction": "<-",
        "service": {"protocol": "tcp"}}}, timeout=10)
    assert r.status_code == 400


def test_firewall_objects_under_global_policy_management(vnc: Any) -> None:
    pm = vnc.policy_management_read(fq_name=["default-policy-management"])
    aps = vnc.application_policy_set_read(
        fq_name=["default-policy-management", "default-application-policy-set"])
    assert aps.get_all_applications() is True
    assert aps.get_global_vrouter_config_refs()[0]["to"] == [
        "default-global-system-config", "default-global-vrouter-config"]
    glob = make_tag(vnc, "application", "shop")
    fr = v.FirewallRule(
        "global-rule", pm, action_list=v.ActionListType(simple_action="deny"),
        direction="<>", service=v.FirewallServiceType(protocol="tcp"),
        endpoint_1=v.FirewallRuleEndpointType(tags=["global:application=shop"]),
        endpoint_2=v.FirewallRuleEndpointType(any=True))
    fr_uuid = vnc.firewall_rule_create(fr)
    got = vnc.firewall_rule_read(id=fr_uuid)
    assert got.get_fq_name() == ["default-policy-management", "global-rule"]
    assert [r["uuid"] for r in got.get_tag_refs()] == [glob.uuid]
    listed = vnc.firewall_rules_list(parent_id=pm.uuid)
    assert [e["uuid"] for e in listed["firewall-rules"]] == [fr_uuid]
