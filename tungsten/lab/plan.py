"""What a lab is made of (pure): names, addresses and config API bodies from a ``Topology``.

Nothing here touches the system; ``tungsten.lab.runner`` carries the plan out.
"""

from __future__ import annotations

import ipaddress
import json
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tungsten.lab.topology import DOMAIN, Policy, Rule, Topology

UNDERLAY = ipaddress.ip_network("192.0.2.0/24")  # documentation range (RFC 5737)
UNDERLAY_IF = "ul0"  # a node's underlay interface, inside its namespace
BRIDGE = "br0"  # the underlay bridge, inside the underlay namespace
IPAM = [DOMAIN, "default-project", "default-network-ipam"]
RULE_NS = uuidlib.UUID("6c0b8a51-7a5e-4c3b-9d8e-2f1a9b0c7d31")


def netns_name(lab: str, what: str) -> str:
    """``tl-<lab>-<node|workload|ul>``: every namespace of a lab is named from the lab."""
    return f"tl-{lab}-{what}"


@dataclass(frozen=True)
class NodePlan:
    name: str
    index: int  # 1-based
    netns: str
    underlay_ip: str
    bridge_port: str  # the veth end on the underlay bridge (in the underlay namespace)

    def socket(self, labdir: Path) -> Path:
        return labdir / f"{self.name}.sock"

    def state_dir(self, labdir: Path) -> Path:
        return labdir / self.name

    def cni_conf(self, labdir: Path) -> Path:
        return labdir / "cni" / self.name / "10-tungsten.conflist"


@dataclass(frozen=True)
class WorkloadPlan:
    name: str
    node: str
    network: str
    network_fq: str  # domain:project:name
    netns: str


@dataclass(frozen=True)
class LabPlan:
    name: str
    underlay_netns: str
    nodes: tuple[NodePlan, ...]
    workloads: tuple[WorkloadPlan, ...]

    @property
    def namespaces(self) -> list[str]:
        return [self.underlay_netns, *(n.netns for n in self.nodes),
                *(w.netns for w in self.workloads)]

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)


def plan(topo: Topology) -> LabPlan:
    hosts = list(UNDERLAY.hosts())
    nodes = tuple(NodePlan(n, i, netns_name(topo.name, n), str(hosts[i - 1]), f"ul{i}")
                  for i, n in enumerate(topo.nodes, start=1))
    wls = tuple(WorkloadPlan(w.name, w.node, w.network,
                             ":".join(topo.network(w.network).fq_name),
                             netns_name(topo.name, w.name)) for w in topo.workloads)
    return LabPlan(topo.name, netns_name(topo.name, "ul"), nodes, wls)


# -- config API bodies (TF's VNC REST shapes) ---------------------------------------------
def project_body(name: str) -> dict[str, Any]:
    return {"project": {"fq_name": [DOMAIN, name], "parent_type": "domain"}}


def network_body(topo: Topology, name: str, policy_uuids: list[str]) -> dict[str, Any]:
    net = topo.network(name)
    prefix = ipaddress.ip_network(net.subnet)
    return {"virtual-network": {
        "fq_name": net.fq_name, "parent_type": "project",
        "network_ipam_refs": [{"to": IPAM, "attr": {"ipam_subnets": [{"subnet": {
            "ip_prefix": str(prefix.network_address), "ip_prefix_len": prefix.prefixlen}}]}}],
        "network_policy_refs": [{"uuid": u, "attr": {"sequence": {"major": i, "minor": 0}}}
                                for i, u in enumerate(policy_uuids)]}}


def _address(topo: Topology, end: str) -> dict[str, Any]:
    if any(n.name == end for n in topo.networks):
        return {"virtual_network": ":".join(topo.network(end).fq_name)}
    net = ipaddress.ip_network(end)
    return {"subnet": {"ip_prefix": str(net.network_address), "ip_prefix_len": net.prefixlen}}


def rule_body(topo: Topology, policy: Policy, index: int, rule: Rule) -> dict[str, Any]:
    (slo, shi), (dlo, dhi) = rule.src_ports, rule.dst_ports
    return {
        "rule_uuid": str(uuidlib.uuid5(RULE_NS, f"{topo.name}/{policy.name}/{index}")),
        "direction": rule.direction, "protocol": rule.protocol, "ethertype": "IPv4",
        "src_addresses": [_address(topo, rule.src)],
        "src_ports": [{"start_port": slo, "end_port": shi}],
        "dst_addresses": [_address(topo, rule.dst)],
        "dst_ports": [{"start_port": dlo, "end_port": dhi}],
        "action_list": {"simple_action": rule.action}}


def policy_body(topo: Topology, policy: Policy) -> dict[str, Any]:
    return {"network-policy": {
        "fq_name": [DOMAIN, policy.project, policy.name], "parent_type": "project",
        "network_policy_entries": {"policy_rule": [
            rule_body(topo, policy, i, r) for i, r in enumerate(policy.rules)]}}}


def policies_of(topo: Topology, network: str) -> list[str]:
    """Names of the policies attached to ``network``, in file order."""
    return [p.name for p in topo.policies if network in p.networks]


def cni_conflist(lab: str, node: NodePlan, labdir: Path) -> str:
    """A placeholder CNI network-config list for a runtime on ``node`` (the plugin comes with
    the CNI issue)."""
    return json.dumps({
        "cniVersion": "1.0.0", "name": f"tungsten-{lab}",
        "plugins": [{"type": "tungsten-cni", "agent_socket": str(node.socket(labdir)),
                     "netns_of_node": node.netns}]}, indent=2) + "\n"
