"""Planning SGs and firewall as nftables (pure): set-based SG chains, element minimisation,
stable plans, and the conntrack re-evaluation's choice of flows."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_security_verdict import DEFAULT_SG, SG_DEFAULT, sg_rule
from tungsten.datapath.base import DatapathState, EndpointInfo, LocalPort, NextHop, Vrf
from tungsten.datapath.linux import acl
from tungsten.datapath.linux.ordered import _overlap, disjoint
from tungsten.datapath.linux.reeval import Flow, doomed, parse
from tungsten.datapath.linux.secrules import security_chains
from tungsten.security.verdict import Side, evaluate

NET = "d:p:a"


def lport(n: int, sgs: tuple[int, ...] = (), tags: tuple[int, ...] = ()) -> LocalPort:
    return LocalPort(f"p{n}", "a", 5, f"02:00:00:00:00:{n:02x}", (f"198.51.100.{n}",),
                     f"tapp{n}", 1450, sgs, tags)


def state(ports: list[LocalPort], groups: dict[int, Any], firewall: dict[str, Any] | None = None,
          remote: dict[str, EndpointInfo] | None = None) -> DatapathState:
    eps = {f"{p.ips[0]}/32": EndpointInfo(NET, p.sgs, p.tags) for p in ports}
    eps.update(remote or {})
    vrf = Vrf("a", NET, 5, {k: (NextHop("local"),) for k in eps}, endpoints=eps)
    return DatapathState("n1", "192.0.2.1", {p.uuid: p for p in ports}, {"a": vrf}, groups,
                         firewall or {})


def many_rules(n: int) -> dict[int, Any]:
    return {1: {"id": 1, "egress": [], "ingress": [
        sg_rule(f"r{i}", {"subnet": {"ip_prefix": f"203.0.{i // 256}.{i % 256}",
                                     "ip_prefix_len": 32}}, proto="6", ports=(80, 80))
        for i in range(n)]}}


def test_sg_chain_is_one_lookup_per_family_whatever_the_rule_count() -> None:
    for n in (1, 1000):
        chains, dispatch, sets = security_chains(state([lport(1, (1,))], many_rules(n)), {})
        by_name = dict(chains)
        # the same chain (a lookup per family, then drop) whatever the rule count
        assert by_name["sg-i-tapp1"] == security_chains(
            state([lport(1, (1,))], many_rules(1)), {})[0][1][1]
        assert len(by_name["sg-i-tapp1"]) == 3
        assert len(dict((name, e) for name, _, e in sets)["sgi4-tapp1"]) == n
    assert [k for k, _ in dispatch] == ["iifname", "oifname"]


def test_default_group_members_expand_and_elements_are_disjoint() -> None:
    members = {f"198.51.100.{i}/32": EndpointInfo(NET, (SG_DEFAULT,)) for i in (7, 8)}
    st = state([lport(1, (SG_DEFAULT,))], {SG_DEFAULT: DEFAULT_SG}, remote=members)
    sets = {name: elems for name, _, elems in security_chains(st, {})[2]}
    assert sorted(e["concat"][1] for e in sets["sgi4-tapp1"]) == [
        "198.51.100.1", "198.51.100.7", "198.51.100.8"]
    assert len(sets["sgo4-tapp1"]) == 1 and len(sets["sgo6-tapp1"]) == 1
    # the kernel refuses an element with a corner inside another: an element inside
    # another vanishes, partial overlaps are cut
    big = ((0, 255), (0, 2**32 - 1), (0, 2**32 - 1), (0, 65535), (0, 65535))
    small = ((6, 6), (1, 1), (0, 2**32 - 1), (0, 65535), (80, 80))
    same = ((6, 6), (1, 1), (0, 2**32 - 1), (0, 65535), (80, 80))
    assert disjoint([big, small, same]) == [big]
    a = ((6, 6), (0, 255), (0, 9), (0, 65535), (0, 65535))
    b = ((6, 6), (0, 65535), (0, 9), (0, 65535), (0, 65535))  # a inside b
    assert disjoint([a, b]) == [b]


span = st.tuples(st.integers(0, 6), st.integers(0, 6)).map(lambda t: (min(t), max(t)))
box = st.tuples(span, span, span, span, span)


@settings(max_examples=200, deadline=None)
@given(boxes=st.lists(box, max_size=12),
       points=st.lists(st.tuples(*[st.integers(0, 6)] * 5), min_size=20, max_size=20))
def test_disjoint_boxes_cover_the_same_points(boxes: list[Any], points: list[Any]) -> None:
    out = disjoint(boxes)
    assert not any(_overlap(x, y) for i, x in enumerate(out) for y in out[i + 1:])

    def covered(bs: list[Any], pt: Any) -> bool:
        return any(all(lo <= v <= hi for v, (lo, hi) in zip(pt, b, strict=True)) for b in bs)

    corners = [tuple(s[0] for s in b) for b in boxes] + [tuple(s[1] for s in b) for b in boxes]
    for pt in [*points, *corners]:
        assert covered(out, pt) == covered(boxes, pt), pt


def test_port_without_groups_or_firewall_rules_gets_no_chain() -> None:
    assert security_chains(state([lport(1)], {}), {}) == ([], [], [])
    empty_sets: dict[str, Any] = {"d": {"uuid": "d", "name": "x:y", "application_tag": None,
                                        "all_applications": True, "policies": []}}
    assert security_chains(state([lport(1)], {}, empty_sets), {}) == ([], [], [])


def _listed(plan: acl.Ruleset) -> acl.Listed:
    return acl.Listed({c.name: (c.spec(), c.digests()) for c in plan.chains},
                      {ns.name: ns.spec() for ns in plan.sets})


def test_plan_is_stable_and_a_change_refills_only_its_chains() -> None:
    fw = {"d": {"uuid": "d", "name": "x:y", "application_tag": None, "all_applications": True,
                "policies": [{"uuid": "p", "name": "p", "sequence": "1", "rules": [
                    {"uuid": "r", "direction": "<>", "action_list": {"simple_action": "pass"},
                     "endpoint_1": {"tags": ["t"], "tag_ids": [9]}, "endpoint_2": {"any": True},
                     "match_tag_types": [], "service": {"protocol_id": 6}}]}]}}
    st = state([lport(1, (SG_DEFAULT,), (9,)), lport(2)], {SG_DEFAULT: DEFAULT_SG}, fw)
    a, b = acl.ruleset(st), acl.ruleset(st)
    assert a is not None and b is not None and a == b
    names = {c.name for c in a.chains}
    assert {"sg-i-tapp1", "sg-o-tapp1", "fw-o-tapp1", "fw-i-tapp1", "fw-o-tapp2"} <= names
    installed = {ns.name: ns.by_key() for ns in a.sets}
    assert acl.commands(_listed(a), b, installed=installed) == []
    # without knowing the elements (a restarted agent), the sets are reloaded, nothing else
    reload = acl.commands(_listed(a), b)
    assert {next(iter(c)) for c in reload} == {"flush", "add"}
    assert all("set" in c.get("flush", {}) or "element" in c.get("add", {}) for c in reload)
    st2 = state([lport(1, (SG_DEFAULT,), (9,)), lport(2, (), (9,))],
                {SG_DEFAULT: DEFAULT_SG}, fw)
    c = acl.ruleset(st2)
    assert c is not None
    cmds = acl.commands(_listed(a), c, installed=installed)
    # p2's tag changes what its firewall sets hold: element deltas only, no chain is
    # flushed; p1 (tagged: its `<>` rule already admits anything it exchanges) is untouched
    assert cmds and all("element" in next(iter(cmd.values())) for cmd in cmds)
    touched = {next(iter(cmd.values()))["element"]["name"] for cmd in cmds}
    assert {n.split("-", 1)[1] for n in touched} == {"tapp2"}
    assert all(n.startswith("fw") for n in touched)


def test_a_member_joining_changes_set_elements_only() -> None:
    groups = {SG_DEFAULT: DEFAULT_SG}
    before = acl.ruleset(state([lport(1, (SG_DEFAULT,))], groups))
    after = acl.ruleset(state([lport(1, (SG_DEFAULT,))], groups, remote={
        "198.51.100.9/32": EndpointInfo(NET, (SG_DEFAULT,))}))
    assert before is not None and after is not None
    installed = {ns.name: ns.by_key() for ns in before.sets}
    cmds = acl.commands(_listed(before), after, installed=installed)
    assert cmds == [{"add": {"element": {"family": "inet", "table": "tungsten",
                                         "name": "sgi4-tapp1", "elem": [
                                             {"concat": [{"range": [0, 255]}, "198.51.100.9",
                                                         {"prefix": {"addr": "0.0.0.0",
                                                                     "len": 0}},
                                                         {"range": [0, 65535]},
                                                         {"range": [0, 65535]}]}]}}}]
    back = acl.commands(_listed(after), before,
                        installed={ns.name: ns.by_key() for ns in after.sets})
    assert [next(iter(c)) for c in back] == ["delete"]


CONNTRACK = """\
ipv4     2 tcp      6 431999 ESTABLISHED src=198.51.100.1 dst=198.51.100.2 sport=40000 \
dport=22 src=198.51.100.2 dst=198.51.100.1 sport=22 dport=40000 [ASSURED] mark=0 zone=5 use=1
ipv4     2 icmp     1 29 src=198.51.100.2 dst=198.51.100.1 type=8 code=0 id=7 src=198.51.100.1 \
dst=198.51.100.2 type=0 code=0 id=7 mark=0 zone=5 use=1
ipv4     2 udp      17 20 src=192.0.2.9 dst=192.0.2.1 sport=1 dport=2 [UNREPLIED] src=192.0.2.1 \
dst=192.0.2.9 sport=2 dport=1 mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.
"""


def test_parse_conntrack_listing() -> None:
    assert parse(CONNTRACK) == [Flow(6, "198.51.100.1", "198.51.100.2", 40000, 22, 5),
                                Flow(1, "198.51.100.2", "198.51.100.1", 0, 0, 5),
                                Flow(17, "192.0.2.9", "192.0.2.1", 1, 2, 0)]


def test_doomed_flows_are_those_the_local_gates_now_deny() -> None:
    groups = {SG_DEFAULT: DEFAULT_SG}
    st = state([lport(1, (SG_DEFAULT,)), lport(2, (SG_DEFAULT,))], groups)
    flows = parse(CONNTRACK)
    assert doomed(st, {5: 5}, flows) == []  # members of one default group: all allowed
    st = state([lport(1, (SG_DEFAULT,)), lport(2, (1,))], {**groups, 1: {"id": 1}})
    # p2 left the group: its ssh from p1 and its ping to p1 are both denied now; the
    # underlay flow is not ours
    assert doomed(st, {5: 5}, flows) == flows[:2]


# --- malformed rules: both backends agree that they match nothing, nothing crashes ----------

_junk_ports: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.just({}),
    st.fixed_dictionaries({"start_port": st.integers(-5, 70000),
                           "end_port": st.integers(-5, 70000)}),
    st.just({"start_port": "x", "end_port": None}))
_junk_addr: st.SearchStrategy[Any] = st.one_of(
    st.just({"virtual_network": "any"}), st.just({"security_group": "bogus"}),
    st.fixed_dictionaries({"subnet": st.fixed_dictionaries({
        "ip_prefix": st.sampled_from(["198.51.100.0", "300.1.1.1", "::", "x"]),
        "ip_prefix_len": st.integers(-1, 200)})}))
_junk_proto = st.sampled_from(["any", "tcp", "6", "999", "bogus", "", "58"])


@st.composite
def junk_acl_rule(draw: st.DrawFn) -> dict[str, Any]:
    return {"rule_uuid": "j", "direction": draw(st.sampled_from([">", "<>", "?"])),
            "action_list": {"simple_action": draw(st.sampled_from(["pass", "deny"]))},
            "match_condition": {"protocol": draw(_junk_proto),
                                "ethertype": draw(st.sampled_from(["IPv4", "IPv6", "IPX",
                                                                   None])),
                                "src_address": draw(_junk_addr), "src_port": draw(_junk_ports),
                                "dst_address": draw(_junk_addr),
                                "dst_port": draw(_junk_ports)}}


@st.composite
def junk_fw_rule(draw: st.DrawFn) -> dict[str, Any]:
    ep = st.one_of(st.just({"any": True}), st.just({"tags": ["x"], "tag_ids": ["nope"]}),
                   st.just({"address_group": "g", "address_group_prefixes": ["1.2.3.4/99",
                                                                             "10.0.0.0/8"]}),
                   st.just({"subnet": {"ip_prefix": "bad", "ip_prefix_len": 8}}))
    return {"uuid": "f", "direction": draw(st.sampled_from([">", "<", "<>", "x"])),
            "action_list": {"simple_action": "pass"}, "endpoint_1": draw(ep),
            "endpoint_2": draw(ep), "match_tag_types": draw(st.sampled_from([[], ["z"]])),
            "service": {"protocol_id": draw(st.sampled_from([0, 6, 300, None])),
                        "src_ports": draw(_junk_ports), "dst_ports": draw(_junk_ports)}}


def _walk(obj: Any) -> Any:
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)


@settings(max_examples=150, deadline=None)
@given(acls=st.lists(junk_acl_rule(), max_size=3), sgs=st.lists(junk_acl_rule(), max_size=3),
       fws=st.lists(junk_fw_rule(), max_size=3))
def test_malformed_rules_compile_to_valid_nft_and_match_nothing_bad(
        acls: list[dict[str, Any]], sgs: list[dict[str, Any]],
        fws: list[dict[str, Any]]) -> None:
    fw = {"d": {"uuid": "d", "name": "x:y", "application_tag": None, "all_applications": True,
                "policies": [{"uuid": "p", "name": "p", "sequence": "1", "rules": fws}]}}
    groups = {1: {"id": 1, "ingress": sgs, "egress": sgs}}
    p1, p2 = lport(1, (1,)), lport(2, (1,))
    st_ = state([p1, p2], groups, fw)
    st_ = DatapathState(st_.node, st_.underlay_ip, st_.ports,
                        {"a": Vrf("a", NET, 5, st_.vrfs["a"].routes, acl=tuple(acls),
                                  endpoints=st_.vrfs["a"].endpoints)},
                        groups, fw)
    plan = acl.ruleset(st_)  # never raises
    assert plan is not None
    for node in _walk([c.rules for c in plan.chains]):
        rng = node.get("range")
        if isinstance(rng, list) and all(isinstance(x, int) for x in rng):
            assert 0 <= rng[0] <= rng[1] <= 65535, rng
        m = node.get("match")
        if m and m["left"] == {"meta": {"key": "l4proto"}} and isinstance(m["right"], int):
            assert 0 <= m["right"] <= 255
    for proto in (1, 6, 17):  # and the core evaluates without raising
        evaluate(proto, ipaddress.ip_address("198.51.100.1"), 1000,
                 ipaddress.ip_address("198.51.100.2"), 80, Side(st_, p1), Side(st_, p2))


def test_reevaluation_is_limited_to_ports_whose_rules_changed() -> None:
    from tungsten.datapath.linux.acl import _changed_devices

    t = {"family": "inet", "table": "tungsten"}
    assert _changed_devices([{"delete": {"element": {**t, "name": "sgi4-tapp2", "elem": []}}},
                             {"flush": {"chain": {**t, "name": "fw-o-tapp1"}}},
                             {"add": {"rule": {**t, "chain": "fw-o-tapp1", "expr": []}}}]
                            ) == {"tapp1", "tapp2"}
    assert _changed_devices([{"flush": {"chain": {**t, "name": "acl-5"}}}]) is None
    assert _changed_devices([{"add": {"element": {**t, "name": "fwo4d3-tap-x", "elem": []}}},
                             {"add": {"element": {**t, "name": "acl4p0-5", "elem": []}}}]
                            ) is None  # an ACL set is the network's: every flow is judged
    assert _changed_devices([{"add": {"element": {**t, "name": "fwi6p12-tapp3",
                                                  "elem": []}}}]) == {"tapp3"}
    assert _changed_devices([{"delete": {"table": {"family": "inet", "name": "x"}}}]) is None
    st = state([lport(1, (1,)), lport(2, (1,))], {1: {"id": 1}})
    flows = parse(CONNTRACK)
    assert doomed(st, {5: 5}, flows, devices={"tapp9"}) == []
    assert doomed(st, {5: 5}, flows, devices={"tapp2"}) == flows[:2]


def test_firewall_chain_is_one_lookup_per_run_whatever_the_rule_count() -> None:
    def fw(n: int, action: str) -> dict[str, Any]:
        rules = [{"uuid": f"r{i}", "direction": ">", "action_list": {"simple_action": action},
                  "endpoint_1": {"any": True},
                  "endpoint_2": {"address_group": "g", "address_group_prefixes": [
                      f"203.0.{i // 256 % 256}.{i % 256}/32"]},
                  "service": {"protocol_id": 6, "dst_ports": {"start_port": 80 + i % 7,
                                                              "end_port": 80 + i % 7}}}
                 for i in range(n)]
        rules.append({"uuid": "last", "direction": "<>", "endpoint_1": {"any": True},
                      "endpoint_2": {"any": True}, "action_list": {"simple_action": "deny"}})
        return {"d": {"uuid": "d", "name": "x:y", "application_tag": None,
                      "all_applications": True,
                      "policies": [{"uuid": "p", "name": "p", "sequence": "1",
                                    "rules": rules}]}}

    shapes: set[str] = set()
    for n in (1, 100, 10_000):
        chains, _, sets = security_chains(state([lport(1)], {}, fw(n, "pass")), {})
        chain = dict(chains)["fw-o-tapp1"]
        # (pass run, deny run) x (v4, v6), then drop; the names of the sets differ not
        assert len(chain) == 5
        shapes.add(str(chain))
        assert len(dict((name, e) for name, _, e in sets)["fwo4p0-tapp1"]) == n
    assert len(shapes) == 1


def test_changes_that_deny_nothing_new_skip_the_reevaluation() -> None:
    from tungsten.datapath.linux.acl import _only_widens

    t = {"family": "inet", "table": "tungsten"}

    def elem(verb: str, name: str) -> dict[str, Any]:
        return {verb: {"element": {**t, "name": name, "elem": []}}}

    # admitting more, or denying less: an admitted flow stays admitted
    assert _only_widens([elem("add", "sgi4-tapp1"), elem("add", "fwo4p0-tapp1"),
                         elem("add", "acl6p2-5"), elem("delete", "fwi4d1-tapp1"),
                         elem("delete", "acl4d1-5")])
    for narrowing in (elem("delete", "sgi4-tapp1"), elem("delete", "acl4p0-5"),
                      elem("add", "fwo4d1-tapp1"), elem("add", "acl4d3-5"),
                      {"flush": {"chain": {**t, "name": "fw-o-tapp1"}}}):
        assert not _only_widens([elem("add", "sgi4-tapp1"), narrowing]), narrowing


def test_only_flows_inside_changed_elements_are_judged_again() -> None:
    from tungsten.datapath.linux.acl import _affected

    t = {"family": "inet", "table": "tungsten"}
    gone = {"concat": [6, "198.51.100.1", {"prefix": {"addr": "198.51.100.0", "len": 30}},
                       {"range": [0, 65535]}, 22]}
    cmds = [{"delete": {"element": {**t, "name": "sgi4-tapp1", "elem": [gone]}}}]
    hit = _affected(cmds)
    assert hit is not None
    assert hit(Flow(6, "198.51.100.1", "198.51.100.2", 40000, 22, 5))
    assert not hit(Flow(6, "198.51.100.1", "198.51.100.2", 40000, 80, 5))  # another port
    assert not hit(Flow(6, "198.51.100.1", "198.51.100.9", 40000, 22, 5))  # another host
    assert not hit(Flow(17, "198.51.100.1", "198.51.100.2", 40000, 22, 5))
    icmp = {"concat": [1, "198.51.100.1", "198.51.100.2", {"range": [0, 65535]}, 0]}
    # a protocol without ports: its port fields say nothing, the flow is judged
    assert _affected([{"add": {"element": {**t, "name": "acl4d1-5", "elem": [icmp]}}}]
                     )(Flow(1, "198.51.100.1", "198.51.100.2", 0, 0, 5))  # type: ignore[misc]
    # anything but elements (a chain refilled): every flow may be concerned
    assert _affected([*cmds, {"flush": {"chain": {**t, "name": "fw-o-tapp1"}}}]) is None
