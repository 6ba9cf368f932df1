"""Network policies end to end: a policy attached to both networks leaks routes and its rules
decide; attached on one side only it leaks nothing (TF: both networks must list each other)."""

from __future__ import annotations

from typing import Any

from tests.e2e.fabric import (
    PROJECT,
    check_delivered,
    connected,
    has_route,
    ip,
    plug,
    policy_refs,
    run,
)
from tests.waits import until
from tungsten.transformer.rules import implicit_uuid

A = "default-domain:default-project:app"
B = "default-domain:default-project:db"
PASS_RULE = "5a5a5a5a-0000-4000-8000-000000005432"
DENY_RULE = "dededede-0000-4000-8000-000000000022"


def _rule(uuid: str, action: str, port: int) -> dict[str, Any]:
    return {"rule_uuid": uuid, "direction": ">", "protocol": "tcp", "ethertype": "IPv4",
            "src_addresses": [{"virtual_network": A}], "src_ports": [{"start_port": -1,
                                                                      "end_port": -1}],
            "dst_addresses": [{"virtual_network": B}],
            "dst_ports": [{"start_port": port, "end_port": port}],
            "action_list": {"simple_action": action}}


def test_policy_on_both_sides_leaks_routes_and_filters(controller_factory: Any) -> None:
    ctl = controller_factory(args=["--hold-time", "1"])

    async def main() -> None:
        async with connected(ctl.url) as (api, fab):
            pol = await api.create(
                "network-policy", [*PROJECT, "app-to-db"], "project",
                network_policy_entries={"policy_rule": [_rule(DENY_RULE, "deny", 22),
                                                        _rule(PASS_RULE, "pass", 5432)]})
            # the policy on the app side only, for now
            vn_a = await api.network("app", "198.51.100.0/24", policies=[pol])
            vn_b = await api.network("db", "203.0.113.0/24")
            n1 = await fab.agent("n1", "198.19.0.1", [ctl.url])
            n2 = await fab.agent("n2", "198.19.0.2", [ctl.url])
            a1 = await plug(n1, "app", "a1")
            b1 = await plug(n2, "db", "b1")
            b2 = await plug(n1, "db", "b2")  # a db port on the app node too
            await until(lambda: has_route(n1, ip(b1)), "db's routes on n1")
            await until(lambda: any(r["action_list"]["simple_action"] == "deny"
                                    and r["rule_uuid"] == DENY_RULE
                                    for a in n1.acls(a1["uuid"]) for r in a["acl"]),
                        "app's ACL with the policy's rules")
            # one side only: no leak, from either side
            for agent, src, dst in ((n1, a1, b1), (n1, a1, b2), (n2, b1, a1)):
                res = agent.trace(src["uuid"], ip(dst), proto_="tcp", dport=5432)
                assert res.verdict == "no_route", res
            app_vrf = {r["prefix"] for r in n1.routes(A)}
            assert app_vrf == {f"{ip(a1)}/32"}

            # both sides: the routes leak both ways
            await api.update("virtual-network", vn_b, network_policy_refs=policy_refs([pol]))
            await until(lambda: {f"{ip(b1)}/32", f"{ip(b2)}/32"}
                        <= {r["prefix"] for r in n1.routes(A)}, "db leaked into app")
            await until(lambda: has_route(n2, ip(a1)), "app leaked into db on n2")
            # the pass rule: delivered, to a remote and to a local db port
            check_delivered(n1, a1, b1, "tcp", 5432)
            check_delivered(n1, a1, b2, "tcp", 5432)
            # the deny rule decides tcp/22
            for dst in (b1, b2):
                res = n1.trace(a1["uuid"], ip(dst), proto_="tcp", dport=22)
                assert (res.verdict, res.rule) == ("dropped", DENY_RULE), res
            # anything else meets the implicit deny of app's ACL
            deny_a = implicit_uuid(vn_a, "deny-all-IPv4")
            for proto, dport in (("tcp", 80), ("udp", 5432), ("icmp", 0)):
                res = n1.trace(a1["uuid"], ip(b1), proto_=proto, dport=dport)
                assert (res.verdict, res.rule) == ("dropped", deny_a), (proto, res)
            # the rule is one way (">"): db may not open connections to app
            deny_b = implicit_uuid(vn_b, "deny-all-IPv4")
            res = n2.trace(b1["uuid"], ip(a1), proto_="tcp", dport=5432)
            assert (res.verdict, res.rule) == ("dropped", deny_b), res
            # inside each network traffic still flows (allow-self comes first)
            check_delivered(n2, b1, b2, "tcp", 80)

            # detached from db again: the leak is withdrawn
            await api.update("virtual-network", vn_b, network_policy_refs=[])
            await until(lambda: {r["prefix"] for r in n1.routes(A)} == {f"{ip(a1)}/32"},
                        "leak withdrawn from app's VRF")
            res = n1.trace(a1["uuid"], ip(b1), proto_="tcp", dport=5432)
            assert res.verdict == "no_route", res
            check_delivered(n1, b2, b1, "tcp", 5432)  # db to itself: untouched

    run(main())
