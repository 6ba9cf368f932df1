"""Policy changes reach established connections: after an nftables change, the conntrack
entries of flows the new state no longer allows are deleted.

The forward chain accepts ``established,related`` packets before any gate, so an entry
admitted under an old rule would outlive it.  TF re-evaluates its flows when policy changes;
here, every conntrack entry of this node is judged by the evaluation core
(``tungsten.security.verdict``) against the new state, with the gates of the ports local to
this node; an entry that is denied is deleted.  The next packet of that connection then has
no entry: the kernel (``nf_conntrack_tcp_loose``, on by default) treats it as a new flow,
the gates see it and drop it.  Entries that are still allowed are left alone, so their
packets never meet a gap.

``parse`` and ``doomed`` are pure; ``Conntrack`` runs the ``conntrack`` tool (conntrack-tools)
in the node's namespace.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from tungsten.datapath.base import DatapathState, LocalPort
from tungsten.security.verdict import PROTOCOLS, Side, evaluate

PROTO_NAMES = {v: k for k, v in PROTOCOLS.items() if k != "ipv6-icmp"}


@dataclass(frozen=True)
class Flow:
    """A conntrack entry's original direction."""

    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    zone: int
    mark: int = field(default=0, compare=False)  # ct mark (logged flows: see flowlog.py)


def parse(text: str) -> list[Flow]:
    """Entries of ``conntrack -L -o extended`` (the first src/dst/ports are the original
    direction)."""
    out: list[Flow] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] not in ("ipv4", "ipv6"):
            continue
        try:
            proto = int(parts[3])
        except ValueError:
            continue
        fields: dict[str, str] = {}
        for p in parts[4:]:
            k, eq, v = p.partition("=")
            if eq and k not in fields:
                fields[k] = v
        if "src" not in fields or "dst" not in fields:
            continue
        try:
            out.append(Flow(proto, fields["src"], fields["dst"], int(fields.get("sport", 0)),
                            int(fields.get("dport", 0)), int(fields.get("zone", 0)),
                            int(fields.get("mark", 0))))
        except ValueError:
            continue
    return out


def _port_at(state: DatapathState, ip: str, zone: int, zones: Mapping[int, int]
             ) -> LocalPort | None:
    """The local port holding ``ip``, preferring the one whose network owns ``zone``."""
    found = [p for p in state.ports.values() if ip in p.ips]
    for p in found:
        if zones.get(p.vni) == zone:
            return p
    return found[0] if found else None


def doomed(state: DatapathState, zones: Mapping[int, int], flows: Iterable[Flow],
           devices: Collection[str] | None = None,
           affected: Callable[[Flow], bool] | None = None) -> list[Flow]:
    """The flows whose local gates now deny them; with ``devices``, only the flows of those
    ports (the ones whose rules changed) are judged; with ``affected``, only the flows it
    says the change may concern."""
    out: list[Flow] = []
    judged: dict[Flow, bool] = {}  # ICMP entries differ by id only: judged once
    for f in flows:
        if affected is not None and not affected(f):
            continue
        if f in judged:
            if not judged[f]:
                out.append(f)
            continue
        judged[f] = True
        sp = _port_at(state, f.src, f.zone, zones)
        dp = _port_at(state, f.dst, f.zone, zones)
        if sp is None and dp is None:
            continue  # not a flow of our ports
        if devices is not None and not any(p is not None and p.ifname in devices
                                           for p in (sp, dp)):
            continue
        try:
            src, dst = ipaddress.ip_address(f.src), ipaddress.ip_address(f.dst)
        except ValueError:
            continue
        v = evaluate(f.proto, src, f.sport, dst, f.dport,
                     Side(state, sp) if sp is not None and sp.network in state.vrfs else None,
                     Side(state, dp) if dp is not None and dp.network in state.vrfs else None)
        if not v.allowed:
            judged[f] = False
            out.append(f)
    return out


class Conntrack:
    """The ``conntrack`` tool in one network namespace (None: this one)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["conntrack", *args]
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)

    def flows(self) -> list[Flow]:
        r = self._run("-L", "-o", "extended")
        return parse(r.stdout) if r.returncode == 0 else []

    def delete(self, f: Flow) -> None:
        args = ["-D", "-s", f.src, "-d", f.dst, "-w", str(f.zone),
                "-p", PROTO_NAMES.get(f.proto, str(f.proto))]
        if f.proto in (6, 17, 132):
            args += ["--sport", str(f.sport), "--dport", str(f.dport)]
        self._run(*args)  # gone already (expired, or deleted by a peer): nothing to do

    def reevaluate(self, state: DatapathState, zones: Mapping[int, int],
                   devices: Collection[str] | None = None,
                   affected: Callable[[Flow], bool] | None = None) -> list[Flow]:
        """Delete the entries ``state`` no longer allows (of the ports on ``devices``, or
        all; those ``affected`` says the change may concern); the flows deleted."""
        gone = doomed(state, zones, self.flows(), devices, affected)
        for f in dict.fromkeys(gone):  # one delete per distinct tuple (ICMP ids are not kept)
            self.delete(f)
        return gone
