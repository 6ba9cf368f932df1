"""The lab topology's security sections: parsing, validation with positions, and the API
bodies they become (accepted by the config API core)."""

from __future__ import annotations

import pytest

from tests.integration.test_lab_security import TOPOLOGY
from tests.unit.test_control_views import CTX
from tungsten.api.core import ConfigApi
from tungsten.lab import plan as lp
from tungsten.lab.topology import TopologyError, parse
from tungsten.store import open_store


def test_security_sections_parse() -> None:
    topo = parse(TOPOLOGY.format(name="sec"))
    assert topo.project_tags == (("acme", ("site=lab",)),)
    web1 = next(w for w in topo.workloads if w.name == "web1")
    assert web1.security_groups == ("web",) and web1.tags == ("tier=web", "label=blue")
    db = next(g for g in topo.security_groups if g.name == "db")
    assert [(r.direction, r.protocol, r.ports, r.remote) for r in db.rules] == [
        ("ingress", "tcp", (5432, 5432), "web"), ("ingress", "tcp", (22, 22), "any"),
        ("egress", "any", (-1, -1), "any")]
    assert [(a.name, a.application) for a in topo.policy_sets] == [
        ("shop-aps", "shop"), ("default", None)]
    assert ("acme", "application=shop") in topo.tags()
    assert ("acme", "label=blue") in topo.tags()


@pytest.mark.parametrize("bad, message", [
    ("security_groups: [nope]", "unknown security group 'nope'"),
    ("tags: [tier=web, tier=db]", "a second 'tier' tag (only label may repeat)"),
    ("tags: [colour=red]", "bad value 'colour=red'"),
])
def test_workload_security_errors(bad: str, message: str) -> None:
    text = TOPOLOGY.format(name="sec").replace("security_groups: [db], tags: [tier=db]", bad)
    with pytest.raises(TopologyError) as e:
        parse(text, "lab.yaml")
    assert any(message in err and err.startswith("lab.yaml:") for err in e.value.errors), \
        e.value.errors


def test_firewall_and_group_reference_errors() -> None:
    text = (TOPOLOGY.format(name="sec")
            .replace("remote: web}", "remote: nothing}")
            .replace("to: \"tier=db\"}", "to: \"tier=db & colour=x\"}")
            .replace("policies: [ops-pol]", "policies: [missing]"))
    with pytest.raises(TopologyError) as e:
        parse(text, "lab.yaml")
    text_errors = "\n".join(e.value.errors)
    assert "remote 'nothing' is neither any, a CIDR nor a security group" in text_errors
    assert "'colour=x' is not a tag" in text_errors
    assert "unknown firewall policy 'missing'" in text_errors


def test_bodies_are_accepted_by_the_api() -> None:
    topo = parse(TOPOLOGY.format(name="sec"))
    api = ConfigApi(open_store("sqlite:///:memory:"))

    def post(body: dict[str, object]) -> str:
        (rtype, inner), = body.items()
        return str(api.create(rtype, {rtype: inner}, CTX)[rtype]["uuid"])

    post(lp.project_body("acme"))
    tags = {key: post(lp.tag_body(*key)) for key in topo.tags()}
    for ag in topo.address_groups:
        post(lp.address_group_body(ag))
    sgs = {g.name: post(lp.security_group_body(topo, g)) for g in topo.security_groups}
    policies = {}
    for pol in topo.firewall_policies:
        rules = [post(lp.firewall_rule_body(topo, pol, i, r)) for i, r in enumerate(pol.rules)]
        policies[pol.name] = post(lp.firewall_policy_body(pol, rules))
    shop = topo.policy_sets[0]
    aps = post(lp.policy_set_body("acme", shop.name, tags[("acme", "application=shop")],
                                  [policies[p] for p in shop.policies]))
    obj = api.db.objs[aps]
    assert [r["uuid"] for r in obj.refs["firewall_policy_refs"]] == [policies["shop-pol"]]
    db = api.db.objs[sgs["db"]]
    first = db.props["security_group_entries"]["policy_rule"][0]
    assert first["src_addresses"] == [{"security_group": "default-domain:acme:web"}]
    rule = api.db.objs[api.db.objs[policies["shop-pol"]].refs["firewall_rule_refs"][0]["uuid"]]
    assert rule.props["endpoint_1"]["tag_ids"] and rule.props["service"]["protocol_id"] == 6
