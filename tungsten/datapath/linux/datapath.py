"""``LinuxDatapath``: the ``Datapath`` interface on a stock Linux kernel, for one node.

It owns, inside one network namespace, only what ``Owner`` marks as its own: VXLAN devices
named ``<prefix>vx<vni>``, routing tables ``table_base + vni`` (routes with its ``rt_proto``),
``ip rule``s at its priority, and the neighbour/FDB entries on its VXLAN devices.  The port
devices (veth pairs) are made by whoever plugs the workload (``plumb.py``); the datapath adds
their rules, routes and proxy ARP.

``apply`` diffs the plan against what is ours in the kernel and applies the difference:
applying the same state twice changes nothing, and a new ``LinuxDatapath`` over a running
namespace adopts what is there (it removes only what the new state no longer wants).

What is ours is dumped from the kernel on the first apply, after a failed one, and every
``resync`` seconds (repairing drift); in between, ``apply`` is incremental: the plan is
diffed against what the previous apply left, and the links come from a netlink subscription
(``LinkEvents``), so a change costs netlink requests for what changed, not a dump of every
port's routes, rules and settings.  A device deleted or re-created meanwhile (a container's
veth) drops what the kernel dropped with it from that record, so it is put back.  The
nftables table is listed on those full passes, and whenever the namespace's ruleset
generation shows a commit that was not ours (``acl.Nft``).

The networks' ACLs and conntrack zones live in one nftables table (``inet <nft_table>``,
``acl.py``), converged after the netlink objects in one nft transaction; ``last_nft`` holds
the commands of the last apply (empty: nothing changed).
"""

from __future__ import annotations

import dataclasses
import time

from tungsten.datapath.base import Datapath, DatapathState
from tungsten.datapath.linux import acl
from tungsten.datapath.linux.netlink import LinkEvents, Netlink
from tungsten.datapath.linux.plan import (
    Change,
    KernelObjects,
    Owner,
    desired,
    diff,
    without_devices,
)

RESYNC = 60.0  # seconds between full passes (kernel dumped, drift repaired)


class LinuxDatapath(Datapath):
    name = "linux"

    def __init__(self, netns: str | None, underlay_ifname: str, underlay_ip: str,
                 prefix: str = "tg", *, table_base: int = Owner.table_base,
                 rule_priority: int = Owner.rule_priority,
                 rt_proto: int = Owner.rt_proto, nft_table: str = acl.DEFAULT_TABLE,
                 resync: float = RESYNC) -> None:
        self.netns = netns
        self.underlay_ifname = underlay_ifname
        self.underlay_ip = underlay_ip
        self.owner = Owner(prefix=prefix, table_base=table_base, rule_priority=rule_priority,
                           rt_proto=rt_proto)
        self._nl = Netlink(netns, self.owner)
        self._events = LinkEvents(netns)  # subscribed before any dump: nothing is missed
        self._nft = acl.Nft(netns, nft_table)
        self.resync = resync
        self._have: KernelObjects | None = None  # ours as the last apply left it
        self._links: dict[str, int] = {}  # every link name -> ifindex, kept by the events
        self._underlay_mtu = 0
        self._synced = 0.0  # time.monotonic() of the last full pass
        self.last_full = False  # whether the last apply was a full pass
        self.last_nft: list[dict[str, object]] = []  # nft commands of the last apply
        self._state: DatapathState | None = None
        self.last_changes: list[Change] = []  # what the last apply did (empty: nothing)
        self.missing_ports: tuple[str, ...] = ()  # port uuids whose device is not there yet

    def _check(self, state: DatapathState) -> None:
        if state.underlay_ip != self.underlay_ip:
            raise ValueError(f"state is for underlay {state.underlay_ip}, this datapath "
                             f"runs on {self.underlay_ip}")

    def plan(self, state: DatapathState, present: dict[str, int] | None = None) \
            -> tuple[KernelObjects, list[Change]]:
        """(desired objects, changes from what the kernel has, dumped) — no change is made.
        ``present``: the kernel's links (name -> ifindex), when just dumped."""
        self._check(state)
        present = self._nl.links() if present is None else present
        if self.underlay_ifname not in present:
            raise LookupError(f"no underlay interface {self.underlay_ifname!r}")
        self._underlay_mtu = self._nl.mtu(self.underlay_ifname)
        p = desired(state, self.owner, self.underlay_ifname, self._underlay_mtu, present)
        self.missing_ports = p.missing_ports
        have = self._nl.dump(set(p.objects.sysctls))
        return p.objects, diff(have, p.objects)

    def apply(self, state: DatapathState) -> None:
        try:
            full = self._have is None or time.monotonic() - self._synced >= self.resync \
                or not self._follow_links()
            want, changes = self._full_plan(state) if full else self._quick_plan(state)
            self.last_full = full
            self._nl.apply(changes)
            self._have = want
            self.last_changes = changes
            self.last_nft = self._nft.converge(self.acl_plan(state))
        except BaseException:
            self._have = None  # the kernel is in doubt: the next apply dumps it
            self._nft.forget()
            raise
        ports = {u: lp for u, lp in state.ports.items() if u not in self.missing_ports}
        self._state = dataclasses.replace(state, ports=ports)

    def _full_plan(self, state: DatapathState) -> tuple[KernelObjects, list[Change]]:
        self._events.drain()  # older than the dump below
        self._nft.forget()
        self._links = self._nl.links()
        want, changes = self.plan(state, self._links)
        self._synced = time.monotonic()
        return want, changes

    def _follow_links(self) -> bool:
        """Bring the link table up to date from the events; drop from the record what went
        with a deleted or re-created device.  False: events were lost (dump again)."""
        events = self._events.drain()
        if events is None:
            return False
        gone: set[str] = set()
        by_index = {i: n for n, i in self._links.items()}
        for present, index, name in events:
            old_name = by_index.pop(index, None)
            if old_name is not None and old_name != name:  # renamed: the old name is gone
                self._links.pop(old_name, None)
                gone.add(old_name)
            if present:
                if self._links.get(name, index) != index:  # re-created under the name
                    gone.add(name)
                    by_index.pop(self._links[name], None)
                self._links[name] = index
                by_index[index] = name
            elif self._links.get(name) == index or old_name == name:
                self._links.pop(name, None)
                gone.add(name)
        if gone and self._have is not None:
            self._have = without_devices(self._have, gone)
        return True

    def _quick_plan(self, state: DatapathState) -> tuple[KernelObjects, list[Change]]:
        self._check(state)
        if self.underlay_ifname not in self._links:
            raise LookupError(f"no underlay interface {self.underlay_ifname!r}")
        p = desired(state, self.owner, self.underlay_ifname, self._underlay_mtu, self._links)
        self.missing_ports = p.missing_ports
        assert self._have is not None
        return p.objects, diff(self._have, p.objects)

    def acl_plan(self, state: DatapathState) -> acl.Ruleset | None:
        """The nftables table ``state`` needs (pure)."""
        devices = {v.vni: self.owner.vxlan_name(v.vni) for v in state.vrfs.values()}
        return acl.ruleset(state, self._nft.table, devices)

    def current(self) -> DatapathState | None:
        """The last applied state, without ports whose device was missing then."""
        return self._state

    def installed(self) -> KernelObjects:
        """Our objects as the kernel has them now (sysctls not included)."""
        return self._nl.dump()

    def close(self) -> None:
        self._events.close()
        self._nl.close()
        self._nft.close()
