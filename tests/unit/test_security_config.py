"""Security from the API to a packet's verdict: objects created through the API core, the
transformer's derived ACLs, each node's view and routes, the agent's desired state, and
``sim``'s trace across two nodes."""

from __future__ import annotations

from typing import Any

from tests.unit.test_control_firewall import Firewall
from tests.unit.test_control_views import PROJ
from tungsten.agent.state import desired_state, originated_routes
from tungsten.control.protocol import route_key
from tungsten.control.views import config_view
from tungsten.datapath.base import Packet
from tungsten.datapath.sim import SimDatapath, SimFabric
from tungsten.transformer.service import Transformer

UL = {"n1": "192.0.2.1", "n2": "192.0.2.2"}


def ip_of(f: Firewall, port: str) -> str:
    view, _ = config_view(f.api.db, {port})
    return str(view["ports"][port]["ips"][0]["address"])


class TwoNodes:
    """Ports placed on n1/n2; views and routes as the control node would send them."""

    def __init__(self, f: Firewall, placement: dict[str, str]) -> None:
        self.f, self.placement = f, placement
        self.fabric = SimFabric()
        self.dps = {n: SimDatapath(self.fabric) for n in UL}

    def sync(self) -> None:
        Transformer(self.f.api, "t").sync()
        views = {n: config_view(self.f.api.db, {p for p, m in self.placement.items()
                                                if m == n})[0] for n in UL}
        routes: dict[str, Any] = {}
        for n, v in views.items():  # the agents' routes, as if installed (one network)
            installed = desired_state(n, UL[n], {**v, "routes": {}}, list(v["ports"]), 1500)
            for r in originated_routes(n, UL[n], v, installed).values():
                routes[route_key(r)] = r
        for n, v in views.items():
            v["routes"] = routes
            self.dps[n].apply(desired_state(n, UL[n], v, list(v["ports"]), 1500))

    def trace(self, src: str, dst: str, proto: str = "tcp", dport: int = 5432) -> Any:
        return self.dps[self.placement[src]].trace(
            src, Packet(ip_of(self.f, src), ip_of(self.f, dst), proto, 40000, dport))


def sg_rule(remote: dict[str, Any], *, ingress: bool, proto: str = "any",
            port: int | None = None) -> dict[str, Any]:
    ports = [{"start_port": port, "end_port": port}] if port else [
        {"start_port": 0, "end_port": 65535}]
    local = [{"security_group": "local"}]
    return {"direction": ">", "protocol": proto, "ethertype": "IPv4",
            "src_addresses": [remote] if ingress else local,
            "dst_addresses": local if ingress else [remote],
            "src_ports": [{"start_port": 0, "end_port": 65535}], "dst_ports": ports}


def test_remote_groups_and_tagged_firewall_from_the_api() -> None:
    f = Firewall()
    red = f.network("red", "198.51.100.0/24")
    everything = {"subnet": {"ip_prefix": "0.0.0.0", "ip_prefix_len": 0}}
    web_sg = f.sg("web", [sg_rule(everything, ingress=False)])
    db_sg = f.sg("db", [sg_rule({"security_group": ":".join([*PROJ, "web"])}, ingress=True,
                                proto="tcp", port=5432)])
    web, db, other = f.port(red, (web_sg,)), f.port(red, (db_sg,)), f.port(red, (web_sg,))
    shop = f.tag("application", "shop")
    tier_web, tier_db = f.tag("tier", "web"), f.tag("tier", "db")
    blue, green = f.tag("label", "blue"), f.tag("label", "green")
    project = f.api.db.lookup("project", PROJ)
    assert project is not None
    f.tag_with("project", project, blue)  # inherited by every port
    f.tag_with("virtual-network", red, shop)  # inherited: the application
    f.tag_with("virtual-machine-interface", web, tier_web, green)
    f.tag_with("virtual-machine-interface", other, tier_web)
    f.tag_with("virtual-machine-interface", db, tier_db)
    rule = f.rule("web-to-db", direction=">",
                  endpoint_1={"tags": ["tier=web", "label=blue", "label=green"]},
                  endpoint_2={"tags": ["tier=db"]},
                  service={"protocol": "tcp", "dst_ports": {"start_port": 5432,
                                                            "end_port": 5432}})
    f.aps("shop-aps", shop, [("1", f.policy("shop-pol", [("1", rule)]))])

    lab = TwoNodes(f, {web: "n1", other: "n1", db: "n2"})
    lab.sync()
    ok = lab.trace(web, db)
    assert (ok.verdict, ok.port, ok.node) == ("delivered", db, "n2"), ok.hops
    assert any(f"by {rule}" in h for h in ok.hops)
    # other: in the web group (SGs pass) but without the green label (firewall denies)
    denied = lab.trace(other, db)
    assert (denied.verdict, denied.rule) == ("dropped", "firewall (default deny)")
    # another port of the database: the SG admits only 5432
    assert lab.trace(web, db, dport=22).rule == "security group ingress (default deny)"

    # the web port leaves the web group: its route no longer carries it, n2 denies
    f.update("virtual-machine-interface", web, {"security_group_refs": []})
    lab.sync()
    res = lab.trace(web, db)
    assert (res.verdict, res.node, res.rule) == ("dropped", "n2",
                                                 "security group ingress (default deny)")
