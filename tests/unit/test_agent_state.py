"""The agent's pure core: desired datapath state and route origination."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tungsten.agent.state import (
    desired_state,
    ifname_for,
    merge_views,
    originated_routes,
    port_mtu,
    route_diff,
)
from tungsten.control.protocol import Route, route_key
from tungsten.datapath.base import NextHop

ME, PEER, PEER2 = "192.0.2.1", "192.0.2.2", "192.0.2.3"
VN_A, VN_B = "11111111-0000-0000-0000-00000000000a", "11111111-0000-0000-0000-00000000000b"
P1, P2 = "aaaaaaaa-bbbb-cccc-dddd-000000000001", "aaaaaaaa-bbbb-cccc-dddd-000000000002"


def net(uuid: str, name: str, vni: int, prefix: str, gw: str,
        acl: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"uuid": uuid, "name": f"default-domain:default-project:{name}", "vni": vni,
            "ri": f"default-domain:default-project:{name}:{name}",
            "subnets": [{"prefix": prefix, "gateway": gw, "dns": None, "subnet_uuid": "s"}],
            "acl": acl or []}


def port(uuid: str, network: str, ip: str, sgs: list[int] | None = None) -> dict[str, Any]:
    return {"uuid": uuid, "name": f"default-domain:default-project:{uuid[-4:]}",
            "network": network, "mac": "02:00:00:00:00:" + uuid[-2:],
            "ips": [{"address": ip, "prefix_len": 24, "family": "v4"}],
            "sgs": sgs or [], "tags": [], "enabled": True}


def route(ri_name: str, ip: str, nexthop: str, port_id: str, vni: int, node: str) -> Route:
    return Route(ri=f"default-domain:default-project:{ri_name}:{ri_name}", prefix=f"{ip}/32",
                 mac="02:00:00:00:01:" + ip.split(".")[-1], nexthop=nexthop, vni=vni,
                 encap="vxlan", port=port_id, node=node, sgs=[], tags=[])


def view(routes: list[Route] | None = None) -> dict[str, dict[str, Any]]:
    return {
        "ports": {P1: port(P1, VN_A, "198.51.100.1"), P2: port(P2, VN_B, "203.0.113.1")},
        "networks": {VN_A: net(VN_A, "a", 5, "198.51.100.0/24", "198.51.100.254"),
                     VN_B: net(VN_B, "b", 6, "203.0.113.0/24", "203.0.113.254")},
        "routes": {route_key(r): r for r in routes or []},
        "security_groups": {},
    }


def test_ifname_and_mtu_are_computed() -> None:
    assert ifname_for(P1) == "tapaaaaaaaabbb"
    assert len(ifname_for(P1)) <= 15
    assert port_mtu(1500, ME) == 1450
    assert port_mtu(9000, "2001:db8::1") == 8930


def test_local_and_remote_next_hops() -> None:
    r = route("a", "198.51.100.7", PEER, "remote-port", 5, "n2")
    st = desired_state("n1", ME, view([r]), [P1], 1500)
    assert set(st.ports) == {P1}
    p = st.ports[P1]
    assert (p.ifname, p.mtu, p.vni, p.ips) == (ifname_for(P1), 1450, 5, ("198.51.100.1",))
    vrf = st.vrfs[VN_A]
    assert vrf.gateways == ("198.51.100.254",)
    assert vrf.routes["198.51.100.1/32"] == (NextHop(kind="local", port=P1,
                                                     mac=p.mac, node="n1"),)
    (nh,) = vrf.routes["198.51.100.7/32"]
    assert (nh.kind, nh.vtep, nh.vni, nh.mac, nh.node) == ("remote", PEER, 5,
                                                            "02:00:00:00:01:7", "n2")


def test_only_networks_of_local_ports() -> None:
    other = route("b", "203.0.113.9", PEER, "x", 6, "n2")
    v = view([other])
    v["networks"][VN_A]["sources"] = []  # a imports nothing from b
    st = desired_state("n1", ME, v, [P1], 1500)
    assert set(st.vrfs) == {VN_A}
    assert all("203.0.113.9/32" not in v.routes for v in st.vrfs.values())


def test_ecmp_when_several_next_hops_share_a_prefix() -> None:
    a = route("a", "198.51.100.50", PEER, "lb-1", 5, "n2")
    b = route("a", "198.51.100.50", PEER2, "lb-2", 5, "n3")
    st = desired_state("n1", ME, view([a, b]), [P1], 1500)
    nhs = st.vrfs[VN_A].routes["198.51.100.50/32"]
    assert [n.vtep for n in nhs] == [PEER, PEER2]


def test_own_reflected_route_is_not_a_remote_next_hop() -> None:
    own = route("a", "198.51.100.1", ME, P1, 5, "n1")
    st = desired_state("n1", ME, view([own]), [P1], 1500)
    assert [n.kind for n in st.vrfs[VN_A].routes["198.51.100.1/32"]] == ["local"]


def test_port_without_config_is_not_plugged_and_not_originated() -> None:
    v = view()
    del v["ports"][P1]
    st = desired_state("n1", ME, v, [P1], 1500)
    assert st.ports == {} and st.vrfs == {}
    assert originated_routes("n1", ME, v, st) == {}


def test_acl_and_security_groups_carried() -> None:
    rule = {"rule_uuid": "r1", "direction": ">", "match_condition": {"protocol": "any"},
            "action_list": {"simple_action": "pass"}}
    v = view()
    v["networks"][VN_A]["acl"] = [rule]
    v["security_groups"] = {"8000001": {"uuid": "sg", "id": 8000001, "ingress": [],
                                        "egress": []}}
    st = desired_state("n1", ME, v, [P1], 1500)
    assert st.vrfs[VN_A].acl == (rule,)
    assert set(st.security_groups) == {8000001}


def test_originated_routes_follow_installed_ports() -> None:
    v = view()
    st = desired_state("n1", ME, v, [P1, P2], 1500)
    routes = originated_routes("n1", ME, v, st)
    assert {r["prefix"] for r in routes.values()} == {"198.51.100.1/32", "203.0.113.1/32"}
    r = next(r for r in routes.values() if r["port"] == P1)
    assert (r["ri"], r["nexthop"], r["vni"], r["encap"], r["node"]) == (
        "default-domain:default-project:a:a", ME, 5, "vxlan", "n1")
    assert originated_routes("n1", ME, v, None) == {}
    add, gone = route_diff(routes, {})
    assert add == [] and sorted(gone) == sorted(routes)


def test_merge_views_routes_from_all_config_from_primary() -> None:
    a = route("a", "198.51.100.7", PEER, "p7", 5, "n2")
    b = route("a", "198.51.100.8", PEER2, "p8", 5, "n3")
    primary, other = view([a]), view([b])
    other["ports"] = {}
    merged = merge_views(primary, [other])
    assert set(merged["routes"]) == {route_key(a), route_key(b)}
    assert merged["ports"] is primary["ports"]


def test_leaked_routes_go_to_the_networks_that_import_them() -> None:
    leaked = route("c", "192.0.2.77", PEER, "pc", 9, "n2")  # from a network with no port here
    b_route = route("b", "203.0.113.9", PEER, "pb", 6, "n2")
    st = desired_state("n1", ME, view([leaked, b_route]), [P1, P2], 1500)
    assert "192.0.2.77/32" in st.vrfs[VN_A].routes and "192.0.2.77/32" in st.vrfs[VN_B].routes
    assert "203.0.113.9/32" not in st.vrfs[VN_A].routes  # b's own routes stay in b
    # With explicit sources, a network takes exactly what it imports.
    v = view([leaked, b_route])
    v["networks"][VN_A]["sources"] = [v["networks"][VN_B]["ri"]]
    v["networks"][VN_B]["sources"] = []
    st = desired_state("n1", ME, v, [P1, P2], 1500)
    assert "203.0.113.9/32" in st.vrfs[VN_A].routes
    assert "192.0.2.77/32" not in st.vrfs[VN_A].routes
    assert "192.0.2.77/32" not in st.vrfs[VN_B].routes


# -- the route memo: a pass reuses the routes its view still holds -------------------------
_ROUTE_OPS = st.lists(st.tuples(
    st.sampled_from(["add", "change", "remove", "security"]),
    st.integers(min_value=1, max_value=12),  # which remote address
    st.sampled_from([PEER, PEER2]),
    st.lists(st.integers(min_value=8000001, max_value=8000003), max_size=2),
    st.booleans()), max_size=25)


@given(_ROUTE_OPS)
def test_route_memo_gives_the_state_of_a_fresh_pass(ops: list[Any]) -> None:
    from tungsten.agent.state import RouteMemo
    from tungsten.control.protocol import apply_delta

    v: dict[str, Any] = view()
    memo = RouteMemo()
    for op, i, nexthop, sgs, named in ops:
        r: dict[str, Any] = dict(route("a", f"198.51.100.{100 + i}", nexthop, f"p{i}", 5,
                                       "c2" if nexthop == PEER else "c3"))
        if named:  # routes that name their network are the ones the memo keeps
            r["network"] = "default-domain:default-project:a"
        r["sgs"] = sgs
        key = route_key(r)  # type: ignore[arg-type]
        if op == "remove":
            apply_delta(v, {"remove": {"routes": [k for k in v["routes"]
                                                  if k.startswith(key.rsplit("|", 1)[0])]}})
        elif op == "security":  # a delta that leaves every route as it is
            apply_delta(v, {"upsert": {"security_groups": {str(i): {"id": 8000000 + i,
                                                                    "rules": []}}}})
        else:  # add, or change: the delta brings a new object under the key
            apply_delta(v, {"upsert": {"routes": {key: r}}})
        got = desired_state("c1", ME, v, [P1, P2], 1500, memo)
        assert got == desired_state("c1", ME, v, [P1, P2], 1500)
