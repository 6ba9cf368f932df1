"""The transformer's pure core: derive() over a config index (reference §2)."""

from __future__ import annotations

from typing import Any

import pytest

from tungsten.api.context import RequestCtx
from tungsten.api.core import ConfigApi
from tungsten.store import open_store
from tungsten.transformer.derive import (
    EGRESS_ACL,
    INGRESS_ACL,
    Derived,
    derive,
    rt_owners,
    rt_space,
)
from tungsten.transformer.policy import Requests, connections

CTX = RequestCtx()
PROJECT = ["default-domain", "default-project"]
OTHER = ["default-domain", "other"]
IPAM = [*PROJECT, "default-network-ipam"]


@pytest.fixture
def api() -> ConfigApi:
    return ConfigApi(open_store("sqlite:///:memory:"))


# -- helpers (also used by test_transformer_service) ------------------------------------------
def create(api: ConfigApi, rtype: str, fq_name: list[str], **fields: Any) -> str:
    body: dict[str, Any] = {"fq_name": fq_name, **fields}
    if rtype not in ("route-target",):
        body.setdefault("parent_type", "project")
    return str(api.create(rtype, {rtype: body}, CTX)[rtype]["uuid"])


def rule(src: dict[str, Any], dst: dict[str, Any], action: str = "pass",
         direction: str = "<>", protocol: str = "any", **extra: Any) -> dict[str, Any]:
    action_list: dict[str, Any] = {"simple_action": action}
    if action == "service":
        action_list = {"apply_service": ["default-domain:default-project:si"]}
    return {"direction": direction, "protocol": protocol, "src_addresses": [src],
            "dst_addresses": [dst], "action_list": action_list, **extra}


def vn_addr(name: str) -> dict[str, Any]:
    return {"virtual_network": name if name in ("any", "local") else ":".join([*PROJECT, name])}


def policy(api: ConfigApi, name: str, *rules: dict[str, Any],
           project: list[str] = PROJECT) -> str:
    return create(api, "network-policy", [*project, name],
                  network_policy_entries={"policy_rule": list(rules)})


def network(api: ConfigApi, name: str, *policies: str, project: list[str] = PROJECT,
            **fields: Any) -> str:
    refs = [{"uuid": p, "attr": {"sequence": {"major": i, "minor": 0}}}
            for i, p in enumerate(policies)]
    return create(api, "virtual-network", [*project, name], network_policy_refs=refs, **fields)


def ri_of(api: ConfigApi, vn_fq: list[str]) -> str:
    u = api.db.lookup("routing-instance", [*vn_fq, vn_fq[-1]])
    assert u is not None
    return u


def numbers_for(api: ConfigApi) -> dict[str, int]:
    return {owner: 8_000_000 + i for i, owner in enumerate(rt_owners(api.db))}


def rt_names(d: Derived, owner: str) -> dict[str, Any]:
    return {t[1][0]: attr for t, attr in d.refs[owner]["route_target_refs"]}


def peers(d: Derived, ri: str) -> list[str]:
    return [t[1][-2] for t, _ in d.refs[ri]["routing_instance_refs"]]


def acl_rules(d: Derived, fq: list[str]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = d.acls[tuple(fq)].entries["acl_rule"]
    return rules


def summary(r: dict[str, Any]) -> tuple[Any, ...]:
    m = r["match_condition"]
    return (m["src_address"].get("virtual_network"), m["dst_address"].get("virtual_network"),
            m["protocol"], r["action_list"]["simple_action"])


# -- route targets ------------------------------------------------------------------------------
def test_each_network_gets_its_allocated_target(api: ConfigApi) -> None:
    network(api, "red")
    nums = numbers_for(api)
    d = derive(api.db, nums)
    ri = ri_of(api, [*PROJECT, "red"])
    assert rt_names(d, ri) == {f"target:64512:{nums[ri]}": {"import_export": None}}
    assert f"target:64512:{nums[ri]}" in d.route_targets
    # the fabric and link-local networks carry no overlay routes
    fabric = api.db.lookup("routing-instance", [*PROJECT, "ip-fabric", "ip-fabric"])
    assert fabric not in rt_owners(api.db)


def test_rt_space_follows_the_global_asn(api: ConfigApi) -> None:
    assert (rt_space(api.db).lo, rt_space(api.db).asn) == (8_000_000, 64512)
    gsc = api.db.lookup("global-system-config", ["default-global-system-config"])
    assert gsc is not None
    api.update("global-system-config", gsc, {"global-system-config": {
        "autonomous_system": 4_200_000_000, "enable_4byte_as": True}}, CTX)
    space = rt_space(api.db)
    assert (space.asn, space.lo, space.hi) == (4_200_000_000, 8_000, 8_000 + 2**15 - 1)


def test_user_route_target_lists_are_merged(api: ConfigApi) -> None:
    network(api, "red",
            route_target_list={"route_target": ["target:64512:100"]},
            import_route_target_list={"route_target": ["target:64512:200", "target:64512:300",
                                                       "bogus"]},
            export_route_target_list={"route_target": ["target:64512:300", "target:64512:400"]})
    nums = numbers_for(api)
    ri = ri_of(api, [*PROJECT, "red"])
    got = rt_names(derive(api.db, nums), ri)
    assert got == {
        "target:64512:100": {"import_export": None},
        "target:64512:200": {"import_export": "import"},
        "target:64512:300": {"import_export": None},  # in both lists: both
        "target:64512:400": {"import_export": "export"},
        f"target:64512:{nums[ri]}": {"import_export": None},
    }


# -- ACLs from policies -------------------------------------------------------------------------
def test_acl_orders_policies_by_sequence_between_implicit_rules(api: ConfigApi) -> None:
    first = policy(api, "first", rule(vn_addr("local"), vn_addr("blue"), "deny", ">"))
    second = policy(api, "second", rule(vn_addr("local"), vn_addr("any"), "pass", ">",
                                        protocol="tcp", dst_ports=[{"start_port": 80,
                                                                    "end_port": 80}]))
    network(api, "blue")
    # attached in the reverse order of their sequence numbers
    create(api, "virtual-network", [*PROJECT, "red"], network_policy_refs=[
        {"uuid": second, "attr": {"sequence": {"major": 1, "minor": 0}}},
        {"uuid": first, "attr": {"sequence": {"major": 0, "minor": 5}}}])
    red, blue = ":".join([*PROJECT, "red"]), ":".join([*PROJECT, "blue"])
    got = [summary(r) for r in acl_rules(derive(api.db, numbers_for(api)),
                                         [*PROJECT, "red", "red"])]
    assert got == [
        (red, red, "any", "pass"), (red, red, "any", "pass"),  # implicit, IPv4 and IPv6
        (red, blue, "any", "deny"),
        (red, "any", "6", "pass"),
        ("any", "any", "any", "deny"), ("any", "any", "any", "deny"),  # implicit, last
    ]
    rules = acl_rules(derive(api.db, numbers_for(api)), [*PROJECT, "red", "red"])
    assert [r["match_condition"]["ethertype"] for r in rules[:2]] == ["IPv4", "IPv6"]
    assert rules[3]["match_condition"]["dst_port"] == {"start_port": 80, "end_port": 80}
    assert rules[3]["match_condition"]["src_port"] == {"start_port": -1, "end_port": -1}
    assert all(r["direction"] == ">" for r in rules)


def test_two_way_rule_expands_both_directions_with_the_rule_uuid(api: ConfigApi) -> None:
    p = policy(api, "p", rule(vn_addr("local"), vn_addr("blue"), protocol="udp",
                              dst_ports=[{"start_port": 53, "end_port": 53}]))
    network(api, "red", p)
    network(api, "blue")
    rules = acl_rules(derive(api.db, numbers_for(api)), [*PROJECT, "red", "red"])[2:4]
    fwd, rev = (r["match_condition"] for r in rules)
    assert (fwd["protocol"], fwd["dst_port"]["start_port"], rev["src_port"]["start_port"]) == (
        "17", 53, 53)
    assert fwd["src_address"] == rev["dst_address"]
    stored = api.db.objs[p].props["network_policy_entries"]["policy_rule"][0]["rule_uuid"]
    assert rules[0]["rule_uuid"] == rules[1]["rule_uuid"] == stored


def test_apply_service_passes_in_the_acl(api: ConfigApi) -> None:
    p = policy(api, "p", rule(vn_addr("local"), vn_addr("blue"), "service"))
    network(api, "red", p)
    network(api, "blue", p)
    rules = acl_rules(derive(api.db, numbers_for(api)), [*PROJECT, "red", "red"])
    assert rules[2]["action_list"] == {"simple_action": "pass"}


def test_network_policy_address_expands_to_its_networks(api: ConfigApi) -> None:
    shared = policy(api, "shared", rule(vn_addr("any"), vn_addr("any"), "pass", ">"))
    p = policy(api, "p", rule(vn_addr("local"), {"network_policy": "shared"}, "pass", ">"))
    network(api, "a", shared)
    network(api, "b", shared)
    network(api, "red", p)
    rules = acl_rules(derive(api.db, numbers_for(api)), [*PROJECT, "red", "red"])
    dsts = [r["match_condition"]["dst_address"]["virtual_network"] for r in rules[2:4]]
    assert dsts == [":".join([*PROJECT, "a"]), ":".join([*PROJECT, "b"])]


# -- route leaking ------------------------------------------------------------------------------
def test_networks_connect_only_when_both_list_each_other(api: ConfigApi) -> None:
    p = policy(api, "p", rule(vn_addr("local"), vn_addr("blue")))
    network(api, "red", p)
    network(api, "blue")
    d = derive(api.db, numbers_for(api))
    red, blue = ri_of(api, [*PROJECT, "red"]), ri_of(api, [*PROJECT, "blue"])
    assert peers(d, red) == [] and peers(d, blue) == []
    back = policy(api, "back", rule(vn_addr("local"), vn_addr("red")))
    api.update("virtual-network", api.db.lookup("virtual-network", [*PROJECT, "blue"]) or "",
               {"virtual-network": {"network_policy_refs": [{"uuid": back, "attr": {
                   "sequence": {"major": 0, "minor": 0}}}]}}, CTX)
    d = derive(api.db, numbers_for(api))
    assert peers(d, red) == ["blue"] and peers(d, blue) == ["red"]


def test_one_policy_on_both_networks_connects_them(api: ConfigApi) -> None:
    p = policy(api, "p", rule(vn_addr("red"), vn_addr("blue")))
    network(api, "red", p)
    network(api, "blue", p)
    network(api, "green", p)  # attached, but the rule does not name it
    d = derive(api.db, numbers_for(api))
    assert peers(d, ri_of(api, [*PROJECT, "red"])) == ["blue"]
    assert peers(d, ri_of(api, [*PROJECT, "green"])) == []
    attr = d.refs[ri_of(api, [*PROJECT, "red"])]["routing_instance_refs"][0][1]
    assert set(attr) == {"destination_instance"}


@pytest.mark.parametrize("action", ["deny", "service"])
def test_deny_and_service_rules_do_not_connect(api: ConfigApi, action: str) -> None:
    p = policy(api, "p", rule(vn_addr("red"), vn_addr("blue"), action))
    network(api, "red", p)
    network(api, "blue", p)
    d = derive(api.db, numbers_for(api))
    assert peers(d, ri_of(api, [*PROJECT, "red"])) == []


def test_any_connects_the_project_and_who_connects_back(api: ConfigApi) -> None:
    p = policy(api, "p", rule(vn_addr("local"), vn_addr("any")))
    network(api, "red", p)
    network(api, "blue", p)
    network(api, "plain")  # lists nobody: stays alone
    create(api, "project", OTHER, parent_type="domain")
    far = policy(api, "far", rule(vn_addr("local"), vn_addr("any")), project=OTHER)
    network(api, "far", far, project=OTHER)  # wildcard in another project: not connected
    friend = policy(api, "friend", rule(vn_addr("local"),
                                        {"virtual_network": ":".join([*PROJECT, "red"])}),
                    project=OTHER)
    network(api, "friend", friend, project=OTHER)  # names red: red's wildcard takes it
    d = derive(api.db, numbers_for(api))
    assert peers(d, ri_of(api, [*PROJECT, "red"])) == ["blue", "friend"]
    assert peers(d, ri_of(api, [*PROJECT, "plain"])) == []
    assert peers(d, ri_of(api, [*OTHER, "far"])) == []


def test_connections_pure() -> None:
    reqs = {"p:a": Requests({"p:b"}), "p:b": Requests(set(), wildcard=True),
            "p:c": Requests({"p:a"}), "q:d": Requests(set(), wildcard=True)}
    projects = {"p:a": "p", "p:b": "p", "p:c": "p", "q:d": "q"}
    assert connections(reqs, projects) == [("p:a", "p:b")]


# -- security groups ----------------------------------------------------------------------------
def test_security_group_ingress_and_egress_acls(api: ConfigApi) -> None:
    web = create(api, "security-group", [*PROJECT, "web"], security_group_entries={
        "policy_rule": []})
    sg = create(api, "security-group", [*PROJECT, "db"], security_group_entries={
        "policy_rule": [
            {"direction": ">", "protocol": "tcp", "ethertype": "IPv4",
             "src_addresses": [{"security_group": ":".join([*PROJECT, "web"])}],
             "dst_addresses": [{"security_group": "local"}],
             "dst_ports": [{"start_port": 5432, "end_port": 5432}]},
            {"direction": ">", "protocol": "icmp", "ethertype": "IPv6",
             "src_addresses": [{"security_group": "local"}],
             "dst_addresses": [{"subnet": {"ip_prefix": "::", "ip_prefix_len": 0}}]},
        ]})
    d = derive(api.db, numbers_for(api))
    ingress = acl_rules(d, [*PROJECT, "db", INGRESS_ACL])
    egress = acl_rules(d, [*PROJECT, "db", EGRESS_ACL])
    web_id = str(api.db.objs[web].props["security_group_id"])
    assert len(ingress) == 1 and len(egress) == 1
    m = ingress[0]["match_condition"]
    assert (m["src_address"], m["dst_address"], m["protocol"], m["dst_port"]["start_port"]) == (
        {"security_group": web_id}, {"virtual_network": "any"}, "6", 5432)
    m = egress[0]["match_condition"]
    assert (m["dst_address"], m["protocol"], m["ethertype"]) == (
        {"subnet": {"ip_prefix": "::", "ip_prefix_len": 0}}, "58", "IPv6")
    assert d.acls[(*PROJECT, "db", INGRESS_ACL)].parent_type == "security-group"
    assert acl_rules(d, [*PROJECT, "web", INGRESS_ACL]) == []
    assert sg in api.db.objs


# -- logical routers ----------------------------------------------------------------------------
def test_logical_router_target_on_every_connected_network(api: ConfigApi) -> None:
    red = network(api, "red")
    network(api, "blue")
    green = network(api, "green")
    port = create(api, "virtual-machine-interface", [*PROJECT, "lr-port"],
                  virtual_network_refs=[{"uuid": red}])
    lr = create(api, "logical-router", [*PROJECT, "lr"],
                virtual_machine_interface_refs=[{"uuid": port}],
                virtual_network_refs=[{"uuid": green}],
                configured_route_target_list={"route_target": ["target:64512:77"]})
    nums = numbers_for(api)
    d = derive(api.db, nums)
    mine = f"target:64512:{nums[lr]}"
    assert rt_names(d, lr) == {mine: None, "target:64512:77": None}
    for name in ("red", "green"):
        got = rt_names(d, ri_of(api, [*PROJECT, name]))
        assert got[mine] == {"import_export": None} and "target:64512:77" in got
    assert mine not in rt_names(d, ri_of(api, [*PROJECT, "blue"]))
    assert mine in d.route_targets


def test_derive_is_deterministic(api: ConfigApi) -> None:
    p = policy(api, "p", rule(vn_addr("local"), vn_addr("any")))
    for name in ("c", "a", "b"):
        network(api, name, p)
    nums = numbers_for(api)
    first = derive(api.db, nums)
    # a second index loaded from the same store sees its objects in another order
    again = ConfigApi(api.db.store)
    assert derive(again.db, nums) == first
    assert rt_owners(again.db) == rt_owners(api.db)
