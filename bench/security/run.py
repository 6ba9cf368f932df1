"""Security benchmark: what network policies, security groups and firewall rules cost a
packet on the ``linux`` datapath, and how long a change takes to be enforced.

Two namespaced nodes joined by a veth underlay, one workload on each (the same network, so
the pair crosses VXLAN); the ``LinuxDatapath`` of each node is driven directly with states
built here (no controller: the numbers are the datapath's).  Phases:

- ``none``: no ACL, no security group, no firewall rule (the rule-free baseline);
- ``acl-N``: the network's ACL holds N deny rules that never match (TCP from /32s of
  198.18.0.0/15, each its own port), the allow-self rule and a deny-all;
- ``sg-N``: both ports in a group with N rules that never match plus the one that admits
  the pair (the sender's group);
- ``fw-N``: N firewall deny rules that never match before the one that passes;
- ``ag-10000``: a firewall rule whose source is an address group of 10,000 prefixes, one of
  them holding the sender.

Ordered lists (ACLs, firewall rules) are compiled into one set lookup per run of rules with
the same action, SG rules into one lookup (``docs/security.md``): the per-packet cost does
not grow with N.  Every phase runs ``--rounds`` times, interleaved, and each TCP figure is a
ratio to the ``none`` phase of its own round.

Per phase: TCP goodput (iperf3, one stream), ping RTT of an established flow, RTT of the
first packet of new flows, the apply time of the phase's state (the slowest node; a node
enforces a state when ``apply`` returns: one nft transaction, then the conntrack
re-evaluation), a no-op re-apply, and what enforcing an API change costs the datapath: the
same state with one rule more (``change_add_ms``), and without it again
(``change_remove_ms``, with the re-evaluation of established flows).

Then, end to end: an SG rule and a firewall rule changed through the config API until every
node of a 3-node ``tungsten lab`` enforces it (``lab.py``), and until every agent of a
``tungsten sim`` of 200 agents holds it (``SimPlan.security_change``).

Usage (root): ``.venv/bin/python -m bench.security.run [--quick] [--docs] [--no-lab]
[--no-sim]``; results in ``bench/results/security-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, machine
from bench.datapath import measure
from bench.security import lab as security_lab
from tungsten.agent.state import ifname_for
from tungsten.datapath.base import DatapathState, EndpointInfo, LocalPort, NextHop, Vrf
from tungsten.datapath.linux import LinuxDatapath, plumb

UL = {"n1": "192.0.2.1", "n2": "192.0.2.2"}
NET, VNI, GW, MTU = "default-domain:p:bench", 4401, "198.51.100.254", 1450
A, B = "198.51.100.1", "198.51.100.2"
SG_A, SG_B = 8400001, 8400002
ANY = {"start_port": -1, "end_port": -1}


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)


def sg_rule(uuid: str, remote: dict[str, Any], ingress: bool, proto: str = "any",
            port: int | None = None, local: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pass rule between ``remote`` and ``local`` (default: any network)."""
    local = local or {"virtual_network": "any"}
    src, dst = (remote, local) if ingress else (local, remote)
    return {"rule_uuid": uuid, "direction": ">", "action_list": {"simple_action": "pass"},
            "match_condition": {"protocol": proto, "ethertype": "IPv4", "src_address": src,
                                "dst_address": dst, "src_port": ANY,
                                "dst_port": ANY if port is None else
                                {"start_port": port, "end_port": port}}}


def groups(n: int, extra: bool = False) -> dict[int, dict[str, Any]]:
    filler = [sg_rule(f"f{i}", {"subnet": {"ip_prefix": f"198.18.{i // 256 % 256}.{i % 256}",
                                           "ip_prefix_len": 32}}, True, "6", 1000 + i % 60000)
              for i in range(n)]
    if extra:  # one more rule: the change whose enforcement is timed
        filler.append(sg_rule("extra", {"subnet": {"ip_prefix": "198.19.255.1",
                                                   "ip_prefix_len": 32}}, True, "6", 9999))
    out = {}
    for me, other in ((SG_A, SG_B), (SG_B, SG_A)):
        out[me] = {"id": me, "egress": [sg_rule("out", {"virtual_network": "any"}, False)],
                   "ingress": [*filler, sg_rule("peer", {"security_group": str(other)},
                                                True)]}
    return out


def fw_rule(uuid: str, src: dict[str, Any], port: int | None = None,
            action: str = "pass") -> dict[str, Any]:
    ports = {"start_port": 0, "end_port": 65535} if port is None else {"start_port": port,
                                                                        "end_port": port}
    return {"uuid": uuid, "name": uuid, "direction": "<>",
            "action_list": {"simple_action": action}, "endpoint_1": src,
            "endpoint_2": {"any": True}, "match_tag_types": [],
            "service": {"protocol_id": 6 if port is not None else 0,
                        "src_ports": {"start_port": 0, "end_port": 65535}, "dst_ports": ports}}


def firewall(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"d": {"uuid": "d", "name": "d:p:default-application-policy-set",
                  "application_tag": None, "all_applications": True,
                  "policies": [{"uuid": "p", "name": "p", "sequence": "1", "rules": rules}]}}


def acl_rule(uuid: str, src: dict[str, Any], dst: dict[str, Any], action: str,
             proto: str = "any", port: int | None = None) -> dict[str, Any]:
    return {"rule_uuid": uuid, "direction": ">", "action_list": {"simple_action": action},
            "match_condition": {"protocol": proto, "src_address": src, "dst_address": dst,
                                "src_port": ANY, "dst_port": ANY if port is None else
                                {"start_port": port, "end_port": port}}}


def acl(n: int, extra: bool = False) -> tuple[dict[str, Any], ...]:
    """N deny rules that never match (TCP from /32s of 198.18.0.0/15), the network's
    allow-self rule and a deny-all (as the transformer appends): three runs of one action."""
    filler = [acl_rule(f"f{i}", {"subnet": {"ip_prefix": f"198.18.{i // 256 % 256}.{i % 256}",
                                            "ip_prefix_len": 32}}, {"virtual_network": "any"},
                       "deny", "6", 1000 + i % 60000) for i in range(n)]
    if extra:
        filler.append(acl_rule("extra", {"subnet": {"ip_prefix": "198.19.255.1",
                                                    "ip_prefix_len": 32}},
                               {"virtual_network": "any"}, "deny", "6", 9999))
    return (*filler, acl_rule("self", {"virtual_network": NET}, {"virtual_network": NET},
                              "pass"),
            acl_rule("all", {"virtual_network": "any"}, {"virtual_network": "any"}, "deny"))


Phase = tuple[bool, dict[int, Any], dict[str, Any], tuple[dict[str, Any], ...]]


def phase_config(name: str, extra: bool = False) -> Phase:
    """(ports in groups?, groups, firewall, the network's ACL) of a phase; ``extra`` adds
    one rule."""
    kind, _, count = name.partition("-")
    if kind == "acl":
        return False, {}, {}, acl(int(count), extra)
    if kind == "sg":
        return True, groups(int(count), extra), {}, ()
    if kind == "ag":
        prefixes = [f"198.{18 + i // 65536}.{i // 256 % 256}.{i % 256}/32"
                    for i in range(int(count) - 1)] + ["198.51.100.0/30"]
        return False, {}, firewall([fw_rule("ag", {
            "address_group": "big", "address_group_prefixes": prefixes})]), ()
    if kind == "fw":
        filler = [fw_rule(f"f{i}", {"subnet": {"ip_prefix": f"198.18.{i // 256 % 256}."
                                                             f"{i % 256}", "ip_prefix_len": 32}},
                          1000 + i % 60000, "deny") for i in range(int(count))]
        extra_rule = [fw_rule("extra", {"subnet": {"ip_prefix": "198.19.255.1",
                                                   "ip_prefix_len": 32}}, 9999, "deny")
                      ] if extra else []
        return False, {}, firewall([*filler, *extra_rule, fw_rule("pass", {"any": True})]), ()
    return False, {}, {}, ()


class Bench:
    def __init__(self) -> None:
        self.tag = "tgb-" + secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.ports: dict[str, LocalPort] = {}
        self.ns: dict[str, str] = {}
        self.dps: dict[str, LinuxDatapath] = {}

    def up(self) -> None:
        for n in UL:
            ns = f"{self.tag}-{n}"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            self.ns[n] = ns
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ns["n1"], "link", "add", "ul0", "type", "veth", "peer", "ul0",
           "netns", self.ns["n2"])
        for n, ip in UL.items():
            sh("ip", "-n", self.ns[n], "addr", "add", f"{ip}/24", "dev", "ul0")
            sh("ip", "-n", self.ns[n], "link", "set", "ul0", "up")
        for i, (w, node, ip) in enumerate((("a", "n1", A), ("b", "n2", B))):
            ns = f"{self.tag}-{w}"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            self.ns[w] = ns
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            uuid = f"bbbbbbbb-0000-0000-0000-00000000000{i + 1}"
            p = LocalPort(uuid, "net", VNI, f"02:00:00:00:44:0{i + 1}", (ip,),
                          ifname_for(uuid), MTU)
            plumb.plug(self.ns[node], ns, p.ifname, p.mac, p.ips, GW, MTU)
            self.ports[w] = p
        for n in UL:
            self.dps[n] = LinuxDatapath(self.ns[n], "ul0", UL[n], prefix="tgb")

    def state(self, node: str, name: str, extra: bool = False) -> DatapathState:
        in_groups, sgs, fw, acl_rules = phase_config(name, extra)
        ports = {}
        routes: dict[str, tuple[NextHop, ...]] = {}
        eps = {}
        for w, p in self.ports.items():
            sg = ((SG_A if w == "a" else SG_B),) if in_groups else ()
            lp = LocalPort(p.uuid, p.network, p.vni, p.mac, p.ips, p.ifname, p.mtu, sg)
            here = (w == "a") == (node == "n1")
            if here:
                ports[p.uuid] = lp
                routes[f"{p.ips[0]}/32"] = (NextHop("local", port=p.uuid, mac=p.mac,
                                                    node=node),)
            else:
                other = "n2" if node == "n1" else "n1"
                routes[f"{p.ips[0]}/32"] = (NextHop("remote", vtep=UL[other], vni=VNI,
                                                    mac=p.mac, node=other),)
            eps[f"{p.ips[0]}/32"] = EndpointInfo(NET, sg)
        vrf = Vrf("net", NET, VNI, routes, (GW,), acl=acl_rules, endpoints=eps)
        return DatapathState(node, UL[node], ports, {"net": vrf}, sgs, fw)

    def _timed(self, name: str, extra: bool = False) -> float:
        """The slowest node's apply, in ms (nodes apply in parallel in a fabric)."""
        worst = 0.0
        for n, dp in self.dps.items():
            st = self.state(n, name, extra)  # the agent's state, computed before applying
            t0 = time.perf_counter()
            dp.apply(st)
            worst = max(worst, time.perf_counter() - t0)
        return round(worst * 1000, 1)

    def apply(self, name: str) -> dict[str, float]:
        out = {"apply_ms": self._timed(name), "noop_apply_ms": self._timed(name)}
        # one rule more (an allow: no re-evaluation needed), then back (re-evaluated)
        out["change_add_ms"] = self._timed(name, extra=True)
        out["change_remove_ms"] = self._timed(name)
        return out

    def down(self) -> None:
        for dp in self.dps.values():
            dp.close()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def run(phases: list[str], seconds: float, pings: int, rounds: int) -> dict[str, Any]:
    """Every phase ``rounds`` times, interleaved (round 1: every phase, round 2: ...), each
    TCP figure a ratio to the ``none`` phase of its own round: load from other processes
    on the machine shows as spread rather than as a bias of one phase."""
    b = Bench()
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in phases}
    try:
        b.up()
        with measure.Server(b.ns["b"], B):
            for rnd in range(1, rounds + 1):
                for name in phases:
                    print(f"round {rnd} phase {name}", file=sys.stderr, flush=True)
                    res: dict[str, Any] = b.apply(name)
                    res["tcp_gbps"] = measure.tcp(b.ns["a"], B, 1, seconds)
                    res["ping"] = measure.ping(b.ns["a"], B, pings, 0.05)
                    res["new_flow_ping"] = measure.new_flow_ping(b.ns["a"], B,
                                                                 max(5, pings // 4))
                    samples[name].append(res)
                    print(f"  {json.dumps(res)}", file=sys.stderr, flush=True)
    finally:
        b.down()
    return {"machine": machine(), "phases": summarise(samples), "seconds": seconds,
            "rounds": rounds}


def _med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def summarise(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per phase: medians over the rounds, and the TCP ratio to ``none`` per round."""
    base = [r["tcp_gbps"] for r in samples.get("none", [])]
    out: dict[str, Any] = {}
    for name, runs in samples.items():
        ratios = [round(r["tcp_gbps"] / b, 3) for r, b in zip(runs, base, strict=False) if b]
        out[name] = {
            "tcp_gbps": _med([r["tcp_gbps"] for r in runs]),
            "tcp_gbps_runs": [r["tcp_gbps"] for r in runs],
            "tcp_vs_none": _med(ratios) if ratios else None,
            "tcp_vs_none_runs": ratios,
            "ping_p50_ms": _med([r["ping"]["p50_ms"] for r in runs]),
            "new_flow_p50_ms": _med([r["new_flow_ping"]["p50_ms"] for r in runs]),
            **{k: _med([r[k] for r in runs]) for k in
               ("apply_ms", "noop_apply_ms", "change_add_ms", "change_remove_ms")},
        }
    return out


BEGIN = "<!-- bench/security:begin (generated by bench/security/run.py --docs) -->"
END = "<!-- bench/security:end -->"


def _spread(xs: list[float]) -> str:
    return f"{min(xs)}–{max(xs)}" if xs else "–"


def docs_section(out: dict[str, Any]) -> str:
    m = out["machine"]
    rows = ["| phase | TCP Gbit/s | vs none (median, range) | ping p50 ms | new flow p50 ms | "
            "apply ms | no-op ms | +1 rule ms | −1 rule ms |", "|" + " --- |" * 9]
    for name, r in out["phases"].items():
        rows.append(f"| `{name}` | {r['tcp_gbps']} | {r['tcp_vs_none']} "
                    f"({_spread(r['tcp_vs_none_runs'])}) | {r['ping_p50_ms']} | "
                    f"{r['new_flow_p50_ms']} | {r['apply_ms']} | {r['noop_apply_ms']} | "
                    f"{r['change_add_ms']} | {r['change_remove_ms']} |")
    parts = [
        BEGIN, "",
        f"{m['cpu']}, {m['cores']} cores, kernel {m['kernel']}; one TCP stream of "
        f"{out['seconds']:g} s per phase across two namespaced nodes (VXLAN), every phase "
        f"{out.get('rounds', 1)} times interleaved (figures are medians; the ratio's range "
        "is over the rounds, each against the `none` phase of its round); apply times are "
        "the slowest node's.", "", *rows, ""]
    lab = out.get("lab")
    if lab:
        parts += ["API change → enforced on every node of a 3-node `tungsten lab` (one PUT "
                  "to the config API until each node's nftables table holds it; "
                  f"{len(next(iter(lab.values()))['runs'])} changes each):", "",
                  "| change | median s (slowest node) | max s | per-node medians s |",
                  "| --- | --- | --- | --- |"]
        for name, r in lab.items():
            nodes = ", ".join(f"{n} {v}" for n, v in r["per_node_median_s"].items())
            parts.append(f"| `{name}` | {r['median_s']} | {r['max_s']} | {nodes} |")
        parts.append("")
    sim = out.get("sim")
    if sim:
        parts += [f"`tungsten sim`, {sim['agents']} agents × {sim['ports_per_agent']} ports: "
                  f"an SG rule added reaches every agent's datapath state in "
                  f"{sim['sg_rule_change_s']} s, a firewall rule change in "
                  f"{sim['fw_rule_change_s']} s (a network-policy change: "
                  f"{sim.get('policy_change_s', '–')} s).", ""]
    parts.append(END)
    return "\n".join(parts)


def write_docs(out: dict[str, Any]) -> Path:
    doc = REPO / "docs" / "performance.md"
    text = doc.read_text()
    section = docs_section(out)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n## Security (bench/security)\n\nSee "
                "[security](security.md) for what each phase exercises "
                "(`bench/security/run.py`).\n\n" + section + "\n")
    doc.write_text(text)
    return doc


def run_sim(agents: int, ports: int) -> dict[str, Any]:
    """Security changes in ``tungsten sim`` (``SimPlan.security_change``)."""
    from tungsten.sim.run import SimPlan
    from tungsten.sim.run import run_sim as sim

    def say(msg: str) -> None:
        print(f"[sim] {msg}", file=sys.stderr, flush=True)

    r = asyncio.run(sim(SimPlan(agents, ports, 20, policy_change=True,
                                security_change=True), say))
    return {"agents": agents, "ports_per_agent": ports,
            **{k: r[k] for k in ("policy_change_s", "sg_rule_change_s", "fw_rule_change_s")}}


PHASES = ["none", "acl-1000", "acl-10000", "sg-1000", "sg-10000", "fw-1000", "fw-10000",
          "ag-10000"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    ap.add_argument("--docs", action="store_true", help="update docs/performance.md")
    ap.add_argument("--from-json", type=Path, help="only write the docs from saved results")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the phases")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated phases")
    ap.add_argument("--no-lab", action="store_true", help="skip the 3-node lab")
    ap.add_argument("--no-sim", action="store_true", help="skip tungsten sim")
    ap.add_argument("--sim-agents", type=int, default=200)
    ap.add_argument("--sim-ports", type=int, default=50)
    args = ap.parse_args()
    if args.from_json:
        print(f"docs: {write_docs(json.loads(args.from_json.read_text()))}")
        return
    if os.geteuid() != 0:
        sys.exit("bench/security needs root (network namespaces)")
    phases = [p for p in args.phases.split(",") if p]
    if "none" not in phases:
        phases.insert(0, "none")
    out = run(phases, 2.0 if args.quick else 5.0, 20 if args.quick else 100,
              1 if args.quick else args.rounds)
    if not args.no_lab:
        out["lab"] = security_lab.run(2 if args.quick else 5)
    if not args.no_sim:
        out["sim"] = run_sim(args.sim_agents, args.sim_ports)
    path = REPO / "bench" / "results" / "security-latest.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=2))
    print(f"results: {path}", file=sys.stderr)
    if args.docs:
        print(f"docs: {write_docs(out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
