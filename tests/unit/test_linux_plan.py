"""The ``linux`` datapath's pure planning: kernel objects from a state, and the diff."""

from __future__ import annotations

import dataclasses

import pytest

from tungsten.datapath.base import DatapathState, LocalPort, NextHop, Vrf
from tungsten.datapath.linux.plan import (
    AF_INET,
    AF_INET6,
    Change,
    Fdb,
    Hop,
    KernelObjects,
    Neigh,
    Owner,
    Route,
    Rule,
    Sysctl,
    VxlanLink,
    desired,
    diff,
    nexthop_address,
    router_mac,
)

OWNER = Owner(prefix="tg", table_base=0x54000000, rule_priority=1000, rt_proto=84)
T = OWNER.table_base + 4101


def port(uuid: str = "p1", ip: str = "198.51.100.1", ifname: str = "tapp1") -> LocalPort:
    return LocalPort(uuid=uuid, network="net-a", vni=4101, mac="02:00:00:00:00:01",
                     ips=(ip,), ifname=ifname, mtu=1450)


def remote(vtep: str) -> NextHop:
    return NextHop(kind="remote", vtep=vtep, vni=4101, mac="02:00:00:00:00:02", node="n2")


def state(routes: dict[str, tuple[NextHop, ...]] | None = None,
          ports: tuple[LocalPort, ...] = (port(),)) -> DatapathState:
    local = {f"{ip}/32": (NextHop(kind="local", port=p.uuid),) for p in ports for ip in p.ips}
    vrf = Vrf(network="net-a", name="d:p:a", vni=4101,
              routes={**local, **(routes or {})}, gateways=("198.51.100.254",))
    return DatapathState(node="n1", underlay_ip="192.0.2.1",
                         ports={p.uuid: p for p in ports}, vrfs={"net-a": vrf})


def plan(st: DatapathState, present: tuple[str, ...] | None = None) -> KernelObjects:
    return desired(st, OWNER, "ul0", 1500, present).objects


def test_network_gets_table_vxlan_and_rules() -> None:
    objs = plan(state())
    assert objs.links == {"tgvx4101": VxlanLink(
        name="tgvx4101", vni=4101, local="192.0.2.1", underlay="ul0", mtu=1450,
        mac=router_mac("192.0.2.1"), port=4789, learning=False)}
    assert set(objs.rules.values()) == {Rule(AF_INET, "tgvx4101", T, 1000),
                                        Rule(AF_INET, "tapp1", T, 1000)}
    assert objs.routes[(AF_INET, T, "0.0.0.0/0")].kind == "unreachable"
    assert objs.routes[(AF_INET, T, "198.51.100.1/32")].hops == (Hop("tapp1"),)
    # the gateway routes away from the port, so proxy ARP on the port answers it
    assert objs.routes[(AF_INET, T, "198.51.100.254/32")].hops == (Hop("tgvx4101"),)
    assert Sysctl("ipv4/conf/tapp1/proxy_arp", "1") in objs.sysctls.values()
    assert Sysctl("ipv4/ip_forward", "1") in objs.sysctls.values()
    assert not objs.neighs and not objs.fdbs


def test_mtu_comes_from_the_underlay() -> None:
    objs = desired(state(), OWNER, "ul0", 9000).objects
    assert objs.links["tgvx4101"].mtu == 9000 - 50


def test_remote_route_is_onlink_with_neighbour_and_fdb() -> None:
    objs = plan(state({"198.51.100.2/32": (remote("192.0.2.2"),)}))
    assert objs.routes[(AF_INET, T, "198.51.100.2/32")].hops == (Hop("tgvx4101", "192.0.2.2"),)
    rmac = router_mac("192.0.2.2")
    assert list(objs.neighs.values()) == [Neigh(AF_INET, "tgvx4101", "192.0.2.2", rmac)]
    assert list(objs.fdbs.values()) == [Fdb("tgvx4101", rmac, "192.0.2.2")]


def test_leaked_route_from_a_network_without_port_here_gets_a_send_only_device() -> None:
    # a policy leaks 203.0.113.5 of VNI 4102 into net-a; no port of 4102 lives on this node
    leaked = NextHop(kind="remote", vtep="192.0.2.2", vni=4102, mac="02:00:00:00:00:03")
    objs = plan(state({"203.0.113.5/32": (leaked,)}))
    t2 = OWNER.table_base + 4102
    assert objs.routes[(AF_INET, T, "203.0.113.5/32")].hops == (Hop("tgvx4102", "192.0.2.2"),)
    assert objs.links["tgvx4102"].vni == 4102
    assert Fdb("tgvx4102", router_mac("192.0.2.2"), "192.0.2.2") in objs.fdbs.values()
    # what arrives on it can go nowhere: its table holds only an unreachable default
    assert Rule(AF_INET, "tgvx4102", t2, 1000) in objs.rules.values()
    assert [k for k in objs.routes if k[1] == t2] == [(AF_INET, t2, "0.0.0.0/0")]
    assert objs.routes[(AF_INET, t2, "0.0.0.0/0")].kind == "unreachable"


def test_ecmp_is_one_multipath_route() -> None:
    objs = plan(state({"203.0.113.0/24": (remote("192.0.2.3"), remote("192.0.2.2"))}))
    r = objs.routes[(AF_INET, T, "203.0.113.0/24")]
    assert r.hops == (Hop("tgvx4101", "192.0.2.2"), Hop("tgvx4101", "192.0.2.3"))
    assert len(objs.fdbs) == 2 and len(objs.neighs) == 2


def test_missing_port_device_gets_rule_only() -> None:
    p = desired(state(), OWNER, "ul0", 1500, present=("ul0",))
    assert p.missing_ports == ("p1",)
    assert (AF_INET, "tapp1", T, 1000) in p.objects.rules
    assert (AF_INET, T, "198.51.100.1/32") not in p.objects.routes
    assert not any("tapp1" in k for k in p.objects.sysctls)


def test_ipv6_prefix_uses_link_local_nexthop() -> None:
    objs = plan(state({"2001:db8::2/128": (remote("192.0.2.2"),)}))
    r = objs.routes[(AF_INET6, T, "2001:db8::2/128")]
    assert r.hops == (Hop("tgvx4101", nexthop_address("192.0.2.2", AF_INET6)),)
    assert r.hops[0].gateway is not None and r.hops[0].gateway.startswith("fe80::")
    assert (AF_INET6, T, "::/0") in objs.routes
    assert (AF_INET6, "tgvx4101", T, 1000) in objs.rules


def test_router_mac_is_stable_and_local_unicast() -> None:
    assert router_mac("192.0.2.2") == "02:54:c0:00:02:02"
    assert router_mac("2001:db8::1") == router_mac("2001:db8::1")
    assert int(router_mac("2001:db8::1").split(":")[0], 16) & 0x03 == 0x02


def test_owner_validation() -> None:
    with pytest.raises(ValueError):
        Owner(prefix="toolong")
    with pytest.raises(ValueError):
        Owner(table_base=10)
    with pytest.raises(ValueError):
        Owner(rule_priority=40000)
    assert OWNER.is_vxlan_name("tgvx12") and not OWNER.is_vxlan_name("tgvxa")
    assert not OWNER.is_vxlan_name("othervx9")
    assert OWNER.owns_table(T) and not OWNER.owns_table(254)


def test_diff_of_equal_is_empty() -> None:
    want = plan(state({"198.51.100.2/32": (remote("192.0.2.2"),)}))
    assert diff(want, want) == []


def test_diff_adds_everything_in_dependency_order() -> None:
    want = plan(state({"198.51.100.2/32": (remote("192.0.2.2"),)}))
    changes = diff(KernelObjects(), want)
    assert {c.op for c in changes} == {"add"}
    kinds = [type(c.obj).__name__ for c in changes]
    assert kinds.index("VxlanLink") < kinds.index("Fdb") < kinds.index("Neigh")
    assert kinds.index("Neigh") < kinds.index("Route") < kinds.index("Rule")


def test_diff_removes_stale_first_and_replaces_changed() -> None:
    have = plan(state({"198.51.100.2/32": (remote("192.0.2.2"),)}))
    want = plan(state({"198.51.100.2/32": (remote("192.0.2.3"),),
                       "198.51.100.9/32": (remote("192.0.2.3"),)}))
    changes = diff(have, want)
    ops = [c.op for c in changes]
    assert ops == sorted(ops, key=lambda o: o != "remove")  # removals first
    removed = {type(c.obj).__name__ for c in changes if c.op == "remove"}
    assert removed == {"Neigh", "Fdb"}  # the old VTEP's entries
    replaced = [c for c in changes if c.op == "replace"]
    assert [c.obj.key for c in replaced] == [(AF_INET, T, "198.51.100.2/32")]
    assert isinstance(replaced[0].old, Route)


def test_diff_removes_dependants_before_links_and_keeps_sysctls() -> None:
    have = plan(state({"198.51.100.2/32": (remote("192.0.2.2"),)}))
    empty = plan(DatapathState(node="n1", underlay_ip="192.0.2.1"))
    changes = diff(have, empty)
    assert all(c.op == "remove" for c in changes)
    assert isinstance(changes[0].obj, Rule)
    assert isinstance(changes[-1].obj, VxlanLink)
    assert not any(isinstance(c.obj, Sysctl) for c in changes)


def test_changed_vxlan_identity_recreates_device_and_what_hangs_off_it() -> None:
    want = plan(state({"198.51.100.2/32": (remote("192.0.2.2"),)}))
    have = KernelObjects()
    for obj in want.all():
        have.add(obj)
    have.links["tgvx4101"] = dataclasses.replace(want.links["tgvx4101"], local="192.0.2.9")
    changes = diff(have, want)
    assert Change("remove", have.links["tgvx4101"]) in changes
    added = {c.obj for c in changes if c.op == "add"}
    assert want.links["tgvx4101"] in added
    assert all(f in added for f in want.fdbs.values())
    assert want.routes[(AF_INET, T, "198.51.100.2/32")] in added


def test_mtu_change_is_a_replace_not_a_recreate() -> None:
    want = plan(state())
    have = KernelObjects()
    for obj in want.all():
        have.add(obj)
    have.links["tgvx4101"] = dataclasses.replace(want.links["tgvx4101"], mtu=1500)
    assert [c.op for c in diff(have, want)] == ["replace"]
