"""Security groups, tags and firewall policies in a real lab (root): the whole chain — the
topology file, config API, transformer, control node (SG ids and tags carried by routes),
agents, linux datapath — as a traffic matrix across two nodes.

Project ``acme`` is tagged ``site=lab``; network ``shop`` is tagged ``application=shop``
(inherited by its workloads); workloads add ``tier=...`` and labels.  ``db`` is in group
``db`` (ingress tcp/5432 from group ``web`` only, the remote-group rule matched against the
route of a workload on the other node); ``web1`` is in group ``web``.  The shop's policy set
lets tier web (with label ``blue``) reach tier db on 5432 and denies everything else into the
database; the project's default set lets the ``ops`` address group in on 22.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.labkit import NEEDS_ROOT, Lab, assert_nothing_left, lab_session
from tests.waits import wait_for

pytestmark = NEEDS_ROOT

TOPOLOGY = """\
name: {name}
nodes: [compute1, compute2]
projects: [acme]
project_tags: {{acme: [site=lab]}}
networks:
  - {{name: shop, project: acme, subnet: 198.51.100.0/24, tags: [application=shop]}}
workloads:
  - {{name: web1, node: compute1, network: shop, security_groups: [web],
     tags: [tier=web, label=blue]}}
  - {{name: web2, node: compute1, network: shop, security_groups: [web], tags: [tier=web]}}
  - {{name: db, node: compute2, network: shop, security_groups: [db], tags: [tier=db]}}
  - {{name: free, node: compute2, network: shop}}
address_groups:
  - {{name: ops, project: acme, prefixes: [198.51.100.0/30]}}
security_groups:
  - name: web
    project: acme
    rules:
      - {{direction: egress, remote: any}}
      - {{direction: ingress, remote: any}}
  - name: db
    project: acme
    rules:
      - {{direction: ingress, protocol: tcp, ports: "5432", remote: web}}
      - {{direction: ingress, protocol: tcp, ports: "22", remote: any}}
      - {{direction: egress, remote: any}}
firewall_policies:
  - name: shop-pol
    project: acme
    rules:
      - {{action: pass, protocol: tcp, ports: "5432", from: "tier=web & label=blue",
         to: "tier=db"}}
      - {{action: deny, from: any, to: "tier=db"}}
      - {{action: pass, from: any, to: any, match_tags: [application]}}
  - name: ops-pol
    project: acme
    rules:
      - {{action: pass, protocol: tcp, ports: "22", from: ops, to: any}}
application_policy_sets:
  - {{name: shop-aps, project: acme, application: shop, policies: [shop-pol]}}
  - {{name: default, project: acme, policies: [ops-pol]}}
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with lab_session(tmp_path, TOPOLOGY, "s", Lab, up=True) as lab:
        yield lab


def test_security_matrix(lab: Lab) -> None:
    ip = lab.ips()
    with lab.serving({w: (22, 5432, 8080) for w in ("web1", "web2", "db", "free")}):
        # web1: group web (remote group of db's rule, across nodes) and the label: admitted.
        # `lab up` returns once each port is installed on its own node; the remote-group
        # member reaches the other node with its route a moment later: wait for it (bounded)
        wait_for("web1 -> db tcp/5432 (remote group across nodes)",
                 lambda: lab.tcp("web1", ip["db"], 5432), timeout=30, every=0.5)
        # web2: in group web, but without the label: the firewall denies it
        assert not lab.tcp("web2", ip["db"], 5432)
        # free: no group (unfiltered by SGs) and not in group web: db's SG denies 5432
        assert not lab.tcp("free", ip["db"], 5432)
        # 22 into db: its SG allows it from anywhere, but the shop set denies everything
        # else into tier db
        assert not lab.tcp("web2", ip["db"], 22)
        # inside the application, between workloads without tiers' rules: match_tags passes
        assert lab.tcp("db", ip["free"], 8080)
        assert lab.tcp("web2", ip["web1"], 8080)
    r = lab.run("down", lab.name)
    assert r.returncode == 0, r.stderr
    assert_nothing_left(lab)
