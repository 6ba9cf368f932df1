"""The pure part of the linux datapath's ACLs: the nftables table as data, and the diff."""

from __future__ import annotations

from typing import Any

from tungsten.datapath.base import DatapathState, LocalPort, NextHop, Vrf
from tungsten.datapath.linux import acl

A, B = "d:p:A", "d:p:B"
ANY_PORT = {"start_port": -1, "end_port": -1}


def rule(src: str | dict[str, Any], dst: str | dict[str, Any], proto: str = "any",
         dport: tuple[int, int] = (-1, -1), action: str = "pass",
         ethertype: str = "IPv4") -> dict[str, Any]:
    def addr(a: str | dict[str, Any]) -> dict[str, Any]:
        return a if isinstance(a, dict) else {"virtual_network": a}
    return {"match_condition": {"protocol": proto, "src_address": addr(src),
                                "src_port": ANY_PORT, "dst_address": addr(dst),
                                "dst_port": {"start_port": dport[0], "end_port": dport[1]},
                                "ethertype": ethertype},
            "action_list": {"simple_action": action}, "rule_uuid": "u", "direction": ">"}


def state(with_acl: bool = True) -> DatapathState:
    pa = LocalPort("pa", "net-a", 10, "02:00:00:00:00:01", ("198.51.100.1",), "tapa", 1450)
    pb = LocalPort("pb", "net-b", 70000, "02:00:00:00:00:02", ("203.0.113.1",), "tapb", 1450)
    remote_b = NextHop("remote", vtep="192.0.2.2", vni=70000, mac="02:00:00:00:00:03")
    acl_a = (rule(A, A), rule(A, B, "6", (5432, 5432)), rule("any", "any", action="deny"))
    va = Vrf("net-a", A, 10, {"198.51.100.1/32": (NextHop("local", port="pa"),),
                              "203.0.113.1/32": (NextHop("local", port="pb"),),
                              "203.0.113.2/32": (remote_b,)},
             acl=acl_a if with_acl else ())
    vb = Vrf("net-b", B, 70000, {"203.0.113.1/32": (NextHop("local", port="pb"),),
                                 "198.51.100.1/32": (NextHop("local", port="pa"),)})
    return DatapathState("n1", "192.0.2.1", {"pa": pa, "pb": pb},
                         {"net-a": va, "net-b": vb})


def test_zones() -> None:
    assert acl.zones_for([10, 70000]) == {10: 10, 70000: 70000 % 65535 + 1}
    z = acl.zones_for([4466, 70000])  # 70000 folds onto 4466: moved on
    assert z[4466] == 4466 and z[70000] == 4467
    assert acl.zones_for([]) == {}


def test_vrf_view_splits_own_and_leaked() -> None:
    st = state()
    view = acl.vrf_view(st, st.vrfs["net-a"])
    assert view.own == ("198.51.100.1/32",)
    assert view.leaked == {70000: ("203.0.113.1/32", "203.0.113.2/32")}


def test_ruleset_layout() -> None:
    rs = acl.ruleset(state(), "tungsten", {10: "tgvx10", 70000: "tgvx70000"})
    assert rs is not None
    assert [c.name for c in rs.chains] == ["z-10", "acl-10", "z-70000", "zone", "forward"]
    assert rs.chain("zone").spec() == ("filter", "prerouting", -300, "accept")
    zone_vmap = rs.chain("zone").rules[0][0]["vmap"]["data"]["set"]
    assert [d for d, _ in zone_vmap] == ["tapa", "tapb", "tgvx10", "tgvx70000"]
    # network B (higher zone) sends traffic with A's addresses into A's lower zone
    zb = rs.chain("z-70000").rules
    assert zb[-1] == ({"mangle": {"key": {"ct": {"key": "zone"}},
                                  "value": rs.zones[70000]}},)
    assert len(zb) == 3 and all(r[-1] == {"return": None} for r in zb[:2])
    assert rs.chain("z-10").rules == (({"mangle": {"key": {"ct": {"key": "zone"}},
                                                   "value": 10}},),)
    # only A has an ACL: only A's port jumps to one, both ways
    fwd = rs.chain("forward").rules
    assert fwd[0][-1] == {"accept": None}
    for r, key in ((fwd[1], "iifname"), (fwd[2], "oifname")):
        assert r[0]["vmap"]["key"] == {"meta": {"key": key}}
        assert r[0]["vmap"]["data"]["set"] == [["tapa", {"jump": {"target": "acl-10"}}]]
    acl_a = rs.chain("acl-10").rules
    assert acl_a[-1] == ({"drop": None},)
    assert acl_a[1][-1] == {"return": None}
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                      "right": {"set": ["203.0.113.1", "203.0.113.2"]}}} in acl_a[1]
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                      "right": 5432}} in acl_a[1]


def test_empty_acl_and_no_networks() -> None:
    rs = acl.ruleset(state(with_acl=False))
    assert rs is not None
    assert not any(c.name.startswith("acl-") for c in rs.chains)
    assert len(rs.chain("forward").rules) == 1  # established only: nothing is dropped
    assert acl.ruleset(DatapathState("n1", "192.0.2.1")) is None


def test_rule_shapes() -> None:
    nets = {A: ["198.51.100.0/24"], B: ["203.0.113.0/24", "2001:db8::/64"]}
    # an unknown network can never match: the rule is left out
    assert acl.rule_exprs(rule("d:p:C", A), nets) == []
    # no ethertype: one rule per family that can match; IPv4-only addresses skip IPv6
    both = acl.rule_exprs(rule("any", B, ethertype=""), nets)
    assert [r[0]["match"]["right"] for r in both] == ["ipv4", "ipv6"]
    assert acl.rule_exprs(rule(A, B, ethertype=""), nets)[0][0]["match"]["right"] == "ipv4"
    assert len(acl.rule_exprs(rule(A, B, ethertype=""), nets)) == 1
    # subnet, port range, protocol any with ports, deny
    r = acl.rule_exprs(rule({"subnet": {"ip_prefix": "192.0.2.0", "ip_prefix_len": 28}},
                            "any", dport=(8000, 8100), action="deny"), nets)[0]
    assert r[-1] == {"drop": None}
    assert {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                      "right": {"set": [6, 17, 132]}}} in r
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                      "right": {"prefix": {"addr": "192.0.2.0", "len": 28}}}} in r
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                      "right": {"range": [8000, 8100]}}} in r
    # '<>' (not emitted by the transformer, accepted anyway): both ways
    two = dict(rule(A, B, "17"), direction="<>")
    assert len(acl.rule_exprs(two, nets)) == 2
    # security groups and unexpanded policies in a network ACL match nothing
    assert acl.rule_exprs(rule({"security_group": "5"}, "any"), nets) == []
    assert acl.rule_exprs(rule({"network_policy": "x"}, "any"), nets) == []


def listing(rs: acl.Ruleset) -> list[dict[str, Any]]:
    """What ``nft -j list table`` would show for ``rs`` (expressions as we wrote them)."""
    out: list[dict[str, Any]] = [{"metainfo": {}},
                                 {"table": {"family": "inet", "name": rs.table}}]
    for c in rs.chains:
        ch: dict[str, Any] = {"family": "inet", "table": rs.table, "name": c.name, "handle": 1}
        if c.hook:
            ch.update(type="filter", hook=c.hook, prio=c.prio, policy=c.policy)
        out.append({"chain": ch})
    for c in rs.chains:
        for expr in c.rules:
            out.append({"rule": {"family": "inet", "table": rs.table, "chain": c.name,
                                 "handle": 9, "expr": list(expr),
                                 "comment": acl.rule_comment(expr)}})
    return out


def test_commands_diff() -> None:
    want = acl.ruleset(state())
    assert want is not None
    first = acl.commands(None, want)
    assert first[0] == {"add": {"table": {"family": "inet", "name": "tungsten"}}}
    chain_adds = [i for i, c in enumerate(first) if "chain" in c.get("add", {})]
    rule_adds = [i for i, c in enumerate(first) if "rule" in c.get("add", {})]
    assert max(chain_adds) < min(rule_adds)  # chains exist before rules jump to them
    listed = acl.parse_listing(listing(want), "tungsten")
    assert acl.commands(listed, want) == []  # idempotent
    # foreign objects in the listing are ignored
    extra = [*listing(want), {"chain": {"family": "ip", "table": "other", "name": "x"}}]
    assert acl.commands(acl.parse_listing(extra, "tungsten"), want) == []

    # the ACL goes: its chain is deleted after the dispatch chain is refilled
    nxt = acl.ruleset(state(with_acl=False))
    assert nxt is not None
    cmds = acl.commands(listed, nxt)
    assert {"flush": {"chain": {"family": "inet", "table": "tungsten", "name": "forward"}}
            } in cmds
    assert cmds[-1] == {"delete": {"chain": {"family": "inet", "table": "tungsten",
                                             "name": "acl-10"}}}
    assert not any("z-10" in str(c) for c in cmds)  # unchanged chains are left alone

    # a hand-edited rule (no or another comment) is put right
    edited = listing(want)
    edited[-1]["rule"]["comment"] = "mine"
    assert acl.commands(acl.parse_listing(edited, "tungsten"), want)[0]["flush"]

    # a base chain with another hook or priority: the table is rebuilt in the transaction
    moved = listing(want)
    for o in moved:
        if o.get("chain", {}).get("name") == "zone":
            o["chain"]["prio"] = 0
    cmds = acl.commands(acl.parse_listing(moved, "tungsten"), want)
    assert cmds[0] == {"delete": {"table": {"family": "inet", "name": "tungsten"}}}
    assert len(cmds) == len(first) + 1

    # nothing wanted: the table goes; nothing there and nothing wanted: nothing to do
    assert acl.commands(listed, None) == [{"delete": {"table": {"family": "inet",
                                                                "name": "tungsten"}}}]
    assert acl.commands(None, None) == []
