"""``LinuxDatapath``: the ``Datapath`` interface on a stock Linux kernel, for one node.

It owns, inside one network namespace, only what ``Owner`` marks as its own: VXLAN devices
named ``<prefix>vx<vni>``, routing tables ``table_base + vni`` (routes with its ``rt_proto``),
``ip rule``s at its priority, and the neighbour/FDB entries on its VXLAN devices.  The port
devices (veth pairs) are made by whoever plugs the workload (``plumb.py``); the datapath adds
their rules, routes and proxy ARP.

``apply`` dumps what is ours, diffs it against the plan and applies the difference: applying
the same state twice changes nothing, and a new ``LinuxDatapath`` over a running namespace
adopts what is there (it removes only what the new state no longer wants).

The networks' ACLs and conntrack zones live in one nftables table (``inet <nft_table>``,
``acl.py``), converged after the netlink objects in one nft transaction; ``last_nft`` holds
the commands of the last apply (empty: nothing changed).
"""

from __future__ import annotations

import dataclasses

from tungsten.datapath.base import Datapath, DatapathState
from tungsten.datapath.linux import acl
from tungsten.datapath.linux.netlink import Netlink
from tungsten.datapath.linux.plan import Change, KernelObjects, Owner, desired, diff


class LinuxDatapath(Datapath):
    name = "linux"

    def __init__(self, netns: str | None, underlay_ifname: str, underlay_ip: str,
                 prefix: str = "tg", *, table_base: int = Owner.table_base,
                 rule_priority: int = Owner.rule_priority,
                 rt_proto: int = Owner.rt_proto, nft_table: str = acl.DEFAULT_TABLE) -> None:
        self.netns = netns
        self.underlay_ifname = underlay_ifname
        self.underlay_ip = underlay_ip
        self.owner = Owner(prefix=prefix, table_base=table_base, rule_priority=rule_priority,
                           rt_proto=rt_proto)
        self._nl = Netlink(netns, self.owner)
        self._nft = acl.Nft(netns, nft_table)
        self.last_nft: list[dict[str, object]] = []  # nft commands of the last apply
        self._state: DatapathState | None = None
        self.last_changes: list[Change] = []  # what the last apply did (empty: nothing)
        self.missing_ports: tuple[str, ...] = ()  # port uuids whose device is not there yet

    def plan(self, state: DatapathState) -> tuple[KernelObjects, list[Change]]:
        """(desired objects, changes from what the kernel has) — no change is made."""
        if state.underlay_ip != self.underlay_ip:
            raise ValueError(f"state is for underlay {state.underlay_ip}, this datapath "
                             f"runs on {self.underlay_ip}")
        present = self._nl.links()
        if self.underlay_ifname not in present:
            raise LookupError(f"no underlay interface {self.underlay_ifname!r}")
        p = desired(state, self.owner, self.underlay_ifname,
                    self._nl.mtu(self.underlay_ifname), present)
        self.missing_ports = p.missing_ports
        have = self._nl.dump(set(p.objects.sysctls))
        return p.objects, diff(have, p.objects)

    def apply(self, state: DatapathState) -> None:
        _, changes = self.plan(state)
        self._nl.apply(changes)
        self.last_changes = changes
        self.last_nft = self._nft.converge(self.acl_plan(state))
        ports = {u: lp for u, lp in state.ports.items() if u not in self.missing_ports}
        self._state = dataclasses.replace(state, ports=ports)

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
        self._nl.close()
