"""The sim datapath: packet tracing through VRFs, ACLs, security groups and the fabric."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tests.unit.test_agent_state import ME, P1, P2, PEER, VN_A, VN_B, port, route, view
from tungsten.agent.state import desired_state
from tungsten.control.protocol import route_key
from tungsten.datapath.base import Packet
from tungsten.datapath.sim import (
    Endpoint,
    SimDatapath,
    SimFabric,
    acl_verdict,
    proto_number,
)

VN_A_NAME = "default-domain:default-project:a"
VN_B_NAME = "default-domain:default-project:b"
P3 = "aaaaaaaa-bbbb-cccc-dddd-000000000003"


def acl_rule(uuid: str, action: str, *, proto: str = "any", src_vn: str | None = None,
             dst_vn: str | None = None, dport: int | None = None,
             direction: str = ">") -> dict[str, Any]:
    any_port = {"start_port": -1, "end_port": -1}
    return {"rule_uuid": uuid, "direction": direction,
            "match_condition": {
                "protocol": proto,
                "src_address": {"virtual_network": src_vn or "any"}, "src_port": any_port,
                "dst_address": {"virtual_network": dst_vn or "any"},
                "dst_port": any_port if dport is None else {"start_port": dport,
                                                            "end_port": dport}},
            "action_list": {"simple_action": action}}


def one_node(v: dict[str, Any], ports: list[str]) -> SimDatapath:
    dp = SimDatapath()
    dp.apply(desired_state("n1", ME, v, ports, 1500))
    return dp


def test_delivered_locally_inside_a_network_with_empty_acl() -> None:
    v = view()
    v["ports"][P3] = port(P3, VN_A, "198.51.100.3")
    dp = one_node(v, [P1, P3])
    res = dp.trace(P1, Packet("198.51.100.1", "198.51.100.3"))
    assert (res.verdict, res.port, res.node) == ("delivered", P3, "n1")


def test_no_route() -> None:
    dp = one_node(view(), [P1])
    res = dp.trace(P1, Packet("198.51.100.1", "198.51.100.99"))
    assert res.verdict == "no_route"
    # A network's routes never leak into another one's VRF without a route for it.
    dp2 = one_node(view(), [P1, P2])
    assert dp2.trace(P1, Packet("198.51.100.1", "203.0.113.1")).verdict == "no_route"


def test_unknown_source_port_is_dropped() -> None:
    res = one_node(view(), [P1]).trace("nope", Packet("198.51.100.1", "198.51.100.3"))
    assert res.verdict == "dropped"


def test_acl_deny_records_rule_uuid_and_pass_delivers() -> None:
    v = view()
    v["ports"][P3] = port(P3, VN_A, "198.51.100.3")
    v["networks"][VN_A]["acl"] = [
        acl_rule("deny-web", "deny", proto="tcp", dport=80),
        acl_rule("allow-all", "pass"),
    ]
    dp = one_node(v, [P1, P3])
    web = dp.trace(P1, Packet("198.51.100.1", "198.51.100.3", "tcp", 40000, 80))
    assert (web.verdict, web.rule) == ("dropped", "deny-web")
    ssh = dp.trace(P1, Packet("198.51.100.1", "198.51.100.3", "tcp", 40000, 22))
    assert (ssh.verdict, ssh.port) == ("delivered", P3)
    assert any("allow-all" in h for h in ssh.hops)


def test_non_empty_acl_without_match_is_implicit_deny() -> None:
    v = view()
    v["ports"][P3] = port(P3, VN_A, "198.51.100.3")
    v["networks"][VN_A]["acl"] = [acl_rule("udp-only", "pass", proto="udp")]
    res = one_node(v, [P1, P3]).trace(P1, Packet("198.51.100.1", "198.51.100.3", "tcp", 1, 2))
    assert (res.verdict, res.rule) == ("dropped", "implicit deny")


def test_direction_both_ways_matches_reversed_packet() -> None:
    src = {"virtual_network": VN_B_NAME}
    dst = {"virtual_network": VN_A_NAME}
    a = Endpoint(ipaddress.ip_address("198.51.100.1"), 1000, VN_A_NAME)
    b = Endpoint(ipaddress.ip_address("203.0.113.1"), 80, VN_B_NAME)
    rule = {"rule_uuid": "r", "direction": ">", "match_condition": {
        "protocol": "any", "src_address": src, "dst_address": dst},
        "action_list": {"simple_action": "pass"}}
    assert acl_verdict([rule], 6, a, b) == (False, "implicit deny")
    assert acl_verdict([{**rule, "direction": "<>"}], 6, a, b) == (True, "r")


def test_security_groups_allow_only_what_rules_allow() -> None:
    v = view()
    v["ports"][P3] = port(P3, VN_A, "198.51.100.3", sgs=[8000001])
    ingress_ssh = {"rule_uuid": "sg-ssh", "direction": ">", "protocol": "tcp",
                   "src_addresses": [{"subnet": {"ip_prefix": "0.0.0.0", "ip_prefix_len": 0}}],
                   "dst_addresses": [{"security_group": "local"}],
                   "dst_ports": [{"start_port": 22, "end_port": 22}]}
    v["security_groups"] = {"8000001": {"uuid": "sg", "id": 8000001,
                                        "ingress": [ingress_ssh], "egress": []}}
    dp = one_node(v, [P1, P3])
    ok = dp.trace(P1, Packet("198.51.100.1", "198.51.100.3", "tcp", 5000, 22))
    assert (ok.verdict, ok.port) == ("delivered", P3)
    bad = dp.trace(P1, Packet("198.51.100.1", "198.51.100.3", "tcp", 5000, 80))
    assert bad.verdict == "dropped" and "security group" in (bad.rule or "")


def test_cross_node_through_the_fabric() -> None:
    fabric = SimFabric()
    r1 = route("a", "198.51.100.1", ME, P1, 5, "n1")
    r3 = route("a", "198.51.100.3", PEER, P3, 5, "n2")
    v = view([r1, r3])
    v["ports"][P3] = port(P3, VN_A, "198.51.100.3")
    n1, n2 = SimDatapath(fabric), SimDatapath(fabric)
    n1.apply(desired_state("n1", ME, v, [P1], 1500))
    n2.apply(desired_state("n2", PEER, v, [P3], 1500))
    res = n1.trace(P1, Packet("198.51.100.1", "198.51.100.3", "udp", 1, 53))
    assert (res.verdict, res.port, res.node) == ("delivered", P3, "n2")
    assert any("VXLAN to 192.0.2.2 (VNI 5)" in h for h in res.hops)
    # The destination network's ACL is checked too when crossing networks.
    # A route leaked into a's instance (what a policy between a and b would do).
    v2 = view([route("b", "203.0.113.1", PEER, P2, 6, "n2")])
    r_leak = route("b", "203.0.113.1", PEER, P2, 6, "n2")
    r_leak["ri"] = v2["networks"][VN_A]["ri"]
    v2["routes"][route_key(r_leak)] = r_leak
    v2["networks"][VN_B]["acl"] = [acl_rule("b-deny", "deny")]
    n1.apply(desired_state("n1", ME, v2, [P1], 1500))
    n2.apply(desired_state("n2", PEER, v2, [P2], 1500))
    res = n1.trace(P1, Packet("198.51.100.1", "203.0.113.1"))
    assert (res.verdict, res.rule, res.node) == ("dropped", "b-deny", "n2")


def test_remote_vtep_outside_the_fabric_is_forwarded() -> None:
    v = view([route("a", "198.51.100.9", PEER, "p9", 5, "n9")])
    res = one_node(v, [P1]).trace(P1, Packet("198.51.100.1", "198.51.100.9"))
    assert res.verdict == "forwarded"


def test_ecmp_is_flow_sticky() -> None:
    fabric = SimFabric()
    p4 = "aaaaaaaa-bbbb-cccc-dddd-000000000004"
    a = route("a", "198.51.100.50", PEER, P3, 5, "n2")
    b = route("a", "198.51.100.50", "192.0.2.3", p4, 5, "n3")
    v = view([a, b])
    v["ports"][P3] = port(P3, VN_A, "198.51.100.50")
    v["ports"][p4] = port(p4, VN_A, "198.51.100.50")
    n1, n2, n3 = SimDatapath(fabric), SimDatapath(fabric), SimDatapath(fabric)
    n1.apply(desired_state("n1", ME, v, [P1], 1500))
    n2.apply(desired_state("n2", PEER, v, [P3], 1500))
    n3.apply(desired_state("n3", "192.0.2.3", v, [p4], 1500))
    seen = set()
    for sport in range(1, 40):
        pkt = Packet("198.51.100.1", "198.51.100.50", "tcp", sport, 80)
        first = n1.trace(P1, pkt)
        assert n1.trace(P1, pkt).port == first.port  # same flow, same member
        seen.add(first.port)
    assert seen == {P3, p4}


def test_apply_counts_removed_routes() -> None:
    dp = one_node(view([route("a", "198.51.100.9", PEER, "p9", 5, "n9")]), [P1])
    dp.apply(desired_state("n1", ME, view([route("a", "198.51.100.9", PEER, "p9", 5, "n9")]),
                           [P1], 1500))
    assert dp.routes_removed == 0
    dp.apply(desired_state("n1", ME, view(), [P1], 1500))
    assert dp.routes_removed == 1 and dp.route_count() == 1


def test_protocol_names() -> None:
    assert proto_number("TCP") == 6 and proto_number("17") == 17 and proto_number("any") is None
    with pytest.raises(ValueError):
        proto_number("bogus")
