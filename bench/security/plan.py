"""What planning the nftables table costs a node on an update (pure Python, no kernel).

``acl.ruleset(state)`` then ``acl.commands(...)`` against the previous plan, as a node's
apply does between full passes, for a state with many security-group rules:

- ``one-sg``: one port in one group of N ingress rules (as ``run.py``'s ``sg-N`` phase);
- ``shared``: 50 ports in 10 groups of N/10 rules each (5 ports per group); each group also
  admits the members of the next group, and 200 remote endpoints are members;
- ``fw``: one port under N firewall deny rules before a pass (``run.py``'s ``fw-N``).

Updates timed (each a fresh ``DatapathState``, as the agent builds one per apply): ``first``
(nothing planned before), ``no-op`` (the same content), ``+1 rule`` (one rule added to one
group), ``unrelated`` (a remote endpoint in no group appears), ``member`` (a remote endpoint
joins a group another group references: only the ports of the referencing group change).

Usage: ``.venv/bin/python -m bench.security.plan [--rules N] [--repeat K] [--no-memo]``;
medians in ms (``--no-memo``: every plan from scratch, ``SecurityPlans(0)``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.security.run import sg_rule as pass_rule
from tungsten.datapath.base import DatapathState, EndpointInfo, LocalPort, NextHop, Vrf
from tungsten.datapath.linux import acl, ordered
from tungsten.datapath.linux.secrules import SecurityPlans

NET, VNI = "d:p:bench", 4401
LOCAL = {"security_group": "local"}  # the rules' own side: the port's group


def sg_rule(uuid: str, remote: dict[str, Any], ingress: bool, proto: str = "any",
            port: int | None = None) -> dict[str, Any]:
    return pass_rule(uuid, remote, ingress, proto, port, local=LOCAL)


def group(sg: int, n: int, base: int, peer: int | None, extra: bool) -> dict[str, Any]:
    rules = [sg_rule(f"f{sg}-{i}", {"subnet": {
        "ip_prefix": f"198.18.{(base + i) // 256 % 256}.{(base + i) % 256}",
        "ip_prefix_len": 32}}, True, "6", 1000 + i % 60000) for i in range(n)]
    if extra:
        rules.append(sg_rule(f"x{sg}", {"subnet": {"ip_prefix": "198.19.255.1",
                                                   "ip_prefix_len": 32}}, True, "6", 9999))
    if peer is not None:
        rules.append(sg_rule(f"peer{sg}", {"security_group": str(peer)}, True))
    return {"id": sg, "egress": [sg_rule(f"out{sg}", {"virtual_network": "any"}, False)],
            "ingress": rules}


def state(kind: str, rules: int, change: str = "") -> DatapathState:
    if kind == "fw":
        return fw_state(rules, change)
    nports, ngroups = (1, 1) if kind == "one-sg" else (50, 10)
    per = rules // ngroups
    groups = {g: group(g, per, (g - 1) * per, None if ngroups == 1 else g % ngroups + 1,
                       change == "rule" and g == 1) for g in range(1, ngroups + 1)}
    ports: dict[str, LocalPort] = {}
    routes: dict[str, tuple[NextHop, ...]] = {}
    eps: dict[str, EndpointInfo] = {}
    for i in range(nports):
        ip = f"198.51.100.{i + 1}"
        sgs = (i % ngroups + 1,)
        ports[f"p{i}"] = LocalPort(f"p{i}", "net", VNI, f"02:00:00:00:01:{i:02x}", (ip,),
                                   f"tapp{i}", 1450, sgs)
        routes[f"{ip}/32"] = (NextHop("local", port=f"p{i}"),)
        eps[f"{ip}/32"] = EndpointInfo(NET, sgs)
    remote = 0 if kind == "one-sg" else 200
    for i in range(remote):
        ip = f"203.0.113.{i + 1}" if i < 250 else f"192.0.2.{i - 249}"
        routes[f"{ip}/32"] = (NextHop("remote", vtep="192.0.2.2", vni=VNI),)
        eps[f"{ip}/32"] = EndpointInfo(NET, (i % ngroups + 1,))
    if change == "unrelated":
        routes["203.0.113.250/32"] = (NextHop("remote", vtep="192.0.2.2", vni=VNI),)
        eps["203.0.113.250/32"] = EndpointInfo(NET, ())
    if change == "member":
        routes["203.0.113.251/32"] = (NextHop("remote", vtep="192.0.2.2", vni=VNI),)
        eps["203.0.113.251/32"] = EndpointInfo(NET, (2,))
    vrf = Vrf("net", NET, VNI, routes, endpoints=eps)
    return DatapathState("n1", "192.0.2.1", ports, {"net": vrf}, groups, {})


def fw_state(rules: int, change: str) -> DatapathState:
    from bench.security.run import phase_config

    fw = phase_config(f"fw-{rules}", change == "rule")[2]
    ip = "198.51.100.1"
    ports = {"p0": LocalPort("p0", "net", VNI, "02:00:00:00:01:00", (ip,), "tapp0", 1450)}
    routes: dict[str, tuple[NextHop, ...]] = {f"{ip}/32": (NextHop("local", port="p0"),)}
    eps = {f"{ip}/32": EndpointInfo(NET, ())}
    if change in ("unrelated", "member"):
        routes["203.0.113.250/32"] = (NextHop("remote", vtep="192.0.2.2", vni=VNI),)
        eps["203.0.113.250/32"] = EndpointInfo(NET, ())
    vrf = Vrf("net", NET, VNI, routes, endpoints=eps)
    return DatapathState("n1", "192.0.2.1", ports, {"net": vrf}, {}, fw)


def listed(plan: acl.Ruleset) -> acl.Listed:
    return acl.Listed({c.name: (c.spec(), c.digests()) for c in plan.chains},
                      {ns.name: ns.spec() for ns in plan.sets})


def forget() -> None:
    """Forget what the module-level memos hold (compiled runs, their joins, elements)."""
    ordered._box_entry.cache_clear()
    ordered._RUN_ELEMENTS.data.clear()
    ordered._JOINED.data.clear()
    ordered.STEPS.data.clear()


def timed(make: Callable[[], DatapathState], prev: acl.Ruleset | None, plans: SecurityPlans
          ) -> tuple[float, acl.Ruleset, int]:
    st = make()  # the agent builds its state before applying: not counted
    if plans.sets.size == 0:
        forget()  # from scratch: nothing remembered from the previous plan
    t0 = time.perf_counter()
    want = acl.ruleset(st, plans=plans)
    assert want is not None
    cmds = acl.commands(None if prev is None else listed(prev), want, installed=None
                        if prev is None else {ns.name: ns.by_key() for ns in prev.sets})
    return (time.perf_counter() - t0) * 1000, want, len(cmds)


def run(kind: str, rules: int, repeat: int, memo: bool) -> dict[str, Any]:
    """``memo``: a ``SecurityPlans`` per repeat, fresh at ``first`` (a starting agent);
    without: planned from scratch every time (``SecurityPlans(0)``, module memos
    forgotten)."""
    out: dict[str, Any] = {}
    samples: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    for _ in range(repeat):
        plans = SecurityPlans() if memo else SecurityPlans(0)
        forget()
        ms, base, n = timed(lambda: state(kind, rules), None, plans)
        samples.setdefault("first", []).append(ms)
        sizes["first"] = n
        for name, change in (("no-op", ""), ("+1 rule", "rule"), ("unrelated", "unrelated"),
                             ("member", "member")):
            if kind != "shared" and change == "member":
                continue
            ms, _, n = timed(lambda c=change: state(kind, rules, c),  # type: ignore[misc]
                             base, plans)
            samples.setdefault(name, []).append(ms)
            sizes[name] = n
    for name, xs in samples.items():
        out[name] = {"ms": round(statistics.median(xs), 1), "commands": sizes[name]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kinds", default="one-sg,shared")
    ap.add_argument("--no-memo", action="store_true", help="plan from scratch every time")
    args = ap.parse_args()
    res = {k: run(k, args.rules, args.repeat, not args.no_memo)
           for k in args.kinds.split(",")}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
