"""How long ``acl.Nft.converge`` takes for a small change, with N established conntrack
entries in the node's namespace, and where the time goes (listing the table, the
transaction, the conntrack re-evaluation).

Run from the repository root, as root (a namespace of its own, removed at the end):

    .venv/bin/python bench/datapath/converge.py [--ports 20] [--entries 0 100 1000]
                                                [--rounds 20]

The change is a CNI ADD's: a port joins the node (its chains and sets, the dispatch maps),
then leaves; both converges are timed.  The entries are TCP flows between the node's ports
(allowed by their default group, so none is deleted), written straight into conntrack.
Progress and results go to stdout; indicative only on a shared machine.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tungsten.datapath.base import DatapathState, EndpointInfo, LocalPort, NextHop, Vrf
from tungsten.datapath.linux import acl
from tungsten.datapath.linux.netlink import in_netns

NET, VNI, SG = "d:p:a", 5, 8000001


def sg_rule(uuid: str, remote: dict[str, Any], ingress: bool) -> dict[str, Any]:
    local = {"virtual_network": "any"}
    src, dst = (remote, local) if ingress else (local, remote)
    anyp = {"start_port": 0, "end_port": 65535}
    return {"rule_uuid": uuid, "direction": ">", "action_list": {"simple_action": "pass"},
            "match_condition": {"protocol": "any", "ethertype": "IPv4", "src_address": src,
                                "src_port": anyp, "dst_address": dst, "dst_port": anyp}}


GROUP = {"id": SG, "ingress": [sg_rule("in", {"security_group": str(SG)}, True)],
         "egress": [sg_rule("out", {"subnet": {"ip_prefix": "0.0.0.0", "ip_prefix_len": 0}},
                            False)]}


def port(n: int) -> LocalPort:
    return LocalPort(f"p{n}", "a", VNI, f"02:00:00:00:{n // 256:02x}:{n % 256:02x}",
                     (f"198.18.{n // 256}.{n % 256}",), f"tapb{n}", 1450, (SG,))


def state(n_ports: int, extra: int | None = None) -> DatapathState:
    ports = [port(i) for i in range(1, n_ports + 1)] + ([port(extra)] if extra else [])
    eps = {f"{p.ips[0]}/32": EndpointInfo(NET, p.sgs) for p in ports}
    vrf = Vrf("a", NET, VNI, {k: (NextHop("local"),) for k in eps}, endpoints=eps)
    return DatapathState("n1", "192.0.2.1", {p.uuid: p for p in ports}, {"a": vrf},
                         {SG: GROUP})


def add_entries(ns: str, n: int, n_ports: int, start: int) -> None:
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    with in_netns(ns):  # pyroute2 opens its socket lazily: all of it inside the namespace
        ct = Conntrack(nfgen_family=socket.AF_INET)
        try:
            for i in range(start, start + n):
                a, b = port(1 + i % n_ports).ips[0], port(1 + (i + 1) % n_ports).ips[0]
                sport = 20000 + i % 40000
                ct.entry("add", timeout=3600, zone=VNI,
                         tuple_orig=NFCTAttrTuple(saddr=a, daddr=b, proto=6, sport=sport,
                                                  dport=80),
                         tuple_reply=NFCTAttrTuple(saddr=b, daddr=a, proto=6, sport=80,
                                                   dport=sport),
                         protoinfo={"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [
                             ["CTA_PROTOINFO_TCP_STATE", 3]]}]]})
        finally:
            ct.close()


def timed(obj: Any, name: str, acc: dict[str, list[float]]) -> None:
    """Wrap ``obj.name`` so each call's time is added to ``acc[name]``'s last slot."""
    fn: Callable[..., Any] = getattr(obj, name)

    def wrapper(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            if acc[name]:
                acc[name][-1] += time.perf_counter() - t

    setattr(obj, name, wrapper)


def fmt(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"{statistics.median(xs) * 1e3:6.2f} {xs[int(len(xs) * 0.9)] * 1e3:6.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ports", type=int, default=20)
    p.add_argument("--entries", type=int, nargs="+", default=[0, 100, 1000])
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    ns = "bconv-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        nft = acl.Nft(ns)
        from tungsten.datapath.linux import reeval

        acc: dict[str, list[float]] = {"listed": [], "apply": [], "reevaluate": []}
        timed(nft, "listed", acc)
        timed(nft, "apply", acc)
        timed(reeval.Conntrack, "reevaluate", acc)
        base = acl.ruleset(state(args.ports))
        with_new = acl.ruleset(state(args.ports, extra=args.ports + 1))
        nft.converge(base)
        have = 0
        print(f"{args.ports} ports; the change: one port added, then removed; "
              f"{args.rounds} rounds (ms: median, p90)")
        for n in args.entries:
            add_entries(ns, n - have, args.ports, have)
            have = n
            for label, step in (("port added  ", 0), ("port removed", 1)):
                total: list[float] = []
                for k in acc.values():
                    k.clear()
                for _ in range(args.rounds):
                    for i in (0, 1):
                        for k in acc.values():
                            k.append(0.0)
                        t = time.perf_counter()
                        nft.converge(with_new if i == 0 else base)
                        total.append(time.perf_counter() - t)
                mine = {k: v[step::2] for k, v in acc.items()}  # this step's converges
                print(f"entries {n:5d}, {label}: converge {fmt(total[step::2])} | "
                      f"listed {fmt(mine['listed'])} | apply {fmt(mine['apply'])} | "
                      f"reevaluate {fmt(mine['reevaluate'])}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
