"""API change → enforcement on every node of a 3-node lab (``tungsten lab``), for an SG rule
and a firewall rule.

A generated topology: three nodes, one network, one workload per node, all in security group
``web`` and under the project's default application-policy-set (a firewall policy whose
first rule is the one changed).  Each change goes through the config API (one PUT); the time
counted is until every node's nftables table holds it — each node's ``nft list ruleset`` (in
the node's namespace) shows the rule's unique address (198.18.0.k for the group, 198.19.0.k
for the firewall rule) as a set element, polled by one
thread per node.  Changes: a rule added to the group (``sg-add``) and removed again
(``sg-remove``), the firewall rule's remote end changed (``fw-change``).  The poll itself
costs ~10-30 ms on a loaded machine: figures are upper bounds at that resolution.

Usage (root): ``.venv/bin/python -m bench.security.lab [--repeat N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from tungsten.lab.runner import api_call

NODES = ("c1", "c2", "c3")
TOPOLOGY = """\
name: {name}
nodes: [c1, c2, c3]
projects: [acme]
networks:
  - {{name: shop, project: acme, subnet: 198.51.100.0/24}}
workloads:
  - {{name: w1, node: c1, network: shop, security_groups: [web]}}
  - {{name: w2, node: c2, network: shop, security_groups: [web]}}
  - {{name: w3, node: c3, network: shop, security_groups: [web]}}
security_groups:
  - name: web
    project: acme
    rules:
      - {{direction: egress, remote: any}}
      - {{direction: ingress, remote: web}}
firewall_policies:
  - name: pol
    project: acme
    rules:
      - {{action: deny, protocol: tcp, ports: "7000", from: any, to: 203.0.113.200/32,
         direction: "<>"}}
      - {{action: pass, from: any, to: any, direction: "<>"}}
application_policy_sets:
  - {{name: default, project: acme, policies: [pol]}}
"""
DOMAIN = "default-domain"


def say(msg: str) -> None:
    print(f"[bench/security/lab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


class Lab:
    def __init__(self) -> None:
        self.name = "sb" + secrets.token_hex(3)
        self.tmp = Path(tempfile.mkdtemp(prefix="tungsten-bench-sec-"))
        self.env = {**os.environ, "TUNGSTEN_STATE_DIR": str(self.tmp / "state")}
        self.url = ""

    def lab(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tungsten", "lab", *args], env=self.env,
                              capture_output=True, text=True, timeout=600, check=False)

    def up(self) -> None:
        topo = self.tmp / "lab.yaml"
        topo.write_text(TOPOLOGY.format(name=self.name))
        r = self.lab("up", str(topo))
        if r.returncode != 0:
            raise RuntimeError(f"lab up failed: {r.stderr.strip()[-2000:]}")
        status = json.loads(self.lab("status", self.name, "--json").stdout)
        self.url = str(status["controller"])

    def down(self) -> None:
        self.lab("down", self.name)

    def uuid(self, kind: str, *fq: str) -> str:
        return str(api_call(self.url, "POST", "/fqname-to-id",
                            {"type": kind, "fq_name": [DOMAIN, *fq]})["uuid"])

    def netns(self, node: str) -> str:
        return f"tl-{self.name}-{node}"


def _holds(netns: str, addr: str) -> bool:
    r = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "ruleset"],
                       capture_output=True, text=True, timeout=30, check=False)
    return re.search(re.escape(addr) + r"(?![0-9])", r.stdout) is not None


def timed(lab: Lab, change: Any, text: str, present: bool, timeout: float = 30.0
          ) -> dict[str, float]:
    """Seconds from the start of ``change()`` (an API call) until every node's ruleset
    shows (``present``) or no longer shows ``text``; per node and the max."""
    done: dict[str, float] = {}
    start = threading.Event()
    t0 = 0.0

    def poll(node: str) -> None:
        start.wait()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if _holds(lab.netns(node), text) == present:
                done[node] = round(time.monotonic() - t0, 3)
                return
            time.sleep(0.005)

    threads = [threading.Thread(target=poll, args=(n,)) for n in NODES]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    start.set()
    change()
    for t in threads:
        t.join()
    if len(done) != len(NODES):
        raise RuntimeError(f"not enforced on {sorted(set(NODES) - set(done))} in {timeout} s")
    return {**done, "max": max(done.values())}


def run(repeat: int) -> dict[str, Any]:
    lab = Lab()
    samples: dict[str, list[dict[str, float]]] = {"sg-add": [], "sg-remove": [],
                                                  "fw-change": []}
    try:
        say(f"lab {lab.name} up (3 nodes)")
        lab.up()
        sg = lab.uuid("security-group", "acme", "web")
        fw = lab.uuid("firewall-rule", "acme", "pol-1")
        for k in range(1, repeat + 1):
            body = api_call(lab.url, "GET", f"/security-group/{sg}")["security-group"]
            rules = body["security_group_entries"]["policy_rule"]
            addr = f"198.18.0.{k}"
            extra = {"rule_uuid": str(uuidlib.uuid4()), "direction": ">", "protocol": "tcp",
                     "ethertype": "IPv4",
                     "src_addresses": [{"subnet": {"ip_prefix": addr, "ip_prefix_len": 32}}],
                     "dst_addresses": [{"security_group": "local"}],
                     "src_ports": [{"start_port": -1, "end_port": -1}],
                     "dst_ports": [{"start_port": 7000 + k, "end_port": 7000 + k}]}

            def put_sg(entries: list[dict[str, Any]]) -> None:
                api_call(lab.url, "PUT", f"/security-group/{sg}", {"security-group": {
                    "security_group_entries": {"policy_rule": entries}}})

            samples["sg-add"].append(timed(lab, lambda r=rules, e=extra: put_sg([*r, e]),
                                           addr, True))
            samples["sg-remove"].append(timed(lab, lambda r=rules: put_sg(r), addr, False))
            fw_addr = f"198.19.0.{k}"
            samples["fw-change"].append(timed(lab, lambda a=fw_addr: api_call(
                lab.url, "PUT", f"/firewall-rule/{fw}", {"firewall-rule": {"endpoint_2": {
                    "subnet": {"ip_prefix": a, "ip_prefix_len": 32}}}}), fw_addr, True))
            say(f"round {k}: " + ", ".join(f"{n} {s[-1]['max']} s" for n, s in samples.items()))
    finally:
        lab.down()
    out: dict[str, Any] = {}
    for name, runs in samples.items():
        maxes = [r["max"] for r in runs]
        out[name] = {"max_s": max(maxes), "median_s": round(statistics.median(maxes), 3),
                     "per_node_median_s": {n: round(statistics.median(r[n] for r in runs), 3)
                                           for n in NODES},
                     "runs": runs}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/security/lab needs root (network namespaces)")
    print(json.dumps(run(args.repeat), indent=2))


if __name__ == "__main__":
    main()
