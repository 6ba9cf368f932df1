"""Property and link-attribute validation against the schema."""

from __future__ import annotations

from typing import Any

import pytest

from tungsten.model.schema import FieldSpec, ResourceType, Schema, load_schema
from tungsten.model.validate import (
    ValidationError,
    check_complex,
    check_field,
    check_props,
    check_ref_attr,
)


@pytest.fixture(scope="module")
def schema() -> Schema:
    return load_schema()


def rtype(schema: Schema, name: str) -> ResourceType:
    rt = schema.resource(name)
    assert rt is not None
    return rt


def check_vn(schema: Schema, body: dict[str, Any]) -> None:
    check_props(schema, rtype(schema, "virtual-network"), body)


# -- simple types ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (FieldSpec("s", "string"), "hello"),
        (FieldSpec("s", "string"), ""),
        (FieldSpec("t", "dateTime"), "2024-01-01T00:00:00"),
        (FieldSpec("i", "integer"), 0),
        (FieldSpec("i", "integer"), -17),
        (FieldSpec("u", "unsignedLong"), 2**63),
        (FieldSpec("b", "boolean"), True),
        (FieldSpec("b", "boolean"), False),
    ],
)
def test_simple_ok(schema: Schema, spec: FieldSpec, value: Any) -> None:
    check_field(schema, spec, value, spec.name)


@pytest.mark.parametrize(
    ("spec", "value", "message"),
    [
        (FieldSpec("s", "string"), 5, "s: expected a string, got an integer"),
        (FieldSpec("s", "string"), ["a"], "s: expected a string, got a list"),
        (FieldSpec("i", "integer"), "five", "i: expected an integer, got a string"),
        (FieldSpec("i", "integer"), 1.5, "i: expected an integer, got a number"),
        (FieldSpec("i", "integer"), True, "i: expected an integer, got a boolean"),
        (FieldSpec("b", "boolean"), "true", "b: expected a boolean, got a string"),
        (FieldSpec("b", "boolean"), 1, "b: expected a boolean, got an integer"),
    ],
)
def test_simple_wrong_type(schema: Schema, spec: FieldSpec, value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as e:
        check_field(schema, spec, value, spec.name)
    assert str(e.value) == message


def test_enum(schema: Schema) -> None:
    check_vn(schema, {"virtual_network_category": "tenant"})
    with pytest.raises(ValidationError, match="virtual_network_category: 'bogus' is not one of"):
        check_vn(schema, {"virtual_network_category": "bogus"})
    # enums are case-sensitive
    with pytest.raises(ValidationError):
        check_vn(schema, {"virtual_network_category": "Tenant"})


def test_range(schema: Schema) -> None:
    check_vn(schema, {"mac_aging_time": 0})
    check_vn(schema, {"mac_aging_time": 86400})
    with pytest.raises(ValidationError,
                       match=r"mac_aging_time: 86401 is out of range \[0, 86400\]"):
        check_vn(schema, {"mac_aging_time": 86401})
    with pytest.raises(ValidationError, match="out of range"):
        check_vn(schema, {"mac_aging_time": -1})


def test_integer_strings(schema: Schema) -> None:
    # TF's XSD checks accept integral strings; the range still applies.
    check_vn(schema, {"mac_aging_time": "300"})
    spec = FieldSpec("i", "integer")
    check_field(schema, spec, "-5", "i")
    with pytest.raises(ValidationError, match="out of range"):
        check_vn(schema, {"mac_aging_time": "90000"})
    for bad in ("3.5", "", "0x10", "--5", "5-", " 5", "²"):
        with pytest.raises(ValidationError, match="expected an integer"):
            check_field(schema, spec, bad, "i")


def test_nulls_accepted_everywhere(schema: Schema) -> None:
    check_vn(schema, {
        "virtual_network_category": None,
        "mac_aging_time": None,
        "virtual_network_properties": None,
        "network_ipam_refs": None,  # refs are not properties: ignored here
    })
    # nested nulls, as the client sends them
    check_vn(schema, {"virtual_network_properties": {
        "forwarding_mode": None, "vxlan_network_identifier": None, "rpf": None}})
    check_field(schema, FieldSpec("l", "string", is_list=True), None, "l")
    check_field(schema, FieldSpec("l", "string", is_list=True), ["a", None], "l")
    check_complex(schema, "IdPermsType", None, "id_perms")


# -- lists ------------------------------------------------------------------------------------
def test_lists(schema: Schema) -> None:
    spec = FieldSpec("names", "string", is_list=True)
    check_field(schema, spec, [], "names")
    check_field(schema, spec, ["a", "b"], "names")
    with pytest.raises(ValidationError, match=r"names: expected a list, got a string"):
        check_field(schema, spec, "a", "names")
    with pytest.raises(ValidationError, match=r"names\[1\]: expected a string, got an integer"):
        check_field(schema, spec, ["a", 2], "names")


def test_list_enum_and_range(schema: Schema) -> None:
    enum_list = FieldSpec("dirs", "string", is_list=True, enum=("in", "out"))
    check_field(schema, enum_list, ["in", "out"], "dirs")
    with pytest.raises(ValidationError, match=r"dirs\[0\]: 'up' is not one of: in, out"):
        check_field(schema, enum_list, ["up"], "dirs")
    ranged = FieldSpec("n", "integer", is_list=True, range=(1, 3))
    with pytest.raises(ValidationError, match=r"n\[2\]: 4 is out of range"):
        check_field(schema, ranged, [1, 2, 4], "n")


# -- complex types ----------------------------------------------------------------------------
def test_complex_ok(schema: Schema) -> None:
    check_vn(schema, {
        "virtual_network_properties": {"forwarding_mode": "l2_l3", "vxlan_network_identifier": 5,
                                       "rpf": "enable", "allow_transit": False},
        "id_perms": {"enable": True, "description": "d", "permissions": None,
                     "uuid": {"uuid_mslong": 1, "uuid_lslong": 2}},
        "perms2": {"owner": "x", "owner_access": 7, "global_access": 0,
                   "share": [{"tenant": "t", "tenant_access": 5}]},
        "annotations": {"key_value_pair": [{"key": "k", "value": "v"}]},
    })


def test_complex_must_be_object(schema: Schema) -> None:
    with pytest.raises(ValidationError,
                       match="virtual_network_properties: expected an object of type "
                             "VirtualNetworkType, got a string"):
        check_vn(schema, {"virtual_network_properties": "l2_l3"})
    with pytest.raises(ValidationError, match="expected an object"):
        check_vn(schema, {"virtual_network_properties": []})


def test_complex_field_errors_name_the_path(schema: Schema) -> None:
    with pytest.raises(ValidationError) as e:
        check_vn(schema, {"virtual_network_properties": {"forwarding_mode": "l4"}})
    assert str(e.value).startswith("virtual_network_properties.forwarding_mode: 'l4'")
    with pytest.raises(ValidationError) as e:
        check_vn(schema, {"virtual_network_properties": {"vxlan_network_identifier": 0}})
    assert str(e.value) == ("virtual_network_properties.vxlan_network_identifier: 0 is out of "
                            "range [1, 16777215]")


def test_unknown_nested_field_names_the_path(schema: Schema) -> None:
    with pytest.raises(ValidationError) as e:
        check_vn(schema, {"virtual_network_properties": {"bogus": 1}})
    assert str(e.value) == "virtual_network_properties.bogus: unknown field of VirtualNetworkType"
    sg = rtype(schema, "security-group")
    body = {"security_group_entries": {"policy_rule": [
        {"direction": ">", "protocol": "any"},
        {"direction": ">", "src_ports": [{"start_port": 0, "end_port": 65535, "step": 1}]},
    ]}}
    with pytest.raises(ValidationError) as e:
        check_props(schema, sg, body)
    assert str(e.value) == ("security_group_entries.policy_rule[1].src_ports[0].step: "
                            "unknown field of PortType")


def test_deeply_nested_value_errors(schema: Schema) -> None:
    sg = rtype(schema, "security-group")
    body = {"security_group_entries": {"policy_rule": [
        {"direction": ">", "src_ports": [{"start_port": 0, "end_port": 70000}]}]}}
    with pytest.raises(ValidationError) as e:
        check_props(schema, sg, body)
    assert str(e.value).startswith(
        "security_group_entries.policy_rule[0].src_ports[0].end_port: 70000 is out of range")
    body = {"security_group_entries": {"policy_rule": [{"direction": "<"}]}}
    with pytest.raises(ValidationError, match=r"policy_rule\[0\]\.direction: '<'"):
        check_props(schema, sg, body)
    body = {"security_group_entries": {"policy_rule": {"direction": ">"}}}
    with pytest.raises(ValidationError, match=r"policy_rule: expected a list, got an object"):
        check_props(schema, sg, body)


def test_unknown_complex_type_accepts_any_json(schema: Schema) -> None:
    check_complex(schema, "NoSuchType", {"whatever": [1, 2]}, "x")
    check_complex(schema, "NoSuchType", "a string", "x")


def test_check_props_only_checks_declared_props(schema: Schema) -> None:
    # unknown top-level keys are the caller's business (core rejects them separately)
    check_vn(schema, {"not_a_prop": object(), "fq_name": ["a"]})


# -- link attributes -------------------------------------------------------------------------
def test_ref_attr(schema: Schema) -> None:
    vn = rtype(schema, "virtual-network")
    good = {"ipam_subnets": [{"subnet": {"ip_prefix": "192.0.2.0", "ip_prefix_len": 24},
                              "default_gateway": None, "subnet_uuid": None,
                              "enable_dhcp": True, "dns_nameservers": [],
                              "allocation_pools": [], "addr_from_start": None,
                              "alloc_unit": 1}],
            "host_routes": None}
    check_ref_attr(schema, vn, "network_ipam_refs", good)
    check_ref_attr(schema, vn, "network_ipam_refs", None)
    with pytest.raises(ValidationError) as e:
        check_ref_attr(schema, vn, "network_ipam_refs", {"ipam_subnets": [
            {"subnet": {"ip_prefix": "192.0.2.0", "ip_prefix_len": "twenty-four"}}]})
    assert str(e.value).startswith(
        "network_ipam_refs.attr.ipam_subnets[0].subnet.ip_prefix_len: expected an integer")
    with pytest.raises(ValidationError, match=r"network_ipam_refs\.attr\.nope: unknown field"):
        check_ref_attr(schema, vn, "network_ipam_refs", {"nope": 1})


def test_ref_attr_enum_and_refs_without_attr(schema: Schema) -> None:
    ri = rtype(schema, "routing-instance")
    check_ref_attr(schema, ri, "route_target_refs", {"import_export": "import"})
    with pytest.raises(ValidationError, match="import_export: 'both' is not one of"):
        check_ref_attr(schema, ri, "route_target_refs", {"import_export": "both"})
    vn = rtype(schema, "virtual-network")
    # a ref type without a link attribute ignores whatever attr is sent
    check_ref_attr(schema, vn, "tag_refs", {"anything": "goes"})
    with pytest.raises(KeyError):
        check_ref_attr(schema, vn, "no_such_refs", None)
