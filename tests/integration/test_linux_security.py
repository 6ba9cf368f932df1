"""Security groups and firewall policies on the ``linux`` datapath, with real TCP connections
between namespaced workloads on two nodes (``seckit``), checked against explicit
expectations and against the evaluation core (``tungsten.security.verdict``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from itertools import product
from typing import Any

import pytest

from tests.integration.seckit import NETS, Config, SecLab
from tungsten.datapath.linux.flowlog import read

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]
pytest.importorskip("tungsten.datapath.linux.nftlib")

SG_WEB, SG_DB, SG_DEF = 8100001, 8100002, 8100003
APP_SHOP, APP_BANK = (1 << 16) | 11, (1 << 16) | 12
TIER_WEB, TIER_DB = (2 << 16) | 11, (2 << 16) | 12
LABEL_X = 21
ANY_PORT = {"start_port": -1, "end_port": -1}
SPECS = [("a1", "n1", 4301, "198.51.100.1"), ("a2", "n2", 4301, "198.51.100.2"),
         ("a3", "n1", 4301, "198.51.100.3"), ("b1", "n1", 4302, "203.0.113.1"),
         ("b2", "n2", 4302, "203.0.113.2")]


def sg_rule(uuid: str, remote: dict[str, Any], *, ingress: bool, proto: str = "any",
            dport: int | None = None, ethertype: str = "IPv4") -> dict[str, Any]:
    local = {"virtual_network": "any"}
    src, dst = (remote, local) if ingress else (local, remote)
    return {"rule_uuid": uuid, "direction": ">", "action_list": {"simple_action": "pass"},
            "match_condition": {
                "protocol": proto, "ethertype": ethertype, "src_address": src,
                "src_port": ANY_PORT, "dst_address": dst,
                "dst_port": ANY_PORT if dport is None else {"start_port": dport,
                                                            "end_port": dport}}}


ALL_V4 = {"subnet": {"ip_prefix": "0.0.0.0", "ip_prefix_len": 0}}
GROUPS = {
    SG_WEB: {"id": SG_WEB, "ingress": [], "egress": [sg_rule("web-out", ALL_V4,
                                                              ingress=False)]},
    SG_DB: {"id": SG_DB, "egress": [], "ingress": [
        sg_rule("db-in", {"security_group": str(SG_WEB)}, ingress=True, proto="6",
                dport=5432)]},
    SG_DEF: {"id": SG_DEF, "ingress": [
        sg_rule("def-in", {"security_group": str(SG_DEF)}, ingress=True)],
        "egress": [sg_rule("def-out", ALL_V4, ingress=False)]},
}


@pytest.fixture
def lab() -> Iterator[SecLab]:
    lab = SecLab()
    try:
        lab.build(SPECS)
        yield lab
    finally:
        lab.close()


def matrix(lab: SecLab, cfg: Config, ports: tuple[int, ...]) -> dict[tuple[str, str, int], bool]:
    flows = [(s, d, p) for s, d in product(lab.workloads, repeat=2) if s != d for p in ports]
    got = dict(zip(flows, lab.probe(flows), strict=True))
    want = {f: lab.expected(cfg, *f) for f in flows}
    wrong = {f: got[f] for f in flows if got[f] != want[f]}
    assert not wrong, f"linux differs from the evaluation core on {wrong}"
    return got


def test_security_groups_matrix_remote_groups_and_default_group(lab: SecLab) -> None:
    w = lab.workloads
    w["a1"].sgs, w["a2"].sgs = (SG_WEB,), (SG_DB,)
    w["b1"].sgs = w["b2"].sgs = (SG_DEF,)  # a3 has no group: unfiltered
    cfg = Config(groups=GROUPS)
    lab.apply(cfg)
    got = matrix(lab, cfg, (22, 5432))
    assert got["a1", "a2", 5432]  # remote group member, across nodes
    assert not got["a1", "a2", 22]  # port not allowed
    assert not got["a3", "a2", 5432]  # not a member of SG_WEB
    assert got["b1", "b2", 22] and got["b2", "b1", 22]  # default group: members admitted
    assert not got["a3", "b1", 22]  # ... others are not
    assert got["b1", "a3", 22]  # egress all, and a3 is unfiltered
    assert not got["a2", "a3", 22]  # SG_DB allows no egress
    for n, dp in lab.dps.items():  # a second apply changes nothing
        dp.apply(lab.state(n, cfg))
        assert dp.last_nft == [], dp.last_nft

    # membership travels with routes: a3 joins SG_WEB and is admitted to the database
    w["a3"].sgs = (SG_WEB,)
    lab.apply(cfg)
    assert lab.probe([("a3", "a2", 5432), ("a3", "b1", 22)]) == [True, False]


def fw_rule(uuid: str, e1: dict[str, Any], e2: dict[str, Any], *, action: str = "pass",
            dport: int | None = None, direction: str = ">", match: tuple[int, ...] = ()
            ) -> dict[str, Any]:
    ports = ({"start_port": 0, "end_port": 65535} if dport is None
             else {"start_port": dport, "end_port": dport})
    return {"uuid": uuid, "name": uuid, "direction": direction,
            "action_list": {"simple_action": action}, "endpoint_1": e1, "endpoint_2": e2,
            "match_tag_types": list(match),
            "service": {"protocol_id": 6, "src_ports": {"start_port": 0, "end_port": 65535},
                        "dst_ports": ports}}


def tags(*ids: int) -> dict[str, Any]:
    return {"tags": [str(i) for i in ids], "tag_ids": list(ids)}


def aps(uuid: str, name: str, app: int | None, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"uuid": uuid, "name": name, "application_tag": app,
            "all_applications": app is None,
            "policies": [{"uuid": uuid + "-p", "name": "p", "sequence": "1",
                          "rules": list(rules)}]}


def test_firewall_tags_address_groups_and_defaults(lab: SecLab) -> None:
    w = lab.workloads
    w["a1"].tags = (APP_SHOP, TIER_WEB, LABEL_X)
    w["a2"].tags = (APP_SHOP, TIER_DB)
    w["a3"].tags = (APP_BANK, TIER_WEB)
    w["b1"].tags = (APP_SHOP, TIER_WEB)
    w["b2"].tags = (APP_SHOP,)  # b2 is in the address group
    group = {"address_group": "ops", "address_group_prefixes": ["203.0.113.2/32"]}
    firewall = {
        "shop": aps("shop", "d:p:shop", APP_SHOP,
                    fw_rule("web-db", tags(TIER_WEB, LABEL_X), tags(TIER_DB), dport=5432),
                    fw_rule("ops-ssh", group, {"any": True}, dport=22, direction="<>"),
                    fw_rule("same-app", {"any": True}, {"any": True}, dport=8080,
                            match=(1,)),
                    fw_rule("no-db", {"any": True}, tags(TIER_DB), action="deny")),
        "default": aps("default", "d:p:default-application-policy-set", None,
                       fw_rule("vn", {"virtual_network": NETS[4302][0]},
                               {"virtual_network": NETS[4301][0]}, dport=80)),
    }
    cfg = Config(firewall=firewall)
    lab.apply(cfg)
    got = matrix(lab, cfg, (22, 80, 5432, 8080))
    assert got["a1", "a2", 5432]  # web (with the label) to db
    assert not got["b1", "a2", 5432]  # web without the label
    assert not got["a1", "a2", 22]  # explicit deny into db
    assert got["b2", "a1", 22] and got["a1", "b2", 22]  # address group, either direction
    assert not got["a3", "a1", 22]  # a3 (another application) has the default set only
    assert got["a1", "b1", 8080] and not got["a3", "a1", 8080]  # match_tags application
    assert got["b2", "a3", 80]  # the default set's network rule, after the shop set
    assert not got["a3", "b2", 80]
    for n, dp in lab.dps.items():
        dp.apply(lab.state(n, cfg))
        assert dp.last_nft == []

    # a port's tags change: b1 gets the label and reaches the database
    w["b1"].tags = (APP_SHOP, TIER_WEB, LABEL_X)
    lab.apply(cfg)
    assert lab.probe([("b1", "a2", 5432)]) == [True]


def test_gates_combine_policy_sg_and_firewall(lab: SecLab) -> None:
    """Network policy denies between the networks; SGs and firewall pass inside A."""
    w = lab.workloads
    w["a1"].sgs = w["a2"].sgs = (SG_DEF,)
    acl = ({"rule_uuid": "self", "direction": ">", "action_list": {"simple_action": "pass"},
            "match_condition": {"protocol": "any",
                                "src_address": {"virtual_network": NETS[4301][0]},
                                "dst_address": {"virtual_network": NETS[4301][0]},
                                "src_port": ANY_PORT, "dst_port": ANY_PORT}},)
    cfg = Config(acl={4301: acl, 4302: ()}, groups=GROUPS)
    lab.apply(cfg)
    got = matrix(lab, cfg, (22,))
    assert got["a1", "a2", 22] and got["a3", "a1", 22] is False
    assert not got["a3", "b2", 22] and not got["b2", "a3", 22]  # network policy


def test_malformed_rules_match_nothing_and_the_rest_still_applies(lab: SecLab) -> None:
    """Rules the API should have refused (inverted or out-of-range ports, a bad prefix, an
    unknown protocol or ethertype) match nothing on the kernel, as in the evaluation core,
    and never make the nft transaction fail; the good rules next to them apply."""
    w = lab.workloads
    w["a2"].sgs = (SG_DB,)
    bad_ports = sg_rule("inverted", ALL_V4, ingress=True, proto="6")
    bad_ports["match_condition"]["dst_port"] = {"start_port": 90, "end_port": 80}
    bad_prefix = sg_rule("prefix", {"subnet": {"ip_prefix": "300.1.1.1", "ip_prefix_len": 40}},
                         ingress=True)
    bad_proto = sg_rule("proto", ALL_V4, ingress=True, proto="999")
    bad_ether = sg_rule("ether", ALL_V4, ingress=True, ethertype="IPX")
    good = sg_rule("ssh", ALL_V4, ingress=True, proto="6", dport=22)
    acl = (dict(good, rule_uuid="acl-bad", match_condition={
        **good["match_condition"], "dst_port": {"start_port": 70000, "end_port": 1}}),
        {"rule_uuid": "acl-all", "direction": ">", "action_list": {"simple_action": "pass"},
         "match_condition": {"protocol": "any", "src_port": ANY_PORT, "dst_port": ANY_PORT,
                             "src_address": {"virtual_network": "any"},
                             "dst_address": {"virtual_network": "any"}}})
    cfg = Config(acl={4301: acl, 4302: acl}, groups={SG_DB: {
        "id": SG_DB, "egress": [], "ingress": [bad_ports, bad_prefix, bad_proto, bad_ether,
                                               good]}})
    lab.apply(cfg)
    got = matrix(lab, cfg, (22, 80))  # (80 is inside the inverted range 90-80)
    assert got["a1", "a2", 22] and not got["a1", "a2", 80] and got["a1", "a3", 80]


def test_logged_rules_record_flows_with_the_deciding_rule(lab: SecLab) -> None:
    logged_pass = fw_rule("log-web", {"any": True}, {"any": True}, dport=80)
    logged_pass["action_list"]["log"] = True
    deny_ssh: dict[str, Any] = {"rule_uuid": "acl-no-ssh", "direction": ">",
                                "action_list": {"simple_action": "deny", "log": True},
                                "match_condition": {
                                    "protocol": "6", "src_port": ANY_PORT,
                                    "dst_port": {"start_port": 22, "end_port": 22},
                                    "src_address": {"virtual_network": "any"},
                                    "dst_address": {"virtual_network": "any"}}}
    allow = {**deny_ssh, "rule_uuid": "acl-all", "action_list": {"simple_action": "pass"},
             "match_condition": {**deny_ssh["match_condition"], "protocol": "any",
                                 "dst_port": ANY_PORT}}
    cfg = Config(acl={4301: (deny_ssh, allow), 4302: (deny_ssh, allow)},
                 firewall={"d": aps("d", "d:p:default-application-policy-set", None,
                                    logged_pass,
                                    fw_rule("rest", {"any": True}, {"any": True}))})
    lab.apply(cfg)
    assert lab.probe([("a1", "a2", 80), ("a1", "a2", 22), ("a1", "a3", 5432)]) == [
        True, False, True]
    n1 = read(lab.nodes["n1"])
    rules = {r["uuid"]: r for r in n1["rules"]}
    assert rules["log-web"]["action"] == "pass" and rules["log-web"]["packets"] >= 1
    assert rules["acl-no-ssh"]["action"] == "deny" and rules["acl-no-ssh"]["packets"] >= 1
    flows = [(f["src"], f["dst"], f["dport"], f["rule"]) for f in n1["flows"]]
    a1, a2 = lab.workloads["a1"].ip, lab.workloads["a2"].ip
    assert (a1, a2, 80, "log-web") in flows
    assert all(f[2] != 5432 for f in flows)  # admitted by a rule without log: not recorded
    # the other node records the same flow (its own gates logged it too)
    assert any(f["dport"] == 80 and f["rule"] == "log-web" for f in read(lab.nodes["n2"])["flows"])
    # and the CLI shows them
    out = subprocess.run([sys.executable, "-m", "tungsten", "flows", "--netns", lab.nodes["n1"]],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "log-web" in out and "acl-no-ssh" in out and f"{a1}:" in out
    bad = subprocess.run([sys.executable, "-m", "tungsten", "flows", "--lab", "x"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "give both --lab and --node" in bad.stderr
