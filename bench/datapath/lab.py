"""The Tungsten side of the datapath benchmark: a two-node lab and its policy of N rules.

Two networks, ``red`` (198.51.100.0/24) and ``blue`` (203.0.113.0/24), joined by one network
policy attached to both.  Workload ``a`` (red) is on node n1, ``b`` (blue) on n1 as well (the
same-node pair a -> b) and ``c`` (blue) on n2 (the cross-node pair a -> c).  Two networks,
because TF's implicit first rule passes traffic inside a network before any policy rule: only
traffic between networks walks the policy.

A phase with N rules puts N non-matching rules (TCP between /32s of 198.18.0.0/15, each with
its own destination port) *before* the one ``red <> blue`` pass rule, so the first packet of
every benchmark flow walks all N, in the ACL of the source network (iif) and of the
destination network (oif) -- on one node for the same-node pair, one on each node for the
cross-node pair.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tungsten.lab.runner import LabError, agent_call, api_call

FQ = ["default-domain", "default-project"]
POLICY = "bench"

TOPOLOGY = """\
name: {name}
nodes: [n1, n2]
networks:
  - {{name: red,  subnet: 198.51.100.0/24}}
  - {{name: blue, subnet: 203.0.113.0/24}}
workloads:
  - {{name: a, node: n1, network: red}}
  - {{name: b, node: n1, network: blue}}
  - {{name: c, node: n2, network: blue}}
policies:
  - name: {policy}
    networks: [red, blue]
    rules:
      - {{action: pass, src: red, dst: blue, direction: "<>"}}
"""

ANY_PORT = [{"start_port": -1, "end_port": -1}]


def _subnet(ip: str) -> dict[str, Any]:
    return {"subnet": {"ip_prefix": ip, "ip_prefix_len": 32}}


def policy_rules(n: int) -> list[dict[str, Any]]:
    """N rules that never match the benchmark's traffic, then the one that passes it."""
    rules: list[dict[str, Any]] = []
    for i in range(n):
        port = 1000 + i % 60000
        rules.append({
            "direction": ">", "protocol": "tcp", "ethertype": "IPv4",
            "src_addresses": [_subnet(f"198.18.{i // 256 % 256}.{i % 256}")],
            "dst_addresses": [_subnet(f"198.19.{i // 256 % 256}.{i % 256}")],
            "src_ports": ANY_PORT, "dst_ports": [{"start_port": port, "end_port": port}],
            "action_list": {"simple_action": "pass"}})
    rules.append({
        "direction": "<>", "protocol": "any", "ethertype": "IPv4",
        "src_addresses": [{"virtual_network": ":".join([*FQ, "red"])}],
        "dst_addresses": [{"virtual_network": ":".join([*FQ, "blue"])}],
        "src_ports": ANY_PORT, "dst_ports": ANY_PORT,
        "action_list": {"simple_action": "pass"}})
    return rules


class BenchLab:
    """A lab of our own in a private state directory, taken down by ``down()``."""

    def __init__(self, state_dir: Path, say: Callable[[str], None]) -> None:
        self.name = "dpb" + secrets.token_hex(3)
        self.state_dir = state_dir
        self.say = say
        self.status: dict[str, Any] = {}
        self.started = False
        self.policy_uuid = ""
        self.base_acl: dict[str, int] = {}  # port uuid -> ACL length with 0 rules

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TUNGSTEN_STATE_DIR": str(self.state_dir)}

    def _lab(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tungsten", "lab", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def up(self) -> None:
        topo = self.state_dir / "datapath-bench.yaml"
        topo.write_text(TOPOLOGY.format(name=self.name, policy=POLICY))
        self.started = True  # a failed `up` cleans up after itself; `down` is safe anyway
        r = self._lab("up", str(topo))
        if r.returncode != 0:
            raise LabError(f"tungsten lab up failed: {r.stderr.strip()[-1000:]}")
        r = self._lab("status", self.name, "--json")
        if r.returncode != 0:
            raise LabError(f"tungsten lab status failed: {r.stderr.strip()}")
        self.status = json.loads(r.stdout)
        pols = api_call(self.url, "GET", "/network-policys")["network-policys"]
        self.policy_uuid = next(p["uuid"] for p in pols if p["fq_name"] == [*FQ, POLICY])
        self._settle_base()

    def down(self) -> None:
        if self.started:
            r = self._lab("down", self.name)
            if r.returncode != 0:
                self.say(f"tungsten lab down {self.name}: {r.stderr.strip()}")
            self.started = False

    @property
    def url(self) -> str:
        return str(self.status["controller"])

    def workload(self, name: str) -> dict[str, Any]:
        return next(w for w in self.status["workloads"] if w["name"] == name)

    def ip_of(self, name: str) -> str:
        return str(self.workload(name)["ip"]).split("/")[0]

    def workload_ns(self, name: str) -> str:
        return str(self.workload(name)["netns"])

    # -- the policy ---------------------------------------------------------------------
    def _acl_lengths(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in self.status["nodes"]:
            for entry in agent_call(Path(node["agent_socket"]), "GET", "/acls"):
                out[entry["port"]] = len(entry.get("acl") or [])
        return out

    def _settle_base(self) -> None:
        """Wait until every port has its ACL, then record their sizes.  An agent's
        ``GET /acls`` shows what its datapath last *installed* (the linux datapath records
        a state only once the kernel, nftables included, holds it), so it is the signal
        that the kernel is ready; the nftables layout itself (rules compiled into sets) is
        not the benchmark's business."""
        deadline = time.monotonic() + 60
        while True:
            acls = self._acl_lengths()
            if len(acls) == 3 and all(acls.values()):
                self.base_acl = acls
                return
            if time.monotonic() > deadline:
                raise LabError(f"lab ACLs not in place after 60 s: agents {acls}")
            time.sleep(0.2)

    def set_rules(self, n: int, timeout: float = 300) -> float:
        """Give the policy N non-matching rules before its pass rule; wait until both agents
        report the new ACLs and the kernel holds them.  Returns the seconds that took."""
        t0 = time.monotonic()
        api_call(self.url, "PUT", f"/network-policy/{self.policy_uuid}", {"network-policy": {
            "network_policy_entries": {"policy_rule": policy_rules(n)}}})
        want_acl = {k: v + n for k, v in self.base_acl.items()}
        while True:
            acls = self._acl_lengths()
            if acls == want_acl:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise LabError(f"policy with {n} rules not applied after {timeout:g} s "
                               f"(ACL lengths {acls}, want {want_acl})")
            time.sleep(0.3)
