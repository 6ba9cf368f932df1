"""The thin pyroute2 adapter: dump our kernel objects into ``plan`` shapes, apply changes.

All netlink goes through one ``IPRoute`` bound to the node's network namespace.  Per-device
settings (proxy ARP) are written under ``/proc/sys/net`` after switching the calling thread
into the namespace for the duration of the write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from tungsten.datapath.linux.plan import (
    AF_INET,
    AF_INET6,
    Change,
    Fdb,
    Hop,
    KernelObject,
    KernelObjects,
    Neigh,
    Owner,
    Route,
    Rule,
    Sysctl,
    VxlanLink,
)

AF_BRIDGE = 7
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 4
RTN_UNICAST = 1
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RTN_UNREACHABLE = 7
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

NETLINK_ROUTE = 0
RTMGRP_LINK = 1
RTM_NEWLINK = 16
RTM_DELLINK = 17
IFLA_IFNAME = 3

# Removing what is already gone, or adding what is already there, is not an error.
_GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL}


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread in network namespace ``name`` (None: stay)."""
    if name is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {name}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(back, CLONE_NEWNET) != 0:  # pragma: no cover - cannot recover
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(back)


class LinkEvents:
    """Links added, changed and removed in one namespace since the last ``drain``: a netlink
    socket subscribed to RTMGRP_LINK, read without blocking (pyroute2's sync socket would
    block or run its own event loop); the messages are decoded by pyroute2's marshal."""

    def __init__(self, netns: str | None) -> None:
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK,
                                      socket.SOCK_RAW | socket.SOCK_NONBLOCK |
                                      socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, RTMGRP_LINK))
        except OSError:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def drain(self) -> list[tuple[bool, int, str]] | None:
        """``(present, ifindex, name)`` per event, oldest first; None when events were lost
        (the socket's buffer overflowed): the caller must dump the links again."""
        out: list[tuple[bool, int, str]] = []
        lost = False
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return None if lost else out
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                lost = True
                continue
            out.extend(parse_link_events(data))


def parse_link_events(data: bytes) -> Iterator[tuple[bool, int, str]]:
    """RTM_NEWLINK/RTM_DELLINK messages in ``data``: (present, ifindex, name), decoded by
    pyroute2's rtnetlink marshal (other messages, and links without a name, are skipped;
    a truncated tail ends the parse)."""
    try:
        msgs = list(MarshalRtnl().parse(data))
    except Exception:  # pyroute2 raises assorted errors on garbage
        return
    for msg in msgs:
        kind = msg["header"].get("type")
        if kind not in (RTM_NEWLINK, RTM_DELLINK) or msg["header"].get("error"):
            continue
        name = msg.get_attr("IFLA_IFNAME")
        if name:
            yield kind == RTM_NEWLINK, int(msg["index"]), str(name)


class Netlink:
    """Our objects in one namespace: ``dump()`` and ``apply(changes)``."""

    def __init__(self, netns: str | None, owner: Owner) -> None:
        self.netns = netns
        self.owner = owner
        self.ipr: Any = IPRoute(netns=netns) if netns else IPRoute()

    def close(self) -> None:
        self.ipr.close()

    # -- links ---------------------------------------------------------------------------
    def links(self) -> dict[str, int]:
        """Every interface name -> ifindex."""
        return {str(m.get("ifname")): int(m["index"]) for m in self.ipr.link("dump")}

    def mtu(self, ifname: str) -> int:
        return int(self.ipr.link("get", index=self._index(ifname))[0].get("mtu"))

    def _index(self, ifname: str) -> int:
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise LookupError(f"no interface {ifname!r} in netns {self.netns}")
        return int(found[0])

    # -- dump ------------------------------------------------------------------------------
    def dump(self, sysctl_paths: set[str] | None = None) -> KernelObjects:
        """What is ours in the kernel now (plus the current value of ``sysctl_paths``)."""
        out = KernelObjects()
        names: dict[int, str] = {}
        vxlans: dict[int, str] = {}
        for m in self.ipr.link("dump"):
            names[int(m["index"])] = str(m.get("ifname"))
        for m in self.ipr.link("dump"):
            link = self._vxlan(m, names)
            if link is not None:
                out.add(link)
                vxlans[int(m["index"])] = link.name
        for fam in (AF_INET, AF_INET6):
            for m in self.ipr.rule("dump", family=fam):
                rule = self._rule(m, fam)
                if rule is not None:
                    out.add(rule)
            for m in self.ipr.route("dump", family=fam):
                route = self._route(m, fam, names)
                if route is not None:
                    out.add(route)
            for idx, name in vxlans.items():
                for m in self.ipr.neigh("dump", ifindex=idx, family=fam):
                    if m.get("ifindex") != idx or not m["state"] & NUD_PERMANENT:
                        continue
                    out.add(Neigh(fam, name, str(m.get("dst")), str(m.get("lladdr"))))
        for idx, name in vxlans.items():
            for m in self.ipr.fdb("dump", ifindex=idx):
                if m.get("ifindex") != idx or m.get("dst") is None:
                    continue
                out.add(Fdb(name, str(m.get("lladdr")), str(m.get("dst"))))
        for path in sorted(sysctl_paths or ()):
            value = self.read_sysctl(path)
            if value is not None:
                out.add(Sysctl(path, value))
        return out

    def _vxlan(self, m: Any, names: dict[int, str]) -> VxlanLink | None:
        name = str(m.get("ifname"))
        if not self.owner.is_vxlan_name(name):
            return None
        info = m.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            return None
        data = info.get_attr("IFLA_INFO_DATA")
        local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
        lower = data.get_attr("IFLA_VXLAN_LINK")
        return VxlanLink(
            name=name, vni=int(data.get_attr("IFLA_VXLAN_ID")), local=str(local),
            underlay=names.get(int(lower or 0), ""), mtu=int(m.get("mtu")),
            mac=str(m.get("address")), port=int(data.get_attr("IFLA_VXLAN_PORT")),
            learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")))

    def _rule(self, m: Any, fam: int) -> Rule | None:
        table = int(m.get("table") or m["table"])
        prio = m.get("priority")
        iif = m.get("iifname")
        if prio != self.owner.rule_priority or not self.owner.owns_table(table) or not iif:
            return None
        return Rule(fam, str(iif), table, int(prio))

    def _route(self, m: Any, fam: int, names: dict[int, str]) -> Route | None:
        table = int(m.get("table") or m["table"])
        if not self.owner.owns_table(table) or m["proto"] != self.owner.rt_proto:
            return None
        dst = m.get("dst") or ("0.0.0.0" if fam == AF_INET else "::")
        prefix = f"{dst}/{m['dst_len']}"
        if m["type"] == RTN_UNREACHABLE:
            return Route(fam, table, prefix, kind="unreachable")
        if m["type"] != RTN_UNICAST:
            return Route(fam, table, prefix, kind=f"type{m['type']}")  # ours, unexpected: stale
        hops: list[Hop] = []
        mp = m.get("multipath")
        if mp:
            for nh in mp:
                gw = nh.get("gateway")
                hops.append(Hop(names.get(int(nh["oif"]), f"#{nh['oif']}"),
                                str(gw) if gw else None))
        else:
            gw = m.get("gateway")
            oif = int(m.get("oif") or 0)
            hops.append(Hop(names.get(oif, f"#{oif}"), str(gw) if gw else None))
        return Route(fam, table, prefix, tuple(sorted(hops, key=lambda h: (h.dev,
                                                                          h.gateway or ""))))

    # -- sysctl -----------------------------------------------------------------------------
    def read_sysctl(self, path: str) -> str | None:
        with in_netns(self.netns):
            try:
                with open(f"/proc/sys/net/{path}") as f:
                    return f.read().strip()
            except FileNotFoundError:
                return None

    def write_sysctl(self, path: str, value: str) -> None:
        with in_netns(self.netns), open(f"/proc/sys/net/{path}", "w") as f:
            f.write(value)

    # -- apply ------------------------------------------------------------------------------
    def apply(self, changes: list[Change]) -> None:
        for ch in changes:
            try:
                if ch.op == "remove":
                    self._remove(ch.obj)
                else:
                    self._put(ch.obj, replace=ch.op == "replace")
            except NetlinkError as e:
                if ch.op == "remove" and e.code in _GONE:
                    continue  # went with its device
                raise RuntimeError(f"{ch.op} {ch.obj}: {e}") from e

    def _put(self, obj: KernelObject, replace: bool) -> None:
        ipr = self.ipr
        if isinstance(obj, VxlanLink):
            if not replace:
                ipr.link("add", ifname=obj.name, kind="vxlan", vxlan_id=obj.vni,
                         vxlan_local=obj.local, vxlan_port=obj.port,
                         vxlan_learning=int(obj.learning), vxlan_link=self._index(obj.underlay),
                         mtu=obj.mtu, address=obj.mac)
            idx = self._index(obj.name)
            ipr.link("set", index=idx, mtu=obj.mtu, address=obj.mac)
            ipr.link("set", index=idx, state="up")
        elif isinstance(obj, Fdb):
            ipr.fdb("replace", ifindex=self._index(obj.dev), lladdr=obj.mac, dst=obj.dst,
                    flags=NTF_SELF, state=NUD_PERMANENT)
        elif isinstance(obj, Neigh):
            ipr.neigh("replace", family=obj.family, ifindex=self._index(obj.dev), dst=obj.ip,
                      lladdr=obj.mac, state=NUD_PERMANENT)
        elif isinstance(obj, Route):
            ipr.route("replace", **self._route_args(obj))
        elif isinstance(obj, Rule):
            if not replace:
                ipr.rule("add", family=obj.family, iifname=obj.iifname, table=obj.table,
                         priority=obj.priority, action="FR_ACT_TO_TBL")
        else:
            self.write_sysctl(obj.path, obj.value)

    def _remove(self, obj: KernelObject) -> None:
        ipr = self.ipr
        if isinstance(obj, VxlanLink):
            found = ipr.link_lookup(ifname=obj.name)
            if found:
                ipr.link("del", index=found[0])
        elif isinstance(obj, Fdb):
            ipr.fdb("del", ifindex=self._index(obj.dev), lladdr=obj.mac, dst=obj.dst,
                    flags=NTF_SELF)
        elif isinstance(obj, Neigh):
            ipr.neigh("del", family=obj.family, ifindex=self._index(obj.dev), dst=obj.ip)
        elif isinstance(obj, Route):
            args = self._route_args(obj, for_delete=True)
            ipr.route("del", **args)
        elif isinstance(obj, Rule):
            ipr.rule("del", family=obj.family, iifname=obj.iifname, table=obj.table,
                     priority=obj.priority, action="FR_ACT_TO_TBL")

    def _route_args(self, r: Route, for_delete: bool = False) -> dict[str, Any]:
        args: dict[str, Any] = {"family": r.family, "table": r.table, "dst": r.dst,
                                "proto": self.owner.rt_proto}
        if r.kind == "unreachable":
            args["type"] = "unreachable"
            return args
        if r.kind != "unicast":
            return args  # only ever deleted
        if for_delete:
            args["scope"] = RT_SCOPE_NOWHERE  # match whatever scope the route has
            return args
        if len(r.hops) == 1:
            h = r.hops[0]
            args["oif"] = self._index(h.dev)
            if h.gateway:
                args["gateway"] = h.gateway
                args["flags"] = RTNH_F_ONLINK
            else:
                args["scope"] = RT_SCOPE_LINK
        else:
            mp = []
            for h in r.hops:
                nh: dict[str, Any] = {"oif": self._index(h.dev)}
                if h.gateway:
                    nh["gateway"] = h.gateway
                    nh["flags"] = RTNH_F_ONLINK
                mp.append(nh)
            args["multipath"] = mp
        return args
