"""The compiled sets in a real kernel (root, one private network namespace): a table with
ACL, SG and firewall runs loads in one transaction, a restarted agent adopts the elements
it finds (no reload), a change is an element delta, and overlapping rules of one run are
accepted (the kernel refuses overlapping elements: they are made disjoint first)."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.test_security_verdict import DEFAULT_SG, SG_DEFAULT
from tungsten.datapath.base import DatapathState, EndpointInfo, LocalPort, NextHop, Vrf

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]
pytest.importorskip("tungsten.datapath.linux.nftlib")
from tungsten.datapath.linux import acl  # noqa: E402

NET = "d:p:sets"


@pytest.fixture
def netns() -> Iterator[str]:
    name = "tgsets-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def acl_rule(i: int, action: str, dst: str, ports: tuple[int, int]) -> dict[str, Any]:
    return {"rule_uuid": f"r{i}", "direction": "<>" if i % 3 == 0 else ">",
            "action_list": {"simple_action": action},
            "match_condition": {"protocol": "6" if i % 2 else "any",
                                "src_address": {"virtual_network": NET},
                                "src_port": {"start_port": -1, "end_port": -1},
                                "dst_address": {"subnet": {"ip_prefix": dst.split("/")[0],
                                                           "ip_prefix_len": int(
                                                               dst.split("/")[1])}},
                                "dst_port": {"start_port": ports[0], "end_port": ports[1]}}}


def state(extra: bool = False) -> DatapathState:
    # overlapping prefixes and port ranges inside each run (a /24 and hosts in it, ranges
    # crossing each other): refused by the kernel unless made disjoint
    rules = [acl_rule(i, "pass", p, r) for i, (p, r) in enumerate([
        ("203.0.113.0/24", (80, 90)), ("203.0.113.5/32", (85, 100)),
        ("203.0.113.0/25", (1, 65535)), ("198.51.100.0/24", (22, 22))])]
    rules += [acl_rule(10 + i, "deny", p, r) for i, (p, r) in enumerate([
        ("0.0.0.0/0", (5000, 6000)), ("203.0.113.128/25", (5500, 7000))])]
    if extra:
        rules.append(acl_rule(20, "deny", "192.0.2.7/32", (9999, 9999)))
    rules.append(acl_rule(30, "pass", "0.0.0.0/0", (-1, -1)))
    port = LocalPort("p1", "sets", 7, "02:00:00:00:07:01", ("198.51.100.1",), "tapsets1",
                     1450, (SG_DEFAULT,), (3,))
    eps = {"198.51.100.1/32": EndpointInfo(NET, (SG_DEFAULT,), (3,)),
           "198.51.100.9/32": EndpointInfo(NET, (SG_DEFAULT,), (3,))}
    fw = {"d": {"uuid": "d", "name": "x:y", "application_tag": None, "all_applications": True,
                "policies": [{"uuid": "p", "name": "p", "sequence": "1", "rules": [
                    {"uuid": "f1", "direction": "<>", "action_list": {"simple_action": "pass"},
                     "endpoint_1": {"tag_ids": [3], "tags": ["t"]}, "endpoint_2": {"any": True},
                     "service": {"protocol_id": 6}},
                    {"uuid": "f2", "direction": ">", "action_list": {"simple_action": "deny"},
                     "endpoint_1": {"any": True},
                     "endpoint_2": {"address_group": "g", "address_group_prefixes": [
                         "203.0.113.0/24", "203.0.113.7/32", "192.0.2.0/30"]}},
                    {"uuid": "f3", "direction": ">", "action_list": {"simple_action": "pass"},
                     "endpoint_1": {"any": True}, "endpoint_2": {"any": True}}]}]}}
    vrf = Vrf("sets", NET, 7, {k: (NextHop("local", port="p1"),) for k in eps},
              acl=tuple(rules), endpoints=eps)
    return DatapathState("n1", "192.0.2.1", {"p1": port}, {"sets": vrf},
                         {SG_DEFAULT: DEFAULT_SG}, fw)


def test_sets_load_adopt_and_change_by_elements(netns: str) -> None:
    want = acl.ruleset(state())
    assert want is not None
    assert {ns.name for ns in want.sets} >= {"acl4p0-7", "acl4d1-7", "acl4p2-7", "sgi4-tapsets1",
                                             "fwo4p0-tapsets1", "fwo4d1-tapsets1"}
    first = acl.Nft(netns)
    assert first.converge(want)  # one transaction: the kernel accepts every element
    assert first.converge(want) == []
    # a restarted agent reads the elements back and changes nothing
    restarted = acl.Nft(netns)
    assert restarted.converge(acl.ruleset(state())) == []
    # one deny rule more, in the deny run: an element delta only, in that run's set
    cmds = restarted.converge(acl.ruleset(state(extra=True)))
    assert cmds and all("element" in c.get("add", {}) for c in cmds), cmds
    assert {c["add"]["element"]["name"] for c in cmds} == {"acl4d1-7"}
    # and back: the element goes
    cmds = restarted.converge(acl.ruleset(state()))
    assert [next(iter(c)) for c in cmds] == ["delete"]
    listing = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "set", "inet",
                              "tungsten", "acl4d1-7"], capture_output=True, text=True,
                             check=True).stdout
    assert "192.0.2.7" not in listing and "5000-6000" in listing
