"""Firewall state over the agent stream: the application-policy-sets of an agent's ports reach
it in the snapshot, and rule, policy and set changes reach exactly the agents that use them as
deltas of the ``firewall`` collection."""

from __future__ import annotations

from typing import Any

from tests.integration.test_control_stream import agents, run, serve
from tests.unit.test_control_firewall import GLOBAL_DEFAULT, PROJECT_DEFAULT, Firewall
from tungsten.control import protocol as p


def firewall_deltas(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] == p.DELTA and "firewall" in m["upsert"]]


def rules_of(view: p.View, aps: str) -> list[tuple[str, int]]:
    """(rule uuid, first destination port) of every rule of a set, in order."""
    entry = view.get("firewall", {}).get(aps)
    if entry is None:
        return []
    return [(r["uuid"], r["service"]["dst_ports"]["start_port"])
            for pol in entry["policies"] for r in pol["rules"]]


def test_rule_changes_reach_the_agents_whose_ports_carry_the_application() -> None:
    async def body() -> None:
        f = Firewall()
        red = f.network("red", "198.51.100.0/24")
        web = f.tag("application", "web")
        r1 = f.rule("r1")
        pol = f.policy("web-pol", [("1", r1)])
        aps = f.aps("web-aps", web, [("1", pol)])
        tagged, plain = f.port(red), f.port(red)
        f.tag_with("virtual-machine-interface", tagged, web)
        async with serve(f.api) as (node, url), agents() as make:
            a = await make(url, "192.0.2.1", [tagged])
            b = await make(url, "192.0.2.2", [plain])
            assert rules_of(a.view, aps) == [(r1, 80)]
            assert {e["name"] for e in b.view["firewall"].values()} == {
                PROJECT_DEFAULT, GLOBAL_DEFAULT}
            b_session = node.sessions[b.session or ""]
            b_revision = b_session.revision

            # updating a rule
            f.update("firewall-rule", r1, {"service": {
                "protocol": "tcp", "dst_ports": {"start_port": 8080, "end_port": 8080}}})
            await a.wait(lambda: rules_of(a.view, aps) == [(r1, 8080)], "the updated rule")
            delta = firewall_deltas(a.msgs)[-1]
            assert list(delta["upsert"]["firewall"]) == [aps]
            assert "ports" not in delta["upsert"] and "networks" not in delta["upsert"]

            # a new rule, slotted before the first one
            r0 = f.rule("r0", service={"protocol": "udp",
                                       "dst_ports": {"start_port": 53, "end_port": 53}})
            f.update("firewall-policy", pol, {"firewall_rule_refs": [
                {"uuid": r1, "attr": {"sequence": "1"}},
                {"uuid": r0, "attr": {"sequence": "0.5"}}]})
            await a.wait(lambda: rules_of(a.view, aps) == [(r0, 53), (r1, 8080)],
                         "the new rule")

            # the flushes that sent those reached B's session too: nothing was sent to it
            assert b_session.revision == b_revision
            assert firewall_deltas(b.msgs) == []
    run(body)


def test_a_new_policy_set_reaches_the_ports_with_its_application_tag() -> None:
    async def body() -> None:
        f = Firewall()
        red = f.network("red", "198.51.100.0/24")
        web = f.tag("application", "web")
        tagged, plain = f.port(red), f.port(red)
        f.tag_with("virtual-machine-interface", tagged, web)
        async with serve(f.api) as (node, url), agents() as make:
            a = await make(url, "192.0.2.1", [tagged])
            b = await make(url, "192.0.2.2", [plain])
            defaults = {PROJECT_DEFAULT, GLOBAL_DEFAULT}
            assert {e["name"] for e in a.view["firewall"].values()} == defaults
            b_session = node.sessions[b.session or ""]
            b_revision = b_session.revision

            r1 = f.rule("r1")
            aps = f.aps("web-aps", web, [("1", f.policy("web-pol", [("1", r1)]))])
            await a.wait(lambda: rules_of(a.view, aps) == [(r1, 80)], "the new set")
            assert b_session.revision == b_revision

            # tagging B's port brings the set to B as well
            f.tag_with("virtual-machine-interface", plain, web)
            await b.wait(lambda: rules_of(b.view, aps) == [(r1, 80)], "the set on B")
            assert b.view["ports"][plain]["tags"] == [f.tag_id(web)]
    run(body)
