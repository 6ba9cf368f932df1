"""The VNC schema as data: every type loads with its parents, refs, children and collections."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from tungsten.model.schema import COMMON_PROPS, CONFIG_ROOT, Schema, load_schema

# Reference §7: the core types, in the reference's priority order.
CORE_TYPES = [
    "domain", "project", "global-system-config", "global-vrouter-config", "virtual-router",
    "network-ipam", "virtual-network", "routing-instance", "route-target", "virtual-machine",
    "virtual-machine-interface", "instance-ip", "floating-ip-pool", "floating-ip",
    "alias-ip-pool", "alias-ip", "network-policy", "security-group", "access-control-list",
    "logical-router", "service-template", "service-instance", "port-tuple",
    "service-health-check", "tag", "tag-type", "policy-management", "firewall-policy",
    "firewall-rule", "application-policy-set", "address-group", "service-group", "virtual-DNS",
    "virtual-DNS-record", "bgp-router", "physical-router", "physical-interface",
    "logical-interface", "qos-config", "bgp-as-a-service", "loadbalancer",
    "loadbalancer-listener", "loadbalancer-pool", "loadbalancer-member",
    "loadbalancer-healthmonitor", "route-table", "interface-route-table",
]

# Reference §4: ref fields that carry a link attribute, and its type.
LINK_ATTRS = [
    ("virtual-network", "network_ipam_refs", "VnSubnetsType"),
    ("virtual-network", "network_policy_refs", "VirtualNetworkPolicyType"),
    ("virtual-network", "routing_policy_refs", "RoutingPolicyType"),
    ("virtual-machine-interface", "routing_instance_refs", "PolicyBasedForwardingRuleType"),
    ("virtual-machine-interface", "bridge_domain_refs", "BridgeDomainMembershipType"),
    ("routing-instance", "route_target_refs", "InstanceTargetType"),
    ("routing-instance", "routing_instance_refs", "ConnectionType"),
    ("logical-router", "virtual_network_refs", "LogicalRouterVirtualNetworkType"),
    ("service-instance", "instance_ip_refs", "ServiceInterfaceTag"),
    ("firewall-policy", "firewall_rule_refs", "FirewallSequence"),
    ("application-policy-set", "firewall_policy_refs", "FirewallSequence"),
    ("bgp-router", "bgp_router_refs", "BgpPeeringAttributes"),
    ("virtual-router", "network_ipam_refs", "VirtualRouterNetworkIpamType"),
    ("project", "namespace_refs", "SubnetType"),
    ("virtual-port-group", "physical_interface_refs", "VpgInterfaceParametersType"),
    ("fabric", "virtual_network_refs", "FabricNetworkTag"),
]

# Reference §4: where objects live.
PARENTS = [
    ("virtual-network", {"project"}),
    ("network-ipam", {"project"}),
    ("security-group", {"project"}),
    ("network-policy", {"project"}),
    ("logical-router", {"project"}),
    ("service-instance", {"project"}),
    ("project", {"domain"}),
    ("service-template", {"domain"}),
    ("virtual-DNS", {"domain"}),
    ("namespace", {"domain"}),
    ("instance-ip", {CONFIG_ROOT}),
    ("virtual-machine", {CONFIG_ROOT}),
    ("route-target", {CONFIG_ROOT}),
    ("domain", {CONFIG_ROOT}),
    ("global-system-config", {CONFIG_ROOT}),
    ("tag-type", {CONFIG_ROOT}),
    ("virtual-router", {"global-system-config"}),
    ("physical-router", {"global-system-config"}),
    ("global-vrouter-config", {"global-system-config"}),
    ("routing-instance", {"virtual-network"}),
    ("floating-ip-pool", {"virtual-network"}),
    ("alias-ip-pool", {"virtual-network"}),
    ("bridge-domain", {"virtual-network"}),
    ("bgp-router", {"routing-instance"}),
    ("floating-ip", {"floating-ip-pool", "instance-ip"}),
    ("virtual-machine-interface", {"project", "virtual-machine", "virtual-router"}),
    ("tag", {CONFIG_ROOT, "project"}),
    ("firewall-rule", {"project", "policy-management"}),
    ("firewall-policy", {"project", "policy-management"}),
    ("application-policy-set", {"project", "policy-management"}),
    ("address-group", {"project", "policy-management"}),
    ("service-group", {"project", "policy-management"}),
    ("port-tuple", {"service-instance"}),
    ("virtual-DNS-record", {"virtual-DNS"}),
    ("loadbalancer-member", {"loadbalancer-pool"}),
]


@pytest.fixture(scope="module")
def schema() -> Schema:
    return load_schema()


def test_all_resource_types_load(schema: Schema) -> None:
    data = json.loads((resources.files("tungsten.model") / "data" / "resources.json").read_text())
    assert len(data) == 56  # config-root and the 55 types served over REST
    assert CONFIG_ROOT in data
    assert set(schema.types) == set(data) - {CONFIG_ROOT}
    assert len(schema.types) == 55


def test_load_schema_is_cached(schema: Schema) -> None:
    assert load_schema() is schema


@pytest.mark.parametrize("name", CORE_TYPES)
def test_core_type_present(schema: Schema, name: str) -> None:
    rt = schema.resource(name)
    assert rt is not None, name
    assert rt.name == name
    assert rt.parents, f"{name} has no parent types"
    # every type carries the common properties and can be tagged
    for prop in COMMON_PROPS:
        assert prop in rt.props
    assert "tag_refs" in rt.refs


@pytest.mark.parametrize(("name", "parents"), PARENTS)
def test_parents(schema: Schema, name: str, parents: set[str]) -> None:
    rt = schema.resource(name)
    assert rt is not None
    assert set(rt.parents) == parents


def test_root_children_and_root_child_flag(schema: Schema) -> None:
    assert set(schema.root_children) >= {"domains", "global_system_configs",
                                         "policy_managements", "tags"}
    domain = schema.resource("domain")
    assert domain is not None and domain.root_child
    tag = schema.resource("tag")
    assert tag is not None and not tag.root_child  # config-root or project
    vn = schema.resource("virtual-network")
    assert vn is not None and not vn.root_child


@pytest.mark.parametrize(("owner", "field", "attr"), LINK_ATTRS)
def test_link_attr_types(schema: Schema, owner: str, field: str, attr: str) -> None:
    rt = schema.resource(owner)
    assert rt is not None
    assert rt.refs[field].attr == attr
    assert attr in schema.complex, f"{attr} is not a known complex type"


def test_refs_without_attr(schema: Schema) -> None:
    vmi = schema.resource("virtual-machine-interface")
    assert vmi is not None
    assert vmi.refs["virtual_network_refs"].attr is None
    assert vmi.refs["virtual_network_refs"].to == "virtual-network"
    assert vmi.ref_to("virtual-network") is vmi.refs["virtual_network_refs"]
    assert vmi.ref_to("no-such-type") is None
    vn = schema.resource("virtual-network")
    assert vn is not None
    assert vn.refs["tag_refs"].attr is None


def test_vn_ipam_link_attr_shape(schema: Schema) -> None:
    fields = schema.complex["VnSubnetsType"]
    assert fields["ipam_subnets"].type == "IpamSubnetType"
    assert fields["ipam_subnets"].is_list
    sub = schema.complex["IpamSubnetType"]
    for f in ("subnet", "default_gateway", "dns_server_address", "subnet_uuid",
              "allocation_pools", "addr_from_start", "enable_dhcp"):
        assert f in sub


def test_derived_children(schema: Schema) -> None:
    vn = schema.resource("virtual-network")
    assert vn is not None
    assert vn.children["routing_instances"].derived
    assert vn.children["access_control_lists"].derived
    assert not vn.children["floating_ip_pools"].derived
    sg = schema.resource("security-group")
    assert sg is not None and sg.children["access_control_lists"].derived
    si = schema.resource("service-instance")
    assert si is not None and si.children["port_tuples"].derived
    project = schema.resource("project")
    assert project is not None
    assert not project.children["virtual_networks"].derived


def test_child_field_lookup(schema: Schema) -> None:
    spec = schema.child_field("project", "virtual-network")
    assert spec is not None and spec.field == "virtual_networks"
    spec = schema.child_field(CONFIG_ROOT, "domain")
    assert spec is not None and spec.field == "domains"
    spec = schema.child_field("domain", "virtual-DNS")
    assert spec is not None and spec.field == "virtual_DNSs"
    spec = schema.child_field("project", "network-policy")
    assert spec is not None and spec.field == "network_policys"
    assert schema.child_field("project", "domain") is None


def test_back_refs(schema: Schema) -> None:
    vn = schema.resource("virtual-network")
    assert vn is not None
    assert "virtual_machine_interface_back_refs" in vn.back_refs
    assert "instance_ip_back_refs" in vn.back_refs
    assert schema.back_ref_field["virtual-machine-interface"] == (
        "virtual_machine_interface_back_refs")
    assert schema.back_ref_field["virtual-DNS"] == "virtual_DNS_back_refs"


def test_collections(schema: Schema) -> None:
    vn = schema.resource("virtual-network")
    assert vn is not None
    ann = vn.collections["annotations"]
    assert (ann.kind, ann.wrapper, ann.element_type, ann.key_name) == (
        "map", "key_value_pair", "KeyValuePair", "key")
    fat = vn.collections["virtual_network_fat_flow_protocols"]
    assert (fat.kind, fat.wrapper, fat.element_type, fat.key_name) == (
        "list", "fat_flow_protocol", "ProtocolType", None)
    vmi = schema.resource("virtual-machine-interface")
    assert vmi is not None
    bindings = vmi.collections["virtual_machine_interface_bindings"]
    assert (bindings.kind, bindings.wrapper, bindings.key_name) == (
        "map", "key_value_pair", "key")
    ipam = schema.resource("network-ipam")
    assert ipam is not None
    subnets = ipam.collections["ipam_subnets"]
    assert (subnets.kind, subnets.wrapper, subnets.element_type) == (
        "list", "subnets", "IpamSubnetType")
    fwr = schema.resource("firewall-rule")
    assert fwr is not None
    assert fwr.collections["match_tags"].kind == "list"


def test_every_collection_is_consistent(schema: Schema) -> None:
    for rt in schema.types.values():
        assert "annotations" in rt.collections, rt.name
        for name, coll in rt.collections.items():
            wrapper_type = rt.props[name].type
            assert list(schema.complex[wrapper_type]) == [coll.wrapper]
            if coll.kind == "map":
                assert coll.key_name in schema.complex[coll.element_type]


def test_every_ref_and_child_target_is_typed(schema: Schema) -> None:
    for rt in schema.types.values():
        for child in rt.children.values():
            assert child.field == child.type.replace("-", "_") + "s"
        for ref in rt.refs.values():
            assert ref.field == ref.to.replace("-", "_") + "_refs"
            if ref.attr is not None:
                assert ref.attr in schema.complex, (rt.name, ref.field)


def test_props_enum_range_required_system(schema: Schema) -> None:
    gsc = schema.resource("global-system-config")
    assert gsc is not None
    asn = gsc.props["autonomous_system"]
    assert asn.type == "integer" and asn.range == (1, 4294967295) and asn.required
    assert gsc.props["config_version"].system
    assert gsc.props["ibgp_auto_mesh"].default is True
    vn = schema.resource("virtual-network")
    assert vn is not None
    cat = vn.props["virtual_network_category"]
    assert cat.enum is not None and "tenant" in cat.enum and cat.default == "tenant"
    assert vn.props["virtual_network_network_id"].system
    assert vn.props["virtual_network_properties"].type == "VirtualNetworkType"
    assert not vn.props["virtual_network_properties"].simple
    assert vn.props["is_shared"].simple


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("virtual-network", "virtual-network"),
        ("virtual_network", "virtual-network"),
        ("virtual-DNS-record", "virtual-DNS-record"),
        ("virtual_DNS_record", "virtual-DNS-record"),
        ("bgp_as_a_service", "bgp-as-a-service"),
        ("tag_type", "tag-type"),
    ],
)
def test_lookup_by_either_spelling(schema: Schema, alias: str, name: str) -> None:
    rt = schema.resource(alias)
    assert rt is not None and rt.name == name
    assert rt.obj_type == name.replace("-", "_")
    assert rt.plural == name + "s"


@pytest.mark.parametrize("bad", ["virtual-dns", "Virtual-Network", "config-root", "vn", ""])
def test_lookup_unknown(schema: Schema, bad: str) -> None:
    assert schema.resource(bad) is None


def test_plurals_are_not_english(schema: Schema) -> None:
    for name, plural in (("network-policy", "network-policys"),
                         ("virtual-DNS", "virtual-DNSs"),
                         ("bgp-as-a-service", "bgp-as-a-services")):
        rt = schema.resource(name)
        assert rt is not None and rt.plural == plural


def test_schema_from_synthetic_data() -> None:
    res = {
        CONFIG_ROOT: {"children": {"widgets": {"type": "widget"},
                                   "ghosts": {"type": "ghost"}}},
        "widget": {
            "parents": [CONFIG_ROOT],
            "props": {"size": {"type": "integer", "range": [1, 9]},
                      "color": {"type": "string", "enum": ["red", "blue"]},
                      "labels": {"type": "Labels"}},
            "list_props": ["labels"],
            "map_props": ["annotations"],
            "refs": {"widget_refs": {"to": "widget", "attr": "Link", "derived": True}},
            "children": {},
            "back_refs": ["widget_back_refs"],
        },
    }
    cplx = {
        "Labels": {"label": {"type": "string", "list": True}},
        "Link": {"weight": {"type": "integer"}},
        "KeyValuePairs": {"key_value_pair": {"type": "KeyValuePair", "list": True}},
        "KeyValuePair": {"key": {"type": "string"}, "value": {"type": "string"}},
    }
    s = Schema(res, cplx)
    assert list(s.types) == ["widget"]
    assert list(s.root_children) == ["widgets"]  # a child of an unknown type is dropped
    w = s.resource("widget")
    assert w is not None and w.root_child
    assert w.props["size"].range == (1, 9)
    assert w.props["color"].enum == ("red", "blue")
    assert w.collections["labels"].wrapper == "label"
    assert w.collections["labels"].element_type == "string"
    assert w.collections["annotations"].key_name == "key"
    assert w.refs["widget_refs"].derived and w.refs["widget_refs"].attr == "Link"
    assert s.child_field(CONFIG_ROOT, "widget") is not None
