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
    # the ACL (pass, pass, deny): a run of two pass rules, a run of one deny, a set
    # lookup per run and family, then drop
    acl_a = rs.chain("acl-10").rules
    assert acl_a[-1] == ({"drop": None},)
    assert [(r[1]["match"]["right"], r[-1]) for r in acl_a[:-1]] == [
        ("@acl4p0-10", {"return": None}), ("@acl6p0-10", {"return": None}),
        ("@acl4d1-10", {"drop": None}), ("@acl6d1-10", {"drop": None})]
    sets = {ns.name: ns.elements for ns in rs.sets}
    assert sets["acl6p0-10"] == () and len(sets["acl4d1-10"]) == 1
    a_to_b = {"concat": [6, "198.51.100.1", {"range": ["203.0.113.1", "203.0.113.2"]},
                         {"range": [0, 65535]}, 5432]}
    a_to_a = {"concat": [{"range": [0, 255]}, "198.51.100.1", "198.51.100.1",
                         {"range": [0, 65535]}, {"range": [0, 65535]}]}
    assert sorted(map(str, sets["acl4p0-10"])) == sorted(map(str, [a_to_b, a_to_a]))


def test_ordered_rules_cost_one_lookup_per_run_whatever_their_count() -> None:
    nets = {A: ["198.51.100.0/24"]}

    def host(i: int) -> dict[str, Any]:
        return {"subnet": {"ip_prefix": f"203.0.{i // 256 % 256}.{i % 256}",
                           "ip_prefix_len": 32}}

    for n in (1, 100, 10_000):
        rules = [rule(A, host(i), "6", (1000 + i % 50, 1000 + i % 50)) for i in range(n)]
        chain, sets = acl.acl_chain(10, [*rules, rule("any", "any", action="deny")], nets)
        assert len(chain) == 5  # (pass run, deny run) x (v4, v6), drop
        assert sum(len(e) for name, _, e in sets if name == "acl4p0-10") == min(n, 256 * 50)
    # alternating actions: a lookup per change of action, and order is kept
    mixed = [rule(A, host(i), action="deny" if i % 2 else "pass") for i in range(6)]
    chain, _ = acl.acl_chain(10, mixed, nets)
    assert len(chain) == 2 * 6 + 1
    # a logged rule stays a rule of its own and ends the run
    logged = dict(rule(A, host(1)), action_list={"simple_action": "pass", "log": True})
    chain, _ = acl.acl_chain(10, [rule(A, host(0)), logged, rule(A, host(2))], nets)
    assert len(chain) == 2 + 1 + 2 + 1 and any("log" in e for e in chain[2])


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
    for ns in rs.sets:
        out.append({"set": {"family": "inet", "table": rs.table, "name": ns.name,
                            "type": list(ns.type), "flags": list(ns.flags)}})
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
    installed = {ns.name: ns.by_key() for ns in want.sets}
    assert acl.commands(listed, want, installed=installed) == []  # idempotent
    # foreign objects in the listing are ignored
    extra = [*listing(want), {"chain": {"family": "ip", "table": "other", "name": "x"}}]
    assert acl.commands(acl.parse_listing(extra, "tungsten"), want, installed=installed) == []

    # the ACL goes: its chain is deleted after the dispatch chain is refilled
    nxt = acl.ruleset(state(with_acl=False))
    assert nxt is not None
    cmds = acl.commands(listed, nxt)
    assert {"flush": {"chain": {"family": "inet", "table": "tungsten", "name": "forward"}}
            } in cmds
    assert {"delete": {"chain": {"family": "inet", "table": "tungsten", "name": "acl-10"}}
            } in cmds
    # its sets go after the chain that used them
    assert cmds[-1] == {"delete": {"set": {"family": "inet", "table": "tungsten",
                                           "name": "acl6p0-10"}}}
    assert not any("z-10" in str(c) for c in cmds)  # unchanged chains are left alone

    # a hand-edited rule (no or another comment) is put right
    edited = listing(want)
    edited[-1]["rule"]["comment"] = "mine"
    assert acl.commands(acl.parse_listing(edited, "tungsten"), want,
                        installed=installed)[0]["flush"]["chain"]

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


def test_compiled_rules_are_reused_only_for_the_same_rule_and_context() -> None:
    nets = {A: ["198.51.100.0/24"]}
    rules = [rule(A, "any", "6", (80, 80)), rule("any", "any", action="deny")]
    _, first = acl.acl_chain(10, rules, nets)
    _, again = acl.acl_chain(10, [dict(r) for r in rules], nets)  # equal content, new dicts
    assert again == first
    # a changed rule, or the same rule where the network resolves elsewhere: recompiled
    _, port = acl.acl_chain(10, [rule(A, "any", "6", (81, 81)), rules[1]], nets)
    _, moved = acl.acl_chain(10, rules, {A: ["203.0.113.0/24"]})
    for other in (port, moved):
        assert dict((n, e) for n, _, e in other)["acl4p0-10"] != dict(
            (n, e) for n, _, e in first)["acl4p0-10"]
    assert "203.0.113.0" in str(moved) and "203.0.113.0" not in str(first)
