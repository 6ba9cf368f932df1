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

``doomed`` is pure; ``Conntrack`` lists and deletes entries over ctnetlink in the node's
namespace (``ctnetlink.py``: no process, no text).  ``parse`` reads the text of
``conntrack -L -o extended`` (kept for the tools that still print it).  A namespace without
entries is not listed (a listing walks the kernel's whole hash table, ~10 ms).  Without
ctnetlink, established flows keep their entries until idle (logged once per namespace).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable, Collection, Iterable, Mapping

from tungsten.datapath.base import DatapathState, LocalPort
from tungsten.datapath.linux.ctnetlink import CtNetlink, Flow
from tungsten.security.verdict import Side, evaluate

log = logging.getLogger("tungsten.datapath.reeval")
_warned: set[str | None] = set()  # namespaces whose missing ctnetlink was logged


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
    # with ``devices``, a flow of neither address of theirs is not looked at further
    mine = None if devices is None else {ip for p in state.ports.values()
                                         if p.ifname in devices for ip in p.ips}
    for f in flows:
        if mine is not None and f.src not in mine and f.dst not in mine:
            continue
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
    """Conntrack entries of one network namespace (None: this one), over ctnetlink: on
    ``ct`` when given (a socket the caller keeps open in that namespace), else on a socket
    of each call's own."""

    def __init__(self, netns: str | None, ct: CtNetlink | None = None) -> None:
        self.netns = netns
        self.ct = ct

    def _unavailable(self, e: OSError) -> None:
        if self.netns not in _warned:
            _warned.add(self.netns)
            log.warning("conntrack netlink unavailable in %s (%s): established flows keep "
                        "their entries until idle", self.netns or "this namespace", e)

    def _socket(self) -> contextlib.AbstractContextManager[CtNetlink]:
        return contextlib.nullcontext(self.ct) if self.ct is not None else CtNetlink(self.netns)

    @staticmethod
    def _listed(ct: CtNetlink) -> list[Flow]:
        if ct.count() == 0:
            return []  # no walk of the kernel's table for nothing
        return ct.dump()

    def flows(self) -> list[Flow]:
        """The namespace's entries ([] when ctnetlink is not available)."""
        try:
            with self._socket() as ct:
                return self._listed(ct)
        except OSError as e:
            self._unavailable(e)
            return []

    def delete(self, f: Flow) -> bool:
        """Delete ``f``'s entry; False if it was gone (expired, or deleted by a peer)."""
        with self._socket() as ct:
            return ct.delete(f.family(), f.tuple_orig(), f.zone)

    def reevaluate(self, state: DatapathState, zones: Mapping[int, int],
                   devices: Collection[str] | None = None,
                   affected: Callable[[Flow], bool] | None = None) -> list[Flow]:
        """Delete the entries ``state`` no longer allows (of the ports on ``devices``, or
        all; those ``affected`` says the change may concern); the flows deleted."""
        try:
            with self._socket() as ct:
                gone = doomed(state, zones, self._listed(ct), devices, affected)
                for f in gone:
                    try:
                        ct.delete(f.family(), f.tuple_orig(), f.zone)
                    except OSError as e:  # this entry only: the others are still judged
                        if ct.failed:
                            raise
                        log.warning("conntrack: cannot delete %s: %s", f, e)
                return gone
        except OSError as e:
            self._unavailable(e)
            return []
