"""The security evaluation core: network policy, security groups and firewall gates."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tungsten.datapath.base import DatapathState, EndpointInfo, LocalPort, NextHop, Vrf
from tungsten.security.verdict import (
    Endpoint,
    Side,
    acl_decision,
    evaluate,
    firewall_decision,
    firewall_rules,
    fw_rule_matches,
    policy_sets,
    proto_number,
    sg_decision,
)

NET_A, NET_B = "d:p:a", "d:p:b"
SG_WEB, SG_DB, SG_DEFAULT = 8000001, 8000002, 8000003
APP_SHOP, APP_BANK = (1 << 16) | 1, (1 << 16) | 2
TIER_WEB, TIER_DB = (2 << 16) | 1, (2 << 16) | 2
SITE_LAB = (4 << 16) | 1
LABEL_RED, LABEL_BLUE = 5, 6  # label type is 0
ANY_PORT = {"start_port": -1, "end_port": -1}
IP = ipaddress.ip_address


def ep(ip: str, port: int = 0, network: str = NET_A, sgs: tuple[int, ...] = (),
       tags: tuple[int, ...] = ()) -> Endpoint:
    return Endpoint(IP(ip), port, network, sgs, tags)


def sg_rule(uuid: str, remote: dict[str, Any], proto: str = "any", ports: tuple[int, int] | None
            = None, ethertype: str = "IPv4", ingress: bool = True) -> dict[str, Any]:
    """An SG ACL rule as the transformer writes it (remote end is src for ingress)."""
    local = {"virtual_network": "any"}
    pr = {"start_port": ports[0], "end_port": ports[1]} if ports else ANY_PORT
    src, dst = (remote, local) if ingress else (local, remote)
    return {"rule_uuid": uuid, "direction": ">", "action_list": {"simple_action": "pass"},
            "match_condition": {"protocol": proto, "ethertype": ethertype,
                                "src_address": src, "src_port": ANY_PORT,
                                "dst_address": dst, "dst_port": pr}}


# A project's `default` group: ingress from the group itself (v4 and v6), all egress.
DEFAULT_SG = {"id": SG_DEFAULT, "ingress": [
    sg_rule("def-in4", {"security_group": str(SG_DEFAULT)}),
    sg_rule("def-in6", {"security_group": str(SG_DEFAULT)}, ethertype="IPv6")],
    "egress": [
    sg_rule("def-out4", {"subnet": {"ip_prefix": "0.0.0.0", "ip_prefix_len": 0}},
            ingress=False),
    sg_rule("def-out6", {"subnet": {"ip_prefix": "::", "ip_prefix_len": 0}},
            ethertype="IPv6", ingress=False)]}


# --- security groups ---------------------------------------------------------------------------


def test_default_group_admits_members_and_all_egress() -> None:
    groups = {SG_DEFAULT: DEFAULT_SG}
    member = ep("198.51.100.1", 4000, sgs=(SG_DEFAULT,))
    stranger = ep("198.51.100.9", 4000)
    me = ep("198.51.100.2", 22, sgs=(SG_DEFAULT,))
    assert sg_decision(groups, (SG_DEFAULT,), "ingress", 6, member, me).allowed
    d = sg_decision(groups, (SG_DEFAULT,), "ingress", 6, stranger, me)
    assert not d.allowed and d.rule == "security group ingress (default deny)"
    assert sg_decision(groups, (SG_DEFAULT,), "egress", 17, me, stranger).rule == "def-out4"
    v6 = sg_decision(groups, (SG_DEFAULT,), "egress", 17, ep("2001:db8::1"), ep("2001:db8::2"))
    assert v6.rule == "def-out6"


def test_port_without_groups_is_unfiltered_and_unknown_group_allows_nothing() -> None:
    assert sg_decision({}, (), "ingress", 6, ep("198.51.100.1"), ep("198.51.100.2")).rule is None
    assert not sg_decision({}, (42,), "ingress", 6, ep("198.51.100.1"),
                           ep("198.51.100.2")).allowed


def test_sg_ethertype_protocol_and_port_ranges() -> None:
    groups = {SG_WEB: {"id": SG_WEB, "egress": [], "ingress": [
        sg_rule("web", {"subnet": {"ip_prefix": "198.51.100.0", "ip_prefix_len": 24}},
                proto="6", ports=(80, 90))]}}
    src = ep("198.51.100.1", 5555)

    def ok(proto: int, dport: int, src_ep: Endpoint = src) -> bool:
        return sg_decision(groups, (SG_WEB,), "ingress", proto, src_ep,
                           ep("198.51.100.2", dport)).allowed

    assert ok(6, 80) and ok(6, 85) and ok(6, 90)
    assert not ok(6, 79) and not ok(6, 91) and not ok(17, 80)
    assert not ok(6, 80, ep("203.0.113.1", 5555))  # outside the remote CIDR
    assert not ok(6, 80, ep("2001:db8::1", 5555))  # IPv4 rule, IPv6 packet


def test_remote_group_membership_comes_from_the_endpoint() -> None:
    groups = {SG_DB: {"id": SG_DB, "egress": [], "ingress": [
        sg_rule("from-web", {"security_group": str(SG_WEB)}, proto="6", ports=(5432, 5432))]}}
    db = ep("198.51.100.5", 5432, sgs=(SG_DB,))
    web = ep("198.51.100.1", 40000, sgs=(SG_WEB, 99))
    assert sg_decision(groups, (SG_DB,), "ingress", 6, web, db).rule == "from-web"
    assert not sg_decision(groups, (SG_DB,), "ingress", 6, ep("198.51.100.1", 1), db).allowed


def test_any_protocol_with_ports_matches_only_port_protocols() -> None:
    groups = {1: {"id": 1, "egress": [], "ingress": [
        sg_rule("p", {"virtual_network": "any"}, ports=(7, 7))]}}
    assert sg_decision(groups, (1,), "ingress", 17, ep("198.51.100.1"),
                       ep("198.51.100.2", 7)).allowed
    assert not sg_decision(groups, (1,), "ingress", 1, ep("198.51.100.1"),
                           ep("198.51.100.2", 7)).allowed


# --- network policy ----------------------------------------------------------------------------


def acl(uuid: str, action: str, src: str = "any", dst: str = "any", proto: str = "any",
        dports: tuple[int, int] | None = None, direction: str = ">", log: bool = False
        ) -> dict[str, Any]:
    return {"rule_uuid": uuid, "direction": direction,
            "action_list": {"simple_action": action, "log": log},
            "match_condition": {
                "protocol": proto, "src_address": {"virtual_network": src},
                "src_port": ANY_PORT, "dst_address": {"virtual_network": dst},
                "dst_port": ({"start_port": dports[0], "end_port": dports[1]}
                             if dports else ANY_PORT)}}


def test_acl_first_match_wins_empty_allows_else_implicit_deny_and_log() -> None:
    a, b = ep("198.51.100.1", 1000), ep("203.0.113.1", 80, NET_B)
    rules = [acl("deny-web", "deny", NET_A, NET_B, "tcp", (80, 80), log=True),
             acl("pass-all", "pass", NET_A, NET_B)]
    d = acl_decision(rules, 6, a, b)
    assert (d.allowed, d.rule, d.log) == (False, "deny-web", True)
    assert acl_decision(rules, 17, a, b).rule == "pass-all"
    assert acl_decision([], 6, a, b).allowed
    assert acl_decision(rules, 6, b, a).rule == "implicit deny"
    assert acl_decision([acl("both", "pass", NET_A, NET_B, direction="<>")], 6, b, a).allowed


# --- firewall ----------------------------------------------------------------------------------


def fw_rule(uuid: str, e1: dict[str, Any], e2: dict[str, Any], *, action: str = "pass",
            direction: str = ">", proto: int | None = 6, dports: tuple[int, int] = (0, 65535),
            match: tuple[int, ...] = (), groups: list[dict[str, Any]] | None = None,
            log: bool = False) -> dict[str, Any]:
    r: dict[str, Any] = {"uuid": uuid, "name": uuid, "direction": direction,
                         "action_list": {"simple_action": action, "log": log},
                         "endpoint_1": e1, "endpoint_2": e2, "match_tag_types": list(match)}
    if groups is not None:
        r["service_groups"] = groups
    else:
        r["service"] = {"protocol_id": proto or 0,
                        "src_ports": {"start_port": 0, "end_port": 65535},
                        "dst_ports": {"start_port": dports[0], "end_port": dports[1]}}
    return r


def tags(*ids: int) -> dict[str, Any]:
    return {"tags": [str(i) for i in ids], "tag_ids": list(ids)}


WEB = ep("198.51.100.1", 40000, tags=(APP_SHOP, TIER_WEB, LABEL_RED, LABEL_BLUE))
DB = ep("198.51.100.5", 5432, tags=(APP_SHOP, TIER_DB, LABEL_RED))
BANK_DB = ep("198.51.100.6", 5432, tags=(APP_BANK, TIER_DB))


def test_tag_expressions_are_and_of_tags_and_labels_may_repeat() -> None:
    r = fw_rule("r", tags(TIER_WEB, LABEL_RED, LABEL_BLUE), tags(TIER_DB))
    assert fw_rule_matches(r, 6, WEB, DB)
    assert not fw_rule_matches(r, 6, DB, WEB)
    only_red = ep("198.51.100.2", 1, tags=(TIER_WEB, LABEL_RED))
    assert not fw_rule_matches(r, 6, only_red, DB)
    assert not fw_rule_matches(fw_rule("u", {"tags": ["x"], "tag_ids": []}, {"any": True}),
                               6, WEB, DB)


def test_direction_of_firewall_rules() -> None:
    fwd = fw_rule("f", tags(TIER_WEB), tags(TIER_DB), direction=">")
    back = fw_rule("b", tags(TIER_WEB), tags(TIER_DB), direction="<")
    both = fw_rule("x", tags(TIER_WEB), tags(TIER_DB), direction="<>")
    assert fw_rule_matches(fwd, 6, WEB, DB) and not fw_rule_matches(fwd, 6, DB, WEB)
    assert fw_rule_matches(back, 6, DB, WEB) and not fw_rule_matches(back, 6, WEB, DB)
    assert fw_rule_matches(both, 6, WEB, DB) and fw_rule_matches(both, 6, DB, WEB)


def test_address_group_network_subnet_and_any_endpoints() -> None:
    group = {"address_group": "g", "address_group_prefixes": ["198.51.100.0/30",
                                                               "203.0.113.0/24"]}
    assert fw_rule_matches(fw_rule("g", group, {"any": True}), 6, WEB, DB)
    assert not fw_rule_matches(fw_rule("g", group, {"any": True}), 6, DB, WEB)
    vn = fw_rule("v", {"virtual_network": NET_A}, {"virtual_network": NET_B})
    assert fw_rule_matches(vn, 6, WEB, ep("203.0.113.1", 1, NET_B))
    assert not fw_rule_matches(vn, 6, WEB, DB)
    sub = fw_rule("s", {"subnet": {"ip_prefix": "198.51.100.4", "ip_prefix_len": 30}}, {})
    assert fw_rule_matches(sub, 6, DB, WEB) and not fw_rule_matches(sub, 6, WEB, DB)


def test_services_and_service_groups() -> None:
    r = fw_rule("pg", {}, {}, dports=(5432, 5432))
    assert fw_rule_matches(r, 6, WEB, DB) and not fw_rule_matches(r, 17, WEB, DB)
    assert not fw_rule_matches(r, 6, DB, WEB)  # WEB's port 40000 is not 5432
    any_proto = fw_rule("any", {}, {}, proto=None)
    assert fw_rule_matches(any_proto, 1, WEB, DB)
    sg = fw_rule("sg", {}, {}, groups=[
        {"protocol_id": 17, "src_ports": {"start_port": 0, "end_port": 65535},
         "dst_ports": {"start_port": 53, "end_port": 53}},
        {"protocol_id": 6, "src_ports": {"start_port": 0, "end_port": 65535},
         "dst_ports": {"start_port": 5000, "end_port": 5500}}])
    assert fw_rule_matches(sg, 6, WEB, DB)
    assert fw_rule_matches(sg, 17, WEB, ep("198.51.100.5", 53))
    assert not fw_rule_matches(sg, 17, WEB, DB)
    unknown = {**fw_rule("u", {}, {}), "service": {"protocol": "bogus", "protocol_id": None}}
    assert not fw_rule_matches(unknown, 6, WEB, DB)


def test_match_tags_require_equal_values_of_the_type() -> None:
    same_app = fw_rule("m", {"any": True}, {"any": True}, match=(1,))
    assert fw_rule_matches(same_app, 6, WEB, DB)
    assert not fw_rule_matches(same_app, 6, WEB, BANK_DB)
    untagged = ep("198.51.100.9", 1)
    assert fw_rule_matches(same_app, 6, untagged, ep("198.51.100.8", 5432))  # both without
    assert not fw_rule_matches(same_app, 6, untagged, DB)
    site = fw_rule("s", {"any": True}, {"any": True}, match=(1, 4))
    assert not fw_rule_matches(site, 6, WEB, ep("198.51.100.5", 5432,
                                                tags=(APP_SHOP, SITE_LAB)))


def aps(uuid: str, name: str, app: int | None, *policies: list[dict[str, Any]]
        ) -> dict[str, Any]:
    return {"uuid": uuid, "name": name, "application_tag": app,
            "all_applications": app is None,
            "policies": [{"uuid": f"{uuid}-p{i}", "name": "p", "sequence": str(i),
                          "rules": rules} for i, rules in enumerate(policies)]}


FIREWALL = {
    "shop": aps("shop", "d:p:shop-aps", APP_SHOP,
                [fw_rule("web-db", tags(TIER_WEB), tags(TIER_DB), dports=(5432, 5432))],
                [fw_rule("deny-db", {"any": True}, tags(TIER_DB), action="deny", log=True)]),
    "global-shop": aps("global-shop", "policy-management:shop", APP_SHOP,
                       [fw_rule("g-ssh", {"any": True}, {"any": True}, dports=(22, 22))]),
    "pdef": aps("pdef", "d:p:default-application-policy-set", None,
                [fw_rule("p-allow", {"any": True}, {"any": True}, proto=None)]),
    "gdef": aps("gdef", "default-policy-management:default-application-policy-set", None),
}


def test_policy_sets_order_application_then_defaults_global_first() -> None:
    assert [e["uuid"] for e in policy_sets(FIREWALL, WEB.tags)] == [
        "global-shop", "shop", "gdef", "pdef"]
    assert [e["uuid"] for e in policy_sets(FIREWALL, BANK_DB.tags)] == ["gdef", "pdef"]
    assert [r["uuid"] for r in firewall_rules(FIREWALL, DB.tags)] == [
        "g-ssh", "web-db", "deny-db", "p-allow"]


def test_firewall_first_match_default_sets_and_default_deny() -> None:
    rules = firewall_rules(FIREWALL, DB.tags)
    assert firewall_decision(rules, 6, WEB, DB).rule == "web-db"
    d = firewall_decision(rules, 6, ep("198.51.100.7", 1, tags=(TIER_WEB,)),
                          ep("198.51.100.5", 80, tags=DB.tags))
    assert (d.allowed, d.rule, d.log) == (False, "deny-db", True)
    assert firewall_decision(rules, 6, DB, WEB).rule == "p-allow"  # only the default set
    assert firewall_decision([], 6, DB, WEB).rule is None  # no rules: unfiltered
    only = firewall_rules({"shop": FIREWALL["shop"]}, DB.tags)
    assert firewall_decision(only, 6, DB, WEB).rule == "firewall (default deny)"


# --- whole packets: gate order, what each node knows -------------------------------------------


def state(node: str, ports: list[LocalPort], acl_rules: tuple[dict[str, Any], ...] = (),
          endpoints: dict[str, EndpointInfo] | None = None,
          groups: dict[int, dict[str, Any]] | None = None,
          firewall: dict[str, Any] | None = None) -> DatapathState:
    eps = {f"{ip}/32": EndpointInfo(NET_A, p.sgs, p.tags) for p in ports for ip in p.ips}
    eps.update(endpoints or {})
    vrf = Vrf(network="a", name=NET_A, vni=5,
              routes={k: (NextHop("local"),) for k in eps}, acl=acl_rules, endpoints=eps)
    return DatapathState(node=node, underlay_ip="192.0.2.1",
                         ports={p.uuid: p for p in ports}, vrfs={"a": vrf},
                         security_groups=groups or {}, firewall=firewall or {})


def lport(uuid: str, ip: str, sgs: tuple[int, ...] = (), tags: tuple[int, ...] = ()
          ) -> LocalPort:
    return LocalPort(uuid, "a", 5, "02:00:00:00:00:01", (ip,), "tap" + uuid, 1450, sgs, tags)


def test_gates_run_in_tf_order_on_each_node_with_route_carried_ids() -> None:
    web = lport("web", "198.51.100.1", (SG_WEB,), WEB.tags)
    db = lport("db", "198.51.100.5", (SG_DB,), DB.tags)
    groups = {SG_WEB: {"id": SG_WEB, "ingress": [], "egress": [
        sg_rule("web-out", {"security_group": str(SG_DB)}, ingress=False)]},
        SG_DB: {"id": SG_DB, "egress": [], "ingress": [
            sg_rule("db-in", {"security_group": str(SG_WEB)}, proto="6", ports=(5432, 5432))]}}
    n1 = state("n1", [web], endpoints={"198.51.100.5/32": EndpointInfo(NET_A, (SG_DB,),
                                                                       DB.tags)},
               groups=groups, firewall=FIREWALL)
    n2 = state("n2", [db], endpoints={"198.51.100.1/32": EndpointInfo(NET_A, (SG_WEB,),
                                                                      WEB.tags)},
               groups=groups, firewall=FIREWALL)
    v = evaluate(6, IP("198.51.100.1"), 40000, IP("198.51.100.5"), 5432,
                 Side(n1, web), Side(n2, db))
    assert v.allowed
    assert [(g.kind, g.node, g.decision.rule) for g in v.gates] == [
        ("policy", "n1", None), ("policy", "n2", None),
        ("sg-egress", "n1", "web-out"), ("sg-ingress", "n2", "db-in"),
        ("firewall", "n1", "web-db"), ("firewall", "n2", "web-db")]
    # the destination node no longer sees the source in SG_WEB (its route changed): dropped
    n2b = state("n2", [db], endpoints={"198.51.100.1/32": EndpointInfo(NET_A, (), WEB.tags)},
                groups=groups, firewall=FIREWALL)
    v = evaluate(6, IP("198.51.100.1"), 40000, IP("198.51.100.5"), 5432,
                 Side(n1, web), Side(n2b, db))
    assert not v.allowed and v.denied_by is not None
    assert (v.denied_by.kind, v.denied_by.node) == ("sg-ingress", "n2")
    # network policy is the first gate reported
    n1d = state("n1", [web], (acl("no", "deny"),), groups=groups, firewall=FIREWALL)
    v = evaluate(6, IP("198.51.100.1"), 40000, IP("198.51.100.5"), 5432,
                 Side(n1d, web), Side(n2b, db))
    assert v.denied_by is not None and v.denied_by.decision.rule == "no"


def test_protocol_names() -> None:
    assert proto_number("any") is None and proto_number(0) is None
    assert proto_number("UDP") == 17 and proto_number("58") == 58


# --- properties --------------------------------------------------------------------------------

tag_ids = st.sets(st.sampled_from([APP_SHOP, APP_BANK, TIER_WEB, TIER_DB, SITE_LAB,
                                   LABEL_RED, LABEL_BLUE]), max_size=4)


@settings(max_examples=200, deadline=None)
@given(e1=tag_ids, e2=tag_ids, a=tag_ids, b=tag_ids, direction=st.sampled_from([">", "<",
                                                                                 "<>"]))
def test_bidirectional_is_the_union_of_both_directions(e1: set[int], e2: set[int], a: set[int],
                                                       b: set[int], direction: str) -> None:
    def rule(d: str) -> dict[str, Any]:
        return fw_rule("r", tags(*e1) if e1 else {"any": True},
                       tags(*e2) if e2 else {"any": True}, direction=d)

    x = ep("198.51.100.1", 1, tags=tuple(a))
    y = ep("198.51.100.2", 2, tags=tuple(b))
    both = fw_rule_matches(rule("<>"), 6, x, y)
    assert both == (fw_rule_matches(rule(">"), 6, x, y) or fw_rule_matches(rule("<"), 6, x, y))
    # "<" is ">" seen from the other end
    assert fw_rule_matches(rule("<"), 6, x, y) == fw_rule_matches(rule(">"), 6, y, x)


@settings(max_examples=200, deadline=None)
@given(lo=st.integers(0, 65535), span=st.integers(0, 100), port=st.integers(0, 65535))
def test_sg_port_range_holds_exactly_its_ports(lo: int, span: int, port: int) -> None:
    hi = min(65535, lo + span)
    groups = {1: {"id": 1, "egress": [], "ingress": [
        sg_rule("r", {"virtual_network": "any"}, proto="17", ports=(lo, hi))]}}
    got = sg_decision(groups, (1,), "ingress", 17, ep("198.51.100.1"),
                      ep("198.51.100.2", port)).allowed
    assert got == (lo <= port <= hi)
