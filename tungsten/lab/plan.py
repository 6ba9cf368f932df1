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

from tungsten.lab.topology import (
    DOMAIN,
    AddressGroup,
    FirewallPolicy,
    FwRule,
    Policy,
    Rule,
    SecurityGroup,
    Topology,
    tag_expression,
)

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


def network_body(topo: Topology, name: str, policy_uuids: list[str],
                 tag_uuids: list[str] | None = None) -> dict[str, Any]:
    net = topo.network(name)
    prefix = ipaddress.ip_network(net.subnet)
    body: dict[str, Any] = {
        "fq_name": net.fq_name, "parent_type": "project",
        "network_ipam_refs": [{"to": IPAM, "attr": {"ipam_subnets": [{"subnet": {
            "ip_prefix": str(prefix.network_address), "ip_prefix_len": prefix.prefixlen}}]}}],
        "network_policy_refs": [{"uuid": u, "attr": {"sequence": {"major": i, "minor": 0}}}
                                for i, u in enumerate(policy_uuids)]}
    if tag_uuids:
        body["tag_refs"] = [{"uuid": u} for u in tag_uuids]
    return {"virtual-network": body}


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


def cni_conflist(lab: str, node: NodePlan, labdir: Path, network_fq: str) -> str:
    """The CNI network-config list a runtime on ``node`` uses: ``tungsten-cni`` talking to
    the node's agent, attaching to ``network_fq`` (the lab attaches workloads of other
    networks with the same config and their own ``network``)."""
    return json.dumps({
        "cniVersion": "1.1.0", "name": f"tungsten-{lab}",
        "plugins": [{"type": "tungsten-cni", "network": network_fq,
                     "agentSocket": str(node.socket(labdir))}]}, indent=2) + "\n"


def node_network(topo: Topology, node: str) -> str:
    """The network a node's CNI config names: its first workload's, else the first one."""
    name = next((w.network for w in topo.workloads if w.node == node), topo.networks[0].name
                if topo.networks else "default-virtual-network")
    if not topo.networks:
        return f"{DOMAIN}:default-project:{name}"
    return ":".join(topo.network(name).fq_name)


# -- security: tags, security groups, address groups, firewall (docs/security.md) -----------
ANY_PORTS = {"start_port": 0, "end_port": 65535}


def _port_range(ports: tuple[int, int]) -> dict[str, int]:
    lo, hi = ports
    return dict(ANY_PORTS) if lo == -1 else {"start_port": lo, "end_port": hi}


def tag_body(project: str, tag: str) -> dict[str, Any]:
    """A project-scoped tag ``type=value``."""
    kind, _, value = tag.partition("=")
    return {"tag": {"fq_name": [DOMAIN, project, tag], "parent_type": "project",
                    "tag_type_name": kind, "tag_value": value}}


def tag_refs_body(rtype: str, tag_uuids: list[str]) -> dict[str, Any]:
    return {rtype: {"tag_refs": [{"uuid": u} for u in tag_uuids]}}


def address_group_body(group: AddressGroup) -> dict[str, Any]:
    subnets = [{"ip_prefix": str(n.network_address), "ip_prefix_len": n.prefixlen}
               for n in map(ipaddress.ip_network, group.prefixes)]
    return {"address-group": {"fq_name": [DOMAIN, group.project, group.name],
                              "parent_type": "project",
                              "address_group_prefix": {"subnet": subnets}}}


def security_group_body(topo: Topology, group: SecurityGroup) -> dict[str, Any]:
    """An SG with TF's PolicyRuleType rules: the local end is ``local``; the remote end a
    CIDR, ``any`` or another group of the lab (by fq name); ports are destination ports."""
    rules = []
    for i, r in enumerate(group.rules):
        if r.remote in {g.name for g in topo.security_groups}:
            owner = next(g for g in topo.security_groups if g.name == r.remote)
            remote: dict[str, Any] = {"security_group": ":".join([DOMAIN, owner.project,
                                                                   owner.name])}
        elif r.remote == "any":
            remote = {"subnet": {"ip_prefix": "::" if r.ethertype == "IPv6" else "0.0.0.0",
                                 "ip_prefix_len": 0}}
        else:
            n = ipaddress.ip_network(r.remote)
            remote = {"subnet": {"ip_prefix": str(n.network_address),
                                 "ip_prefix_len": n.prefixlen}}
        local = {"security_group": "local"}
        src, dst = (remote, local) if r.direction == "ingress" else (local, remote)
        rules.append({
            "rule_uuid": str(uuidlib.uuid5(RULE_NS, f"{topo.name}/sg/{group.name}/{i}")),
            "direction": ">", "protocol": r.protocol, "ethertype": r.ethertype,
            "src_addresses": [src], "dst_addresses": [dst],
            "src_ports": [dict(ANY_PORTS)], "dst_ports": [_port_range(r.ports)]})
    return {"security-group": {"fq_name": [DOMAIN, group.project, group.name],
                               "parent_type": "project",
                               "security_group_entries": {"policy_rule": rules}}}


def _fw_endpoint(topo: Topology, project: str, text: str) -> dict[str, Any]:
    tags = tag_expression(text)
    if tags:
        return {"tags": tags}
    if text == "any":
        return {"any": True}
    if any(n.name == text for n in topo.networks):
        return {"virtual_network": ":".join(topo.network(text).fq_name)}
    group = next((a for a in topo.address_groups if a.name == text), None)
    if group is not None:
        return {"address_group": ":".join([DOMAIN, group.project, group.name])}
    n = ipaddress.ip_network(text)
    return {"subnet": {"ip_prefix": str(n.network_address), "ip_prefix_len": n.prefixlen}}


def firewall_rule_name(policy: FirewallPolicy, index: int) -> str:
    return f"{policy.name}-{index + 1}"


def firewall_rule_body(topo: Topology, policy: FirewallPolicy, index: int, rule: FwRule
                       ) -> dict[str, Any]:
    body: dict[str, Any] = {
        "fq_name": [DOMAIN, policy.project, firewall_rule_name(policy, index)],
        "parent_type": "project", "direction": rule.direction,
        "action_list": {"simple_action": rule.action},
        "service": {"protocol": rule.protocol, "src_ports": dict(ANY_PORTS),
                    "dst_ports": _port_range(rule.ports)},
        "endpoint_1": _fw_endpoint(topo, policy.project, rule.src),
        "endpoint_2": _fw_endpoint(topo, policy.project, rule.dst)}
    if rule.match_tags:
        body["match_tags"] = {"tag_list": list(rule.match_tags)}
    return {"firewall-rule": body}


def _sequenced(uuids: list[str]) -> list[dict[str, Any]]:
    return [{"uuid": u, "attr": {"sequence": str(i + 1)}} for i, u in enumerate(uuids)]


def firewall_policy_body(policy: FirewallPolicy, rule_uuids: list[str]) -> dict[str, Any]:
    return {"firewall-policy": {"fq_name": [DOMAIN, policy.project, policy.name],
                                "parent_type": "project",
                                "firewall_rule_refs": _sequenced(rule_uuids)}}


def policy_set_body(project: str, name: str, app_tag_uuid: str | None,
                    policy_uuids: list[str]) -> dict[str, Any]:
    """A set bound to an application tag (``app_tag_uuid``), or, without one, the policies of
    the project's default set (an update of the set the API made with the project)."""
    if app_tag_uuid is None:
        return {"application-policy-set": {"firewall_policy_refs": _sequenced(policy_uuids)}}
    return {"application-policy-set": {
        "fq_name": [DOMAIN, project, name], "parent_type": "project",
        "tag_refs": [{"uuid": app_tag_uuid}],
        "firewall_policy_refs": _sequenced(policy_uuids)}}


def port_security_body(sg_uuids: list[str], tag_uuids: list[str]) -> dict[str, Any]:
    return {"virtual-machine-interface": {
        "security_group_refs": [{"uuid": u} for u in sg_uuids],
        "tag_refs": [{"uuid": u} for u in tag_uuids]}}
