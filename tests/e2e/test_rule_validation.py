"""Malformed security rules are refused with 400 naming the field, and nothing is
half-applied: the stored object and what the agents enforce stay as they were."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import requests

from tests.e2e.fabric import PROJECT, check_delivered, connected, ip, plug, run
from tests.waits import until

A = "default-domain:default-project:app"
B = "default-domain:default-project:db"
RULE = "5a5a5a5a-0000-4000-8000-00000000a001"
ANY = {"start_port": -1, "end_port": -1}


def np_rule(**over: Any) -> dict[str, Any]:
    rule = {"rule_uuid": RULE, "direction": "<>", "protocol": "tcp", "ethertype": "IPv4",
            "src_addresses": [{"virtual_network": A}], "src_ports": [ANY],
            "dst_addresses": [{"virtual_network": B}],
            "dst_ports": [{"start_port": 5432, "end_port": 5432}],
            "action_list": {"simple_action": "pass"}}
    rule.update(over)
    return rule


def sg_rule(**over: Any) -> dict[str, Any]:
    rule = {"direction": ">", "protocol": "tcp", "ethertype": "IPv4",
            "src_addresses": [{"subnet": {"ip_prefix": "198.51.100.0", "ip_prefix_len": 24}}],
            "src_ports": [ANY], "dst_addresses": [{"security_group": "local"}],
            "dst_ports": [{"start_port": 22, "end_port": 22}]}
    rule.update(over)
    return rule


BAD_RULES = {
    "unknown protocol": {"protocol": "tcpp"},
    "protocol out of range": {"protocol": "300"},
    "inverted port range": {"dst_ports": [{"start_port": 90, "end_port": 80}]},
    "-1 mixed with a port": {"dst_ports": [{"start_port": -1, "end_port": 80}]},
}
BAD_SG_ONLY = {
    "prefix not an address": {"src_addresses": [{"subnet": {"ip_prefix": "198.51.100.x",
                                                            "ip_prefix_len": 24}}]},
    "prefix length out of range": {"src_addresses": [{"subnet": {"ip_prefix": "198.51.100.0",
                                                                 "ip_prefix_len": 40}}]},
    "subnet of the other family": {"ethertype": "IPv6"},
}


def post(url: str, rtype: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/{rtype}s", json={rtype: body}, timeout=10)


def count(url: str, rtype: str) -> int:
    return len(requests.get(f"{url}/{rtype}s", timeout=10).json()[f"{rtype}s"])


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_bad_policy_rule_refused(controller: Any, case: str) -> None:
    before = count(controller.url, "network-policy")
    r = post(controller.url, "network-policy", {
        "fq_name": [*PROJECT, f"bad-{case.replace(' ', '-')}"], "parent_type": "project",
        "network_policy_entries": {"policy_rule": [np_rule(**BAD_RULES[case])]}})
    assert r.status_code == 400, r.text
    assert "policy rule 1" in r.text, r.text
    assert count(controller.url, "network-policy") == before


@pytest.mark.parametrize("case", sorted({**BAD_RULES, **BAD_SG_ONLY}))
def test_bad_security_group_rule_refused(controller: Any, case: str) -> None:
    before = count(controller.url, "security-group")
    bad = {**BAD_RULES, **BAD_SG_ONLY}[case]
    r = post(controller.url, "security-group", {
        "fq_name": [*PROJECT, f"bad-{case.replace(' ', '-')}"], "parent_type": "project",
        "security_group_entries": {"policy_rule": [sg_rule(), sg_rule(**bad)]}})
    assert r.status_code == 400, r.text
    assert "security group rule 2" in r.text, r.text
    assert count(controller.url, "security-group") == before


def test_bad_firewall_objects_refused(controller: Any) -> None:
    url = controller.url
    cases = [
        ("firewall-rule", {"service": {"protocol": "tcp",
                                       "dst_ports": {"start_port": 443, "end_port": 80}},
                           "endpoint_1": {"any": True}, "endpoint_2": {"any": True},
                           "action_list": {"simple_action": "pass"}, "direction": "<>"},
         "dst_ports"),
        ("firewall-rule", {"service": {"protocol": "tcp"},
                           "endpoint_1": {"subnet": {"ip_prefix": "203.0.113.0",
                                                     "ip_prefix_len": 33}},
                           "endpoint_2": {"any": True},
                           "action_list": {"simple_action": "pass"}, "direction": "<>"},
         "ip_prefix_len"),
        ("address-group", {"address_group_prefix": {"subnet": [
            {"ip_prefix": "192.0.2.0", "ip_prefix_len": 24},
            {"ip_prefix": "not-an-ip", "ip_prefix_len": 24}]}}, "address group prefix 2"),
        ("service-group", {"service_group_firewall_service_list": {"firewall_service": [
            {"protocol": "udp", "dst_ports": {"start_port": 53, "end_port": 53}},
            {"protocol": "bogus"}]}}, "service group service 2"),
    ]
    for i, (rtype, body, needle) in enumerate(cases):
        before = count(url, rtype)
        r = post(url, rtype, {"fq_name": [*PROJECT, f"bad-{i}"], "parent_type": "project",
                              **body})
        assert r.status_code == 400, (rtype, r.text)
        assert needle in r.text, (rtype, r.text)
        assert count(url, rtype) == before, rtype


def test_refused_update_changes_nothing_enforced(controller_factory: Any) -> None:
    """A policy update with one bad rule among good ones is refused as a whole: the stored
    rules and the verdicts the agents compute are those from before."""
    ctl = controller_factory(args=["--hold-time", "1"])

    async def main() -> None:
        async with connected(ctl.url) as (api, fab):
            pol = await api.create("network-policy", [*PROJECT, "app-db"], "project",
                                   network_policy_entries={"policy_rule": [np_rule()]})
            await api.network("app", "198.51.100.0/24", policies=[pol])
            await api.network("db", "203.0.113.0/24", policies=[pol])
            n1 = await fab.agent("n1", "198.19.0.1", [ctl.url])
            n2 = await fab.agent("n2", "198.19.0.2", [ctl.url])
            a1 = await plug(n1, "app", "a1")
            b1 = await plug(n2, "db", "b1")
            await until(lambda: n1.trace(a1["uuid"], ip(b1), proto_="tcp",
                                         dport=5432).verdict == "delivered",
                        "the policy's pass rule enforced")
            stored = (await api.read("network-policy", pol))["network_policy_entries"]
            acl_before = copy.deepcopy(n1.acls(a1["uuid"]))

            bad = {"policy_rule": [np_rule(), np_rule(
                rule_uuid="5a5a5a5a-0000-4000-8000-00000000a002", action_list={
                    "simple_action": "deny"}, dst_ports=[{"start_port": 9, "end_port": 1}])]}
            async with api.http.put(f"{ctl.url}/network-policy/{pol}",
                                json={"network-policy": {
                                    "network_policy_entries": bad}}) as r:
                assert r.status == 400, await r.text()
            assert (await api.read("network-policy", pol))["network_policy_entries"] \
                == stored
            await asyncio.sleep(1.0)  # anything wrongly sent would have arrived by now
            assert n1.acls(a1["uuid"]) == acl_before
            check_delivered(n1, a1, b1, "tcp", 5432)

    run(main())
