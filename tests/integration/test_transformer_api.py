"""The transformer against a real controller: intent created over HTTP, derived objects read
back over HTTP, on the controller's own store."""

from __future__ import annotations

from typing import Any

import requests

from tungsten.api.core import ConfigApi
from tungsten.api.fsck import check_store
from tungsten.store import open_store
from tungsten.transformer.service import Transformer

PROJECT = ["default-domain", "default-project"]
IPAM = [*PROJECT, "default-network-ipam"]


class Http:
    def __init__(self, url: str) -> None:
        self.url = url
        self.s = requests.Session()

    def create(self, rtype: str, name: str, **fields: Any) -> str:
        body = {"fq_name": [*PROJECT, name], "parent_type": "project", **fields}
        r = self.s.post(f"{self.url}/{rtype}s", json={rtype: body}, timeout=30)
        assert r.status_code == 200, r.text
        return str(r.json()[rtype]["uuid"])

    def read(self, rtype: str, uuid: str) -> dict[str, Any]:
        r = self.s.get(f"{self.url}/{rtype}/{uuid}", timeout=30)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()[rtype]
        return body

    def by_name(self, rtype: str, fq: list[str]) -> dict[str, Any]:
        r = self.s.post(f"{self.url}/fqname-to-id", json={"type": rtype, "fq_name": fq},
                        timeout=30)
        assert r.status_code == 200, f"{rtype} {fq}: {r.text}"
        return self.read(rtype, r.json()["uuid"])

    def exists(self, rtype: str, fq: list[str]) -> bool:
        r = self.s.post(f"{self.url}/fqname-to-id", json={"type": rtype, "fq_name": fq},
                        timeout=30)
        return r.status_code == 200

    def update(self, rtype: str, uuid: str, **fields: Any) -> None:
        r = self.s.put(f"{self.url}/{rtype}/{uuid}", json={rtype: fields}, timeout=30)
        assert r.status_code == 200, r.text

    def delete(self, rtype: str, uuid: str) -> None:
        r = self.s.delete(f"{self.url}/{rtype}/{uuid}", timeout=30)
        assert r.status_code == 200, r.text

    def route_targets(self) -> set[str]:
        r = self.s.get(f"{self.url}/route-targets", timeout=30)
        return {":".join(x["fq_name"]) for x in r.json()["route-targets"]}


def _policy_rule(src: str, dst: str) -> dict[str, Any]:
    return {"direction": "<>", "protocol": "any",
            "src_addresses": [{"virtual_network": src}], "dst_addresses": [
                {"virtual_network": dst}], "action_list": {"simple_action": "pass"}}


def _net(http: Http, name: str, prefix: str, policies: list[str]) -> str:
    return http.create("virtual-network", name, network_ipam_refs=[{"to": IPAM, "attr": {
        "ipam_subnets": [{"subnet": {"ip_prefix": prefix, "ip_prefix_len": 26}}]}}],
        network_policy_refs=[{"uuid": p, "attr": {"sequence": {"major": 0, "minor": 0}}}
                             for p in policies])


def _ri(http: Http, vn: str) -> dict[str, Any]:
    return http.by_name("routing-instance", [*PROJECT, vn, vn])


def test_transformer_on_a_controller_store(controller_factory: Any) -> None:
    # The controller's own transformer would race this test's syncs: this test is the only one.
    controller = controller_factory(args=["--no-transformer"])
    http = Http(controller.url)
    pol = http.create("network-policy", "web-db", network_policy_entries={"policy_rule": [
        _policy_rule("default-domain:default-project:web", "default-domain:default-project:db")]})
    web = _net(http, "web", "192.0.2.0", [pol])
    db = _net(http, "db", "192.0.2.64", [pol])
    _net(http, "lonely", "192.0.2.128", [])
    sg = http.create("security-group", "ssh", security_group_entries={"policy_rule": [
        {"direction": ">", "protocol": "tcp", "ethertype": "IPv4",
         "src_addresses": [{"subnet": {"ip_prefix": "198.51.100.0", "ip_prefix_len": 24}}],
         "dst_addresses": [{"security_group": "local"}],
         "dst_ports": [{"start_port": 22, "end_port": 22}]}]})
    port = http.create("virtual-machine-interface", "lr-port",
                       virtual_network_refs=[{"uuid": web}])
    lr = http.create("logical-router", "lr", virtual_machine_interface_refs=[{"uuid": port}])

    api = ConfigApi(open_store(controller.store_url))
    assert Transformer(api, "test").sync() > 0

    # route targets: own + the router's on web; connection web <-> db only
    web_ri, db_ri, lonely_ri = _ri(http, "web"), _ri(http, "db"), _ri(http, "lonely")
    lr_rts = [":".join(r["to"]) for r in http.read("logical-router", lr)["route_target_refs"]]
    assert len(lr_rts) == 1 and lr_rts[0].startswith("target:64512:")
    web_rts = {":".join(r["to"]): r["attr"] for r in web_ri["route_target_refs"]}
    assert len(web_rts) == 2 and lr_rts[0] in web_rts
    assert all(a == {"import_export": None} for a in web_rts.values())
    assert all(int(n.rsplit(":", 1)[1]) >= 8_000_000 for n in web_rts)
    assert len(db_ri["route_target_refs"]) == 1
    assert [r["uuid"] for r in web_ri["routing_instance_refs"]] == [db_ri["uuid"]]
    assert [r["uuid"] for r in db_ri["routing_instance_refs"]] == [web_ri["uuid"]]
    assert "routing_instance_refs" not in lonely_ri
    # ACLs: one per network (a derived child), two per security group
    web_vn = http.read("virtual-network", web)
    assert [a["to"][-1] for a in web_vn["access_control_lists"]] == ["web"]
    acl = http.read("access-control-list", web_vn["access_control_lists"][0]["uuid"])
    rules = acl["access_control_list_entries"]["acl_rule"]
    assert [r["action_list"]["simple_action"] for r in rules] == [
        "pass", "pass", "pass", "pass", "deny", "deny"]
    sg_acls = {a["to"][-1] for a in http.read("security-group", sg)["access_control_lists"]}
    assert sg_acls == {"ingress-access-control-list", "egress-access-control-list"}
    ingress = http.by_name("access-control-list", [*PROJECT, "ssh", "ingress-access-control-list"])
    assert ingress["access_control_list_entries"]["acl_rule"][0]["match_condition"][
        "dst_port"] == {"start_port": 22, "end_port": 22}

    # a second sync, and a restarted transformer, change nothing
    before = http.route_targets()
    assert Transformer(api, "test").sync() == 0
    assert Transformer(ConfigApi(open_store(controller.store_url)), "again").sync() == 0
    assert http.route_targets() == before
    assert len(before) == len({n.rsplit(":", 1)[1] for n in before})  # no duplicate numbers

    # detaching and deleting the policy removes the connection
    for vn in (web, db):
        http.update("virtual-network", vn, network_policy_refs=[])
    http.delete("network-policy", pol)
    assert Transformer(api, "test").sync() > 0
    assert "routing_instance_refs" not in _ri(http, "web")
    # deleting a network removes its route target and its ACL
    db_rt = ":".join(db_ri["route_target_refs"][0]["to"])
    http.delete("virtual-network", db)
    assert Transformer(api, "test").sync() > 0
    assert db_rt not in http.route_targets()
    assert not http.exists("access-control-list", [*PROJECT, "db", "db"])
    # the router goes: its target leaves web's instance
    http.delete("logical-router", lr)
    assert Transformer(api, "test").sync() > 0
    assert len(_ri(http, "web")["route_target_refs"]) == 1
    assert lr_rts[0] not in http.route_targets()
    assert check_store(open_store(controller.store_url)) == []
