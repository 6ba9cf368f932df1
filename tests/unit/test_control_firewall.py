"""The ``firewall`` collection of a node's view: the application-policy-sets that apply to its
ports (by their effective application tag, plus the project's and the global default sets),
with policies and rules in sequence order and service/address groups resolved."""

from __future__ import annotations

from typing import Any

from tests.unit.test_control_views import PROJ, Fabric
from tungsten.control.views import config_view

PROJECT_DEFAULT = "default-domain:default-project:default-application-policy-set"
GLOBAL_DEFAULT = "default-policy-management:default-application-policy-set"
ANY = {"any": True}


class Firewall(Fabric):
    """A fabric with helpers for tags, firewall rules, policies and policy sets."""

    def tag(self, kind: str, value: str) -> str:
        return self.create("tag", {"fq_name": [*PROJ, f"{kind}={value}"],
                                   "parent_type": "project",
                                   "tag_type_name": kind, "tag_value": value})

    def tag_id(self, uuid: str) -> int:
        return int(str(self.api.db.objs[uuid].props["tag_id"]), 16)

    def tag_with(self, rtype: str, uuid: str, *tags: str) -> None:
        self.update(rtype, uuid, {"tag_refs": [{"uuid": t} for t in tags]})

    def rule(self, name: str, **props: Any) -> str:
        body: dict[str, Any] = {
            "fq_name": [*PROJ, name], "parent_type": "project",
            "action_list": {"simple_action": "pass"}, "direction": "<>",
            "endpoint_1": ANY, "endpoint_2": ANY}
        if "service_group_refs" not in props:
            body["service"] = {"protocol": "tcp", "dst_ports": {"start_port": 80,
                                                                "end_port": 80}}
        return self.create("firewall-rule", body | props)

    def policy(self, name: str, rules: list[tuple[str, str]]) -> str:
        return self.create("firewall-policy", {
            "fq_name": [*PROJ, name], "parent_type": "project",
            "firewall_rule_refs": [{"uuid": u, "attr": {"sequence": s}} for s, u in rules]})

    def aps(self, name: str, tag: str | None, policies: list[tuple[str, str]]) -> str:
        return self.create("application-policy-set", {
            "fq_name": [*PROJ, name], "parent_type": "project",
            "tag_refs": [{"uuid": tag}] if tag else [],
            "firewall_policy_refs": [{"uuid": u, "attr": {"sequence": s}}
                                     for s, u in policies]})

    def firewall(self, *ports: str) -> tuple[dict[str, Any], set[str]]:
        view, deps = config_view(self.api.db, set(ports))
        return view.get("firewall", {}), deps


def names(firewall: dict[str, Any]) -> set[str]:
    return {e["name"] for e in firewall.values()}


def test_a_port_gets_the_sets_of_its_application_and_the_defaults_only() -> None:
    f = Firewall()
    red = f.network("red", "198.51.100.0/24")
    web, db_tag = f.tag("application", "web"), f.tag("application", "db")
    web_rule, db_rule = f.rule("web-in"), f.rule("db-in")
    web_aps = f.aps("web-aps", web, [("1", f.policy("web-pol", [("1", web_rule)]))])
    db_aps = f.aps("db-aps", db_tag, [("1", f.policy("db-pol", [("1", db_rule)]))])
    port, plain = f.port(red), f.port(red)
    f.tag_with("virtual-machine-interface", port, web)

    fw, deps = f.firewall(port)
    assert names(fw) == {"default-domain:default-project:web-aps", PROJECT_DEFAULT,
                         GLOBAL_DEFAULT}
    entry = fw[web_aps]
    assert entry["application_tag"] == f.tag_id(web) and entry["all_applications"] is False
    assert [r["uuid"] for r in entry["policies"][0]["rules"]] == [web_rule]
    defaults = [e for e in fw.values() if e["all_applications"]]
    assert len(defaults) == 2 and all(e["application_tag"] is None for e in defaults)
    assert {web_aps, web_rule} <= deps and not {db_aps, db_rule} & deps

    fw, deps = f.firewall(plain)
    assert names(fw) == {PROJECT_DEFAULT, GLOBAL_DEFAULT}
    assert web_rule not in deps


def test_tags_are_inherited_from_network_and_project_nearest_type_wins() -> None:
    f = Firewall()
    red = f.network("red", "198.51.100.0/24")
    web, db_tag = f.tag("application", "web"), f.tag("application", "db")
    site = f.tag("site", "lab")
    blue_label, green_label = f.tag("label", "blue"), f.tag("label", "green")
    web_aps = f.aps("web-aps", web, [])
    db_aps = f.aps("db-aps", db_tag, [])
    project = f.api.db.lookup("project", PROJ)
    assert project is not None
    f.tag_with("project", project, site, blue_label)
    f.tag_with("virtual-network", red, web)
    inherits, overrides = f.port(red), f.port(red)
    f.tag_with("virtual-machine-interface", overrides, db_tag, green_label)

    view, deps = config_view(f.api.db, {inherits, overrides})
    assert view["ports"][inherits]["tags"] == sorted(
        f.tag_id(t) for t in (web, site, blue_label))
    # the port's own application replaces the network's; labels add up
    assert view["ports"][overrides]["tags"] == sorted(
        f.tag_id(t) for t in (db_tag, site, blue_label, green_label))
    assert {project, red, web, site} <= deps

    fw, _ = f.firewall(inherits)
    assert web_aps in fw and db_aps not in fw
    fw, _ = f.firewall(overrides)
    assert db_aps in fw and web_aps not in fw


def test_policies_and_rules_follow_their_sequence_numbers() -> None:
    f = Firewall()
    red = f.network("red", "198.51.100.0/24")
    web = f.tag("application", "web")
    r1, r2, r3 = f.rule("r1"), f.rule("r2"), f.rule("r3")
    first = f.policy("first", [("10", r1), ("2", r2), ("2.5", r3)])
    second = f.policy("second", [("1", r1)])
    aps = f.aps("web-aps", web, [("20", second), ("3", first)])
    port = f.port(red)
    f.tag_with("virtual-machine-interface", port, web)

    fw, _ = f.firewall(port)
    pols = fw[aps]["policies"]
    assert [(p["uuid"], p["sequence"]) for p in pols] == [(first, "3"), (second, "20")]
    assert [(r["uuid"], r["sequence"]) for r in pols[0]["rules"]] == [
        (r2, "2"), (r3, "2.5"), (r1, "10")]  # as numbers, not as text
    rule = pols[0]["rules"][0]
    assert rule["direction"] == "<>" and rule["action_list"] == {"simple_action": "pass"}
    assert rule["service"]["protocol_id"] == 6
    assert rule["service"]["dst_ports"] == {"start_port": 80, "end_port": 80}
    assert rule["match_tag_types"] == [1]  # application, the API's default


def test_service_groups_and_address_groups_are_resolved() -> None:
    f = Firewall()
    red = f.network("red", "198.51.100.0/24")
    web = f.tag("application", "web")
    sg = f.create("service-group", {
        "fq_name": [*PROJ, "web-services"], "parent_type": "project",
        "service_group_firewall_service_list": {"firewall_service": [
            {"protocol": "tcp", "dst_ports": {"start_port": 443, "end_port": 443}},
            {"protocol": "udp", "src_ports": {"start_port": 53, "end_port": 53}}]}})
    ag = f.create("address-group", {
        "fq_name": [*PROJ, "clients"], "parent_type": "project",
        "address_group_prefix": {"subnet": [
            {"ip_prefix": "192.0.2.0", "ip_prefix_len": 24},
            {"ip_prefix": "203.0.113.0", "ip_prefix_len": 25}]}})
    rule = f.rule("from-clients", service_group_refs=[{"uuid": sg}],
                  endpoint_1={"address_group": "clients"},
                  endpoint_2={"tags": ["application=web"]})
    aps = f.aps("web-aps", web, [("1", f.policy("web-pol", [("1", rule)]))])
    port = f.port(red)
    f.tag_with("virtual-machine-interface", port, web)

    fw, deps = f.firewall(port)
    entry = fw[aps]["policies"][0]["rules"][0]
    assert "service" not in entry
    assert entry["service_groups"] == [
        {"protocol_id": 6, "src_ports": {"start_port": 0, "end_port": 65535},
         "dst_ports": {"start_port": 443, "end_port": 443}},
        {"protocol_id": 17, "src_ports": {"start_port": 53, "end_port": 53},
         "dst_ports": {"start_port": 0, "end_port": 65535}}]
    assert entry["endpoint_1"]["address_group_prefixes"] == ["192.0.2.0/24", "203.0.113.0/25"]
    assert entry["endpoint_2"]["tag_ids"] == [f.tag_id(web)]
    assert {sg, ag, rule} <= deps

    # a change to the group is seen in the next view
    f.update("address-group", ag, {"address_group_prefix": {"subnet": [
        {"ip_prefix": "198.18.0.0", "ip_prefix_len": 15}]}})
    fw, _ = f.firewall(port)
    ep = fw[aps]["policies"][0]["rules"][0]["endpoint_1"]
    assert ep["address_group_prefixes"] == ["198.18.0.0/15"]


def test_no_port_no_firewall() -> None:
    f = Firewall()
    view, _ = config_view(f.api.db, {"00000000-0000-0000-0000-000000000002"})
    assert "firewall" not in view
