"""The security-group planning memo (``secrules.SecurityPlans``) and the incremental join of
boxes (``ordered.disjoint_update``): a memoised plan is always the plan from scratch, and a
change re-plans what depends on it and nothing else."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_security_verdict import sg_rule
from tungsten.datapath.base import DatapathState, EndpointInfo, LocalPort, NextHop, Vrf
from tungsten.datapath.linux import acl, ordered
from tungsten.datapath.linux.ordered import (
    Box,
    Elements,
    Memo,
    disjoint,
    disjoint_update,
    elem_key,
    elements,
)
from tungsten.datapath.linux.secrules import (
    SecurityPlans,
    VrfAddresses,
    security_chains,
    sg_elements,
)

NET = "d:p:a"
OTHER = "d:p:b"  # a network name the rules may name (resolved through networks_of)


def port(n: int, sgs: tuple[int, ...], tags: tuple[int, ...] = ()) -> LocalPort:
    return LocalPort(f"p{n}", "a", 5, f"02:00:00:00:00:{n:02x}", (f"198.51.100.{n}",),
                     f"tapp{n}", 1450, sgs, tags)


def make_state(ports: list[LocalPort], groups: dict[int, Any],
               remote: dict[str, tuple[int, ...]], firewall: dict[str, Any] | None = None,
               remote_tags: dict[str, tuple[int, ...]] | None = None) -> DatapathState:
    eps = {f"{p.ips[0]}/32": EndpointInfo(NET, p.sgs, p.tags) for p in ports}
    eps.update({k: EndpointInfo(NET, v, (remote_tags or {}).get(k, ()))
                for k, v in remote.items()})
    vrf = Vrf("a", NET, 5, {k: (NextHop("local"),) for k in eps}, endpoints=eps)
    return DatapathState("n1", "192.0.2.1", {p.uuid: p for p in ports}, {"a": vrf}, groups,
                         firewall or {})


APP_A, APP_B, TIER = (1 << 16) | 31, (1 << 16) | 32, (2 << 16) | 31  # tags (type << 16 | id)


# --- rules, groups and changes drawn at random ----------------------------------------------

remotes = st.one_of(
    st.builds(lambda g: {"security_group": str(g)}, st.integers(1, 4)),
    st.builds(lambda i, n: {"subnet": {"ip_prefix": f"203.0.113.{i}", "ip_prefix_len": n}},
              st.integers(0, 255), st.sampled_from([24, 28, 32])),
    st.just({"virtual_network": OTHER}),
    st.just({"subnet": {"ip_prefix": "2001:db8::", "ip_prefix_len": 64}}),
    st.just({"virtual_network": "any"}))
rules = st.builds(
    lambda u, r, proto, ports, eth, ingress, deny: {
        **sg_rule(u, r, proto, ports, eth, ingress),
        **({"action_list": {"simple_action": "deny"}} if deny else {})},
    st.text("abc", min_size=1, max_size=3), remotes, st.sampled_from(["any", "6", "17", "1"]),
    st.one_of(st.none(), st.tuples(st.integers(1, 90), st.integers(90, 100))),
    st.sampled_from(["IPv4", "IPv6", ""]), st.booleans(), st.booleans())
endpoints = st.one_of(
    st.just({"any": True}), st.just({"virtual_network": OTHER}),
    st.builds(lambda t: {"tags": ["t"], "tag_ids": list(t)},
              st.lists(st.sampled_from([APP_A, APP_B, TIER]), min_size=1, max_size=2)),
    st.builds(lambda i: {"subnet": {"ip_prefix": f"203.0.113.{i}", "ip_prefix_len": 32}},
              st.integers(0, 12)),
    st.just({"address_group": "g", "address_group_prefixes": ["203.0.113.0/28"]}))
fw_rules = st.builds(
    lambda u, e1, e2, d, action, match, proto: {
        "uuid": u, "direction": d, "action_list": {"simple_action": action},
        "endpoint_1": e1, "endpoint_2": e2, "match_tag_types": match,
        "service": {"protocol_id": proto}},
    st.text("xyz", min_size=1, max_size=3), endpoints, endpoints,
    st.sampled_from(["<>", ">", "<"]), st.sampled_from(["pass", "deny"]),
    st.sampled_from([[], [1]]), st.sampled_from([6, 17, 0]))
def fw_rule(u: str, remote: dict[str, Any], action: str, match: list[int] | None = None,
            proto: int = 6) -> dict[str, Any]:
    return {"uuid": u, "direction": "<>", "action_list": {"simple_action": action},
            "endpoint_1": {"any": True}, "endpoint_2": remote, "match_tag_types": match or [],
            "service": {"protocol_id": proto}}


changes = st.one_of(
    st.tuples(st.just("add-fw"), st.integers(0, 9), fw_rules),
    st.tuples(st.just("drop-fw"), st.integers(0, 9), st.just(None)),
    st.tuples(st.just("port-tags"), st.integers(1, 3),
              st.lists(st.sampled_from([APP_A, APP_B, TIER]), max_size=2)),
    st.tuples(st.just("remote-tags"), st.integers(1, 12),
              st.lists(st.sampled_from([APP_A, APP_B, TIER]), max_size=2)),
    st.tuples(st.just("add-rule"), st.integers(1, 4), rules),
    st.tuples(st.just("drop-rule"), st.integers(1, 4), st.integers(0, 5)),
    st.tuples(st.just("join"), st.integers(1, 12), st.integers(1, 4)),
    st.tuples(st.just("leave"), st.integers(1, 12), st.integers(1, 4)),
    st.tuples(st.just("port-sgs"), st.integers(1, 3),
              st.lists(st.integers(1, 4), max_size=2)),
    st.tuples(st.just("network"), st.integers(0, 3), st.just(None)),
    st.tuples(st.just("unrelated"), st.integers(1, 12), st.just(None)))


class World:
    """A state changed step by step, rebuilt from plain data each time (as the agent
    rebuilds its ``DatapathState`` on every apply)."""

    def __init__(self) -> None:
        self.groups: dict[int, dict[str, list[Any]]] = {
            g: {"ingress": [sg_rule(f"peer{g}", {"security_group": str(g % 4 + 1)})],
                "egress": [sg_rule(f"out{g}", {"virtual_network": "any"}, ingress=False)]}
            for g in range(1, 5)}
        self.port_sgs = {1: (1,), 2: (1,), 3: (2, 3)}
        self.remote: dict[str, tuple[int, ...]] = {"203.0.113.7/32": (2,)}
        self.other: tuple[str, ...] = ("192.0.2.0/28",)
        self.routes: list[str] = []
        # rules reading tagged addresses, a network and every host's tags
        self.fw: list[dict[str, Any]] = [
            fw_rule("t", {"tags": ["t"], "tag_ids": [APP_B]}, "deny"),
            fw_rule("m", {"any": True}, "pass", [1]),
            fw_rule("n", {"virtual_network": OTHER}, "deny"),
            fw_rule("all", {"any": True}, "pass")]
        self.port_tags: dict[int, tuple[int, ...]] = {1: (APP_A,), 2: (APP_B,)}
        self.remote_tags: dict[str, tuple[int, ...]] = {}

    def change(self, c: tuple[str, int, Any]) -> None:
        kind, n, arg = c
        if kind == "add-rule":
            self.groups[n]["ingress" if n % 2 else "egress"].append(arg)
        elif kind == "drop-rule":
            rs = self.groups[n]["ingress"]
            if rs:
                del rs[arg % len(rs)]
        elif kind in ("join", "leave"):
            key = f"203.0.113.{n}/32"
            have = set(self.remote.get(key, ()))
            have = have | {arg} if kind == "join" else have - {arg}
            self.remote[key] = tuple(sorted(have))
        elif kind == "port-sgs":
            self.port_sgs[n] = tuple(arg)
        elif kind == "add-fw":
            self.fw.insert(n % (len(self.fw) + 1), arg)
        elif kind == "drop-fw":
            if self.fw:
                del self.fw[n % len(self.fw)]
        elif kind == "port-tags":
            self.port_tags[n] = tuple(arg)
        elif kind == "remote-tags":
            key = f"203.0.113.{n}/32"
            self.remote.setdefault(key, ())
            self.remote_tags[key] = tuple(arg)
        elif kind == "network":
            self.other = tuple(f"192.0.2.{16 * i}/28" for i in range(n))
        else:
            self.routes.append(f"198.18.0.{n}/32")

    def state(self) -> DatapathState:
        groups = {g: {"id": g, "ingress": list(v["ingress"]), "egress": list(v["egress"])}
                  for g, v in self.groups.items()}
        fw = {"d": {"uuid": "d", "name": "x:y", "application_tag": None,
                    "all_applications": True, "policies": [
                        {"uuid": "p", "name": "p", "sequence": "1",
                         "rules": [dict(r) for r in self.fw]}]}} if self.fw else {}
        return make_state([port(n, sgs, self.port_tags.get(n, ()))
                           for n, sgs in sorted(self.port_sgs.items())], groups,
                          {**{r: () for r in self.routes}, **self.remote}, fw,
                          self.remote_tags)

    def networks(self) -> dict[str, dict[str, tuple[str, ...]]]:
        return {"a": {OTHER: self.other}}


@settings(max_examples=80, deadline=None)
@given(steps=st.lists(changes, min_size=1, max_size=12))
def test_memoised_plans_are_the_plans_from_scratch(steps: list[tuple[str, int, Any]]) -> None:
    world, plans = World(), SecurityPlans()
    for step in [("unrelated", 0, None), *steps]:
        world.change(step)
        st_, nets = world.state(), world.networks()
        memo = security_chains(st_, nets, plans)
        # from scratch: no memo at all (the compiled runs' elements are memoised globally
        # by their steps' keys: forgotten, so a key missing an input would show)
        ordered._RUN_ELEMENTS.data.clear()
        assert memo == security_chains(st_, nets, SecurityPlans(0))
        # and both are the reference planner's elements, set by set
        where = VrfAddresses(st_.vrfs["a"], nets["a"])
        sets = {name: elems for name, _, elems in memo[2]}
        for p in st_.ports.values():
            if not p.sgs:
                continue
            for direction, short in (("ingress", "i"), ("egress", "o")):
                ref = sg_elements(p, direction, st_.security_groups, where)
                for version in (4, 6):
                    assert list(sets[f"sg{short}{version}-{p.ifname}"]) == ref[version]
        # the whole table too, and its diff against the previous plan is what planning from
        # scratch gives
        assert acl.ruleset(st_, plans=plans) == acl.ruleset(st_, plans=SecurityPlans(0))


span = st.tuples(st.integers(0, 9), st.integers(0, 9)).map(lambda t: (min(t), max(t)))
box = st.tuples(span, span, span, span, span)


@settings(max_examples=300, deadline=None)
@given(before=st.lists(box, max_size=10), added=st.lists(box, max_size=3),
       dropped=st.lists(st.integers(0, 9), max_size=3))
def test_the_incremental_join_is_the_join(before: list[Box], added: list[Box],
                                          dropped: list[int]) -> None:
    old = frozenset(before)
    gone = {sorted(old)[i % len(old)] for i in dropped} if old else set()
    new = frozenset((old - gone) | set(added))
    last = (old, disjoint(old))
    assert disjoint_update(last, new) == (new, disjoint(new))
    assert disjoint_update(None, new) == (new, disjoint(new))


def test_a_box_that_overlaps_nothing_is_added_and_removed_without_a_new_join() -> None:
    far = ((6, 6), (100, 100), (0, 9), (0, 65535), (80, 80))
    a = ((6, 6), (0, 10), (0, 9), (0, 65535), (0, 65535))
    b = ((6, 6), (5, 20), (0, 9), (0, 65535), (0, 65535))  # overlaps a: cut
    last = (frozenset({a, b}), disjoint({a, b}))
    grown = disjoint_update(last, frozenset({a, b, far}))
    assert grown[1] == sorted([*last[1], far]) == disjoint({a, b, far})
    assert disjoint_update(grown, frozenset({a, b}))[1] == last[1]
    # an added box that overlaps one held: joined again from scratch
    inside = ((6, 6), (3, 3), (0, 9), (0, 65535), (80, 80))
    assert disjoint_update(last, frozenset({a, b, inside}))[1] == disjoint({a, b, inside})


def test_a_remote_groups_members_invalidate_the_sets_of_the_groups_naming_it() -> None:
    groups = {
        1: {"id": 1, "ingress": [sg_rule("r1", {"security_group": "2"}),
                                 sg_rule("web", {"subnet": {"ip_prefix": "203.0.113.0",
                                                            "ip_prefix_len": 24}},
                                         "6", (80, 80))], "egress": []},
        3: {"id": 3, "ingress": [sg_rule("r3", {"security_group": "3"})], "egress": []}}
    ports = [port(1, (1,)), port(2, (1,)), port(3, (3,))]
    plans = SecurityPlans()

    def plan(remote: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        return {name: e for name, _, e in security_chains(
            make_state(ports, groups, remote), {}, plans)[2]}

    before = plan({"192.0.2.9/32": (2,)})
    assert before["sgi4-tapp1"] is before["sgi4-tapp2"]  # same groups: one plan, shared
    compiled = len(plans.rules.data)
    after = plan({"192.0.2.9/32": (2,), "192.0.2.10/32": (2,)})  # a member joins group 2
    # the ports of group 1 (naming group 2) admit the new member; group 3's are untouched
    src = [e["concat"][1] for e in after["sgi4-tapp1"]]
    assert len(src) == 3 and "192.0.2.10" in src and "192.0.2.9" in src
    assert [e["concat"][1] for e in before["sgi4-tapp1"]].count("192.0.2.10") == 0
    assert after["sgi4-tapp1"] is after["sgi4-tapp2"]
    assert after["sgi4-tapp3"] is before["sgi4-tapp3"]
    # only the rule naming group 2 was compiled again, not the other rule of group 1
    assert len(plans.rules.data) == compiled + 1
    # a member of a group no rule names changes nothing: every set is reused as it was
    again = plan({"192.0.2.9/32": (2,), "192.0.2.10/32": (2,), "192.0.2.11/32": (4,)})
    assert all(again[k] is after[k] for k in after)
    # group 3 names itself: its members are its sets' input
    joined = plan({"192.0.2.9/32": (2,), "192.0.2.10/32": (2,), "192.0.2.11/32": (3,)})
    assert joined["sgi4-tapp3"] != after["sgi4-tapp3"]
    assert joined["sgi4-tapp1"] is after["sgi4-tapp1"]


def test_a_changed_rule_replans_only_the_ports_of_its_group() -> None:
    def groups(port_80: int) -> dict[int, Any]:
        return {1: {"id": 1, "ingress": [sg_rule("a", {"virtual_network": "any"}, "6",
                                                 (port_80, port_80))], "egress": []},
                2: {"id": 2, "ingress": [sg_rule("b", {"virtual_network": "any"}, "17",
                                                 (53, 53))], "egress": []}}

    plans = SecurityPlans()
    ports = [port(1, (1,)), port(2, (2,))]
    a = {n: e for n, _, e in security_chains(make_state(ports, groups(80), {}), {}, plans)[2]}
    b = {n: e for n, _, e in security_chains(make_state(ports, groups(81), {}), {}, plans)[2]}
    assert a["sgi4-tapp1"] != b["sgi4-tapp1"]
    assert b["sgi4-tapp2"] is a["sgi4-tapp2"]
    # an equal state rebuilt from scratch (new objects) reuses every set
    c = {n: e for n, _, e in security_chains(make_state(ports, groups(81), {}), {}, plans)[2]}
    assert all(c[k] is b[k] for k in b)


def test_reused_sets_diff_to_nothing_and_keys_are_the_diffs_keys() -> None:
    groups = {1: {"id": 1, "ingress": [sg_rule("r", {"security_group": "1"})], "egress": []}}
    st_ = make_state([port(1, (1,)), port(2, (1,))], groups, {})
    plans = SecurityPlans()
    a, b = acl.ruleset(st_, plans=plans), acl.ruleset(st_, plans=plans)
    assert a is not None and b is not None and a == b
    listed = acl.Listed({c.name: (c.spec(), c.digests()) for c in a.chains},
                        {ns.name: ns.spec() for ns in a.sets})
    installed = {ns.name: ns.by_key() for ns in a.sets}
    assert acl.commands(listed, b, installed=installed) == []
    copied = {k: dict(v) for k, v in installed.items()}  # a restarted agent's listing
    assert acl.commands(listed, b, installed=copied) == []
    for ns in b.sets:
        assert ns.by_key() == {elem_key(e): e for e in ns.elements}


def test_elements_and_memo_basics() -> None:
    b = ((6, 6), (1, 1), (0, 2**32 - 1), (0, 65535), (80, 80))
    e = elements([b], 4)
    assert isinstance(e, Elements) and e == tuple(e) and len(e.by_key) == 1
    assert elements([], 6) == () and elements([], 6).by_key == {}
    calls: list[int] = []

    def make() -> int:
        calls.append(1)
        return len(calls)

    off = Memo(0)
    assert off.get("k", make) == 1 and off.get("k", make) == 2 and off.data == {}
    small = Memo(4)
    for k in range(10):
        small.get(k, make)
    assert len(small.data) <= 4 and 9 in small.data


def test_a_firewall_chain_is_reused_until_what_its_rules_read_changes() -> None:
    fw = {"d": {"uuid": "d", "name": "x:y", "application_tag": None, "all_applications": True,
                "policies": [{"uuid": "p", "name": "p", "sequence": "1", "rules": [
                    fw_rule("t", {"tags": ["t"], "tag_ids": [APP_B]}, "deny"),
                    fw_rule("all", {"any": True}, "pass")]}]}}
    plans = SecurityPlans()
    ports = [port(1, (), (APP_A,))]

    def plan(remote_tags: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        st_ = make_state(ports, {}, {k: () for k in remote_tags}, fw, remote_tags)
        return {n: e for n, _, e in security_chains(st_, {}, plans)[2]}

    a = plan({"203.0.113.1/32": ()})
    b = plan({"203.0.113.1/32": (), "203.0.113.2/32": (APP_A,)})  # nothing tagged APP_B
    assert all(b[k] is a[k] for k in a)
    c = plan({"203.0.113.1/32": (APP_B,), "203.0.113.2/32": (APP_A,)})  # tagged now
    denied = [e["concat"][2] for e in c["fwo4d0-tapp1"]]
    assert "203.0.113.1" in denied and "203.0.113.1" not in [
        e["concat"][2] for e in a["fwo4d0-tapp1"]]
