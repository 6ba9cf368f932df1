"""Per-node views read from the config index: only what the node's ports need, ACLs from the
transformer's derived objects, route-target config of routing instances."""

from __future__ import annotations

from typing import Any

from tungsten.api.context import RequestCtx
from tungsten.api.core import ConfigApi
from tungsten.control.rib import RiTargets
from tungsten.control.views import config_view, ri_targets, sg_config
from tungsten.store import open_store

PROJ = ["default-domain", "default-project"]
CTX = RequestCtx()


class Fabric:
    """Builds config through the API core (in memory); shared by the control tests."""

    def __init__(self, api: ConfigApi | None = None) -> None:
        self.api = api or ConfigApi(open_store("sqlite:///:memory:"))
        self.api.create("network-ipam", {"network-ipam": {
            "fq_name": [*PROJ, "ipam"], "parent_type": "project"}}, CTX)
        self.n = 0

    def create(self, rtype: str, body: dict[str, Any]) -> str:
        return str(self.api.create(rtype, {rtype: body}, CTX)[rtype]["uuid"])

    def update(self, rtype: str, uuid: str, body: dict[str, Any]) -> None:
        self.api.update(rtype, uuid, {rtype: body}, CTX)

    def network(self, name: str, prefix: str) -> str:
        addr, plen = prefix.split("/")
        return self.create("virtual-network", {
            "fq_name": [*PROJ, name], "parent_type": "project",
            "network_ipam_refs": [{"to": [*PROJ, "ipam"], "attr": {"ipam_subnets": [
                {"subnet": {"ip_prefix": addr, "ip_prefix_len": int(plen)}}]}}]})

    def sg(self, name: str, rules: list[dict[str, Any]] | None = None) -> str:
        return self.create("security-group", {
            "fq_name": [*PROJ, name], "parent_type": "project",
            "security_group_entries": {"policy_rule": rules or []}})

    def port(self, vn: str, sgs: tuple[str, ...] = ()) -> str:
        self.n += 1
        vmi = self.create("virtual-machine-interface", {
            "fq_name": [*PROJ, f"port{self.n}"], "parent_type": "project",
            "virtual_network_refs": [{"uuid": vn}],
            "security_group_refs": [{"uuid": u} for u in sgs]})
        self.create("instance-ip", {
            "fq_name": [f"iip{self.n}"], "virtual_network_refs": [{"uuid": vn}],
            "virtual_machine_interface_refs": [{"uuid": vmi}]})
        return vmi

    def acl(self, parent_type: str, parent: str, name: str, rules: list[dict[str, Any]]) -> str:
        owner = self.api.db.objs[parent]
        return self.create("access-control-list", {
            "fq_name": [*owner.fq_name, name], "parent_type": parent_type,
            "access_control_list_entries": {"acl_rule": rules}})

    def ri(self, vn: str) -> str:
        """The uuid of a network's primary routing instance."""
        fq = self.api.db.objs[vn].fq_name
        uuid = self.api.db.lookup("routing-instance", [*fq, fq[-1]])
        assert uuid is not None
        return uuid

    def ri_name(self, vn: str) -> str:
        fq = self.api.db.objs[vn].fq_name
        return ":".join([*fq, fq[-1]])

    def route_target(self, name: str) -> str:
        return self.create("route-target", {"fq_name": [name]})


RULE = {"rule_uuid": "r1", "direction": ">",
        "action_list": {"simple_action": "pass"},
        "match_condition": {"protocol": "any", "src_address": {}, "dst_address": {}}}


def test_only_the_subscribed_ports_and_their_networks_and_groups() -> None:
    f = Fabric()
    red, blue = f.network("red", "198.51.100.0/24"), f.network("blue", "203.0.113.0/24")
    web = f.sg("web")
    mine = f.port(red, sgs=(web,))
    f.port(red)
    f.port(blue, sgs=(f.sg("other"),))
    view, deps = config_view(f.api.db, {mine})
    assert list(view["ports"]) == [mine]
    assert list(view["networks"]) == [red]
    sg_id = f.api.db.objs[web].props["security_group_id"]
    assert list(view["security_groups"]) == [str(sg_id)]
    port = view["ports"][mine]
    assert port["network"] == red and port["sgs"] == [sg_id] and port["enabled"] is True
    assert port["mac"].count(":") == 5
    assert [(ip["prefix_len"], ip["family"]) for ip in port["ips"]] == [(24, "v4")]
    assert port["ips"][0]["address"].startswith("198.51.100.")
    net = view["networks"][red]
    assert net["ri"] == "default-domain:default-project:red:red"
    assert net["vni"] == f.api.db.objs[red].props["virtual_network_network_id"]
    assert net["subnets"][0]["prefix"] == "198.51.100.0/24"
    assert net["acl"] == []
    assert {mine, red, web} <= deps and blue not in deps


def test_unknown_ports_are_left_out_until_they_exist() -> None:
    f = Fabric()
    view, deps = config_view(f.api.db, {"00000000-0000-0000-0000-000000000001"})
    assert view == {"ports": {}, "networks": {}, "security_groups": {}}
    assert deps == {"00000000-0000-0000-0000-000000000001"}


def test_network_acl_comes_from_its_derived_acl_object() -> None:
    f = Fabric()
    red = f.network("red", "198.51.100.0/24")
    port = f.port(red)
    f.acl("virtual-network", red, "red", [RULE])
    view, _ = config_view(f.api.db, {port})
    assert view["networks"][red]["acl"] == [RULE]


def test_security_group_rules_from_derived_acls_else_its_own_entries() -> None:
    f = Fabric()
    local = {"security_group": "local"}
    ingress_rule = {"direction": ">", "protocol": "any", "src_addresses": [{"security_group":
                    "default-domain:default-project:web"}], "dst_addresses": [local],
                    "src_ports": [{"start_port": 0, "end_port": 65535}],
                    "dst_ports": [{"start_port": 0, "end_port": 65535}], "ethertype": "IPv4"}
    egress_rule = dict(ingress_rule, src_addresses=[local], dst_addresses=[
        {"subnet": {"ip_prefix": "0.0.0.0", "ip_prefix_len": 0}}])
    web = f.sg("web", [ingress_rule, egress_rule])
    sg = sg_config(f.api.db, web)
    assert sg is not None
    assert len(sg["ingress"]) == 1 and sg["ingress"][0]["dst_addresses"] == [local]
    assert len(sg["egress"]) == 1 and sg["egress"][0]["src_addresses"] == [local]
    f.acl("security-group", web, "ingress-access-control-list", [RULE])
    f.acl("security-group", web, "egress-access-control-list", [])
    sg = sg_config(f.api.db, web)
    assert sg is not None and sg["ingress"] == [RULE] and sg["egress"] == []


def test_route_target_config_of_routing_instances() -> None:
    f = Fabric()
    red, blue = f.network("red", "198.51.100.0/24"), f.network("blue", "203.0.113.0/24")
    both, imp, exp = (f.route_target(f"target:64512:{n}") for n in (1, 2, 3))
    f.update("routing-instance", f.ri(red), {
        "route_target_refs": [
            {"uuid": both, "attr": {"import_export": None}},
            {"uuid": imp, "attr": {"import_export": "import"}},
            {"uuid": exp, "attr": {"import_export": "export"}}],
        "routing_instance_refs": [{"uuid": f.ri(blue), "attr": {}}]})
    targets = ri_targets(f.api.db)
    assert targets[f.ri_name(red)] == RiTargets(
        imports=frozenset({"target:64512:1", "target:64512:2"}),
        exports=frozenset({"target:64512:1", "target:64512:3"}),
        connections=frozenset({f.ri_name(blue)}))
    assert targets[f.ri_name(blue)] == RiTargets()
