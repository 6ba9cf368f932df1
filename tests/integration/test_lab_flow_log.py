"""The flow log in a real lab (root): a network policy's rules get the log action through the
config API; a denied attempt and an admitted connection between nodes are then listed by
``tungsten flows --lab --node`` from the agents' recorders, with the deciding rule (and the
network whose ACL holds it); after the agent of a node is stopped, its records are still
shown from its files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.labkit import (
    NEEDS_ROOT,
    RED_BLUE_POLICY,
    Lab,
    assert_nothing_left,
    lab_session,
)
from tungsten.lab import plan as lp
from tungsten.lab.runner import api_call
from tungsten.lab.topology import parse

pytestmark = NEEDS_ROOT

# the red/blue lab with a deny rule for 5433 before the pass rule for 5432
DENY_5433 = '      - {{action: deny, protocol: tcp, src: red, dst: blue, dst_ports: "5433", ' \
    'direction: ">"}}\n'
TOPOLOGY = RED_BLUE_POLICY.replace("    rules:\n", "    rules:\n" + DENY_5433, 1)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with lab_session(tmp_path, TOPOLOGY, "f", Lab, up=True, port=5432) as lab:
        yield lab


def _log_every_rule(lab: Lab) -> list[str]:
    """Turn on ``log`` on the policy's rules (as an operator would); their uuids."""
    topo = parse(lab.file.read_text())
    pol = topo.policies[0]
    body = lp.policy_body(topo, pol)
    rules = body["network-policy"]["network_policy_entries"]["policy_rule"]
    for r in rules:
        r["action_list"]["log"] = True
    url = lab.status()["controller"]
    uid = api_call(url, "POST", "/fqname-to-id", {"type": "network-policy",
                                              "fq_name": body["network-policy"]["fq_name"]})
    api_call(url, "PUT", f"/network-policy/{uid['uuid']}", body)
    return [str(r["rule_uuid"]) for r in rules]


def _flows(lab: Lab, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tungsten", "flows", "--lab", lab.name,
                           "--node", node, *args], env=lab.env, capture_output=True,
                          text=True, timeout=120, check=False)


def _records(lab: Lab) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for node in ("compute1", "compute2"):
        r = _flows(lab, node, "--json", "--last", "0")
        assert r.returncode == 0, r.stderr
        out += [dict(x, node=node) for x in json.loads(r.stdout)["records"] or ()]
    return out


def test_lab_flows_lists_denied_and_admitted_with_the_rule(lab: Lab) -> None:
    deny, allow = _log_every_rule(lab)
    assert deny == str(uuidlib.uuid5(lp.RULE_NS, f"{lab.name}/red-to-blue/0"))
    ip = lab.ips()
    with lab.serving({"db1": (5432, 5433)}):
        deadline = time.monotonic() + 60  # the config reaches both agents' datapaths
        while not (lab.tcp("web1", ip["db1"], 5432) and
                   any(r["event"] == "decision" and r["rule"] == allow
                       for r in _records(lab))):
            assert time.monotonic() < deadline, "the logged pass rule never logged"
            time.sleep(1)
        assert not lab.tcp("web1", ip["db1"], 5433)
        deadline = time.monotonic() + 30
        while True:
            recs = _records(lab)
            denied = [r for r in recs if r["event"] == "decision" and r["rule"] == deny]
            started = [r for r in recs if r["event"] == "start" and r["rule"] == allow]
            if denied and started:
                break
            assert time.monotonic() < deadline, f"not recorded: {recs}"
            time.sleep(1)
    d = denied[0]
    assert (d["action"], d["proto"], d["src"], d["dst"], d["dport"]) == (
        "deny", 6, ip["web1"], ip["db1"], 5433)
    assert d["rule_info"]["kind"] == "acl" and d["rule_info"]["network"].endswith(
        (":red", ":blue"))
    assert started[0]["zone"] > 0 and started[0]["dport"] == 5432
    # `tungsten flows` names the rule's network policy, from the lab's config API
    assert d["rule_info"]["policy"].endswith(":acme:red-to-blue"), d
    text = _flows(lab, denied[0]["node"], "--action", "deny")
    assert text.returncode == 0, text.stderr
    assert deny in text.stdout and allow not in text.stdout.split("logged rules:")[0]
    assert ":red-to-blue, acl of" in text.stdout, text.stdout
    # the agent stops: its records are still shown, from its files, with a note
    lab.process(f"agent:{d['node']}").terminate()
    deadline = time.monotonic() + 30
    while True:
        r = _flows(lab, d["node"], "--action", "deny", "--json")
        data = json.loads(r.stdout) if r.returncode == 0 else {}
        if any("from" in n and "flows.jsonl" in n for n in data.get("notes", ())):
            break
        assert time.monotonic() < deadline, r.stderr or r.stdout
        time.sleep(0.5)
    assert any(x["rule"] == deny for x in data["records"])
    r = lab.run("down", lab.name)
    assert r.returncode == 0, r.stderr
    assert_nothing_left(lab)
