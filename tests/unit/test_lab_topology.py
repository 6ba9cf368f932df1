"""The lab topology file: validation with file positions, and the plan made from it."""

from __future__ import annotations

import pytest

from tungsten.lab import plan as lp
from tungsten.lab.topology import SCHEMA, TopologyError, parse

GOOD = """\
name: demo                       # namespaces and processes are named from it
nodes: [compute1, compute2]
projects: [acme, globex]
networks:
  - {name: red,   project: acme,   subnet: 198.51.100.0/24}
  - {name: blue,  project: acme,   subnet: 203.0.113.0/24}
  - {name: green, project: globex, subnet: 198.51.100.0/24}   # overlapping on purpose
workloads:
  - {name: web1, node: compute1, network: red}
  - {name: db1,  node: compute2, network: blue}
policies:
  - name: red-to-blue
    project: acme
    networks: [red, blue]
    rules:
      - {action: pass, protocol: tcp, src: red, dst: blue, dst_ports: "5432", direction: ">"}
      - {action: deny, src: 192.0.2.0/24, dst: blue, dst_ports: 8000-8100}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(TopologyError) as e:
        parse(text, "lab.yaml")
    return e.value.errors


def test_good_file() -> None:
    t = parse(GOOD, "lab.yaml")
    assert t.name == "demo" and t.nodes == ("compute1", "compute2")
    assert [n.fq_name for n in t.networks][2] == ["default-domain", "globex", "green"]
    assert t.workloads[1].node == "compute2"
    rule = t.policies[0].rules[0]
    assert (rule.protocol, rule.dst_ports, rule.src_ports) == ("tcp", (5432, 5432), (-1, -1))
    assert t.policies[0].rules[1].dst_ports == (8000, 8100)
    assert t.policies[0].rules[1].direction == ">"


def test_overlapping_subnets_across_projects_are_allowed_but_not_within_one() -> None:
    parse(GOOD)  # red and green overlap, in two projects
    bad = GOOD.replace("{name: green, project: globex", "{name: green, project: acme")
    (err,) = errors_of(bad)
    assert err.startswith("lab.yaml:7:") and "overlaps 'red'" in err


def test_unknown_key_with_position() -> None:
    errs = errors_of(GOOD.replace("{name: db1,  node: compute2,", "{name: db1,  nod: compute2,"))
    assert ("lab.yaml:10:18: unknown key 'nod' in workloads/1 (allowed: name, network, node, "
            "security_groups, tags)") in errs
    (err,) = errors_of(GOOD + "colour: blue\n")
    assert err.startswith("lab.yaml:18:1: unknown key 'colour'"), err


def test_bad_subnet() -> None:
    (err,) = errors_of(GOOD.replace("203.0.113.0/24", "203.0.113.1/24"))
    assert err.startswith("lab.yaml:6:44: network 'blue': bad subnet '203.0.113.1/24'"), err
    (err,) = errors_of(GOOD.replace("203.0.113.0/24", "not-a-subnet"))
    assert "bad subnet 'not-a-subnet'" in err


def test_unknown_references() -> None:
    errs = errors_of(GOOD.replace("node: compute2, network: blue",
                                  "node: compute3, network: purple"))
    assert errs[0].startswith("lab.yaml:10:24: workload 'db1': unknown node 'compute3'")
    assert errs[1].startswith("lab.yaml:10:43: workload 'db1': unknown network 'purple'")
    (err,) = errors_of(GOOD.replace("networks: [red, blue]", "networks: [red, pink]"))
    assert err.startswith("lab.yaml:14:21: policy 'red-to-blue': unknown network 'pink'")
    (err,) = errors_of(GOOD.replace("projects: [acme, globex]", "projects: [acme]"))
    assert "unknown project 'globex'" in err and err.startswith("lab.yaml:7:")
    (err,) = errors_of(GOOD.replace("dst: blue, dst_ports: 8000", "dst: nowhere, dst_ports: 8000"))
    assert "dst 'nowhere' is neither a network of the lab nor a CIDR" in err


def test_bad_values() -> None:
    (err,) = errors_of(GOOD.replace("action: pass", "action: allow"))
    assert err.startswith("lab.yaml:16:18:") and "expected pass or deny" in err
    (err,) = errors_of(GOOD.replace('dst_ports: "5432"', 'dst_ports: "http"'))
    assert "dst_ports" in err and '"8000-8100"' in err
    (err,) = errors_of(GOOD.replace("name: demo ", "name: Demo_Lab "))
    assert err.startswith("lab.yaml:1:7: name: bad value 'Demo_Lab'")
    (err,) = errors_of("name: x\nnodes: [a, a]\n")
    assert "the name is taken already" in err
    (err,) = errors_of("name: x\nnodes: [a]\nname: y\n")
    assert err == "lab.yaml:3:1: duplicate key 'name'"
    (err,) = errors_of("name: x\nnodes: [a\n")
    assert err.startswith("lab.yaml:3:1: not valid YAML")
    (err,) = errors_of("name: x\n")
    assert "'nodes' is a required property" in err


def test_bad_port_ranges_with_positions() -> None:
    errs = errors_of(GOOD.replace("dst_ports: 8000-8100", "dst_ports: 8100-8000") + """\
security_groups:
  - name: web
    rules:
      - {direction: ingress, protocol: tcp, ports: "70000"}
firewall_policies:
  - name: fw
    rules:
      - {action: pass, from: any, to: any, ports: "90-80"}
""")
    assert errs == ["lab.yaml:17:65: policy 'red-to-blue' rule 2: bad port range '8100-8000'",
                    "lab.yaml:21:52: security group 'web' rule 1: bad port range '70000'",
                    "lab.yaml:25:51: firewall policy 'fw' rule 1: bad port range '90-80'"]


def test_plan_and_api_bodies() -> None:
    t = parse(GOOD)
    p = lp.plan(t)
    assert p.namespaces == ["tl-demo-ul", "tl-demo-compute1", "tl-demo-compute2",
                            "tl-demo-web1", "tl-demo-db1"]
    assert [n.underlay_ip for n in p.nodes] == ["192.0.2.1", "192.0.2.2"]
    assert p.workloads[0].network_fq == "default-domain:acme:red"
    body = lp.policy_body(t, t.policies[0])["network-policy"]
    r0, r1 = body["network_policy_entries"]["policy_rule"]
    assert r0["src_addresses"] == [{"virtual_network": "default-domain:acme:red"}]
    assert r0["dst_ports"] == [{"start_port": 5432, "end_port": 5432}]
    assert r1["src_addresses"] == [{"subnet": {"ip_prefix": "192.0.2.0", "ip_prefix_len": 24}}]
    assert r0["rule_uuid"] != r1["rule_uuid"]
    vn = lp.network_body(t, "red", ["u1"])["virtual-network"]
    assert vn["fq_name"] == ["default-domain", "acme", "red"]
    assert vn["network_policy_refs"][0]["uuid"] == "u1"
    assert lp.policies_of(t, "green") == []


def test_schema_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "lab.md").read_text()
    assert '"title": "Tungsten lab topology"' in doc
    assert SCHEMA["additionalProperties"] is False
