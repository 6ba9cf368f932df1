"""Pure planning for the ``linux`` datapath: the kernel objects a ``DatapathState`` needs, and
the changes that turn what the kernel has into them.

No I/O here.  ``desired`` maps a state onto plain, hashable descriptions of kernel objects
(``KernelObjects``); the adapter dumps the kernel into the same shape, and ``diff`` says what to
add, replace and remove.  Everything described here carries a mark of ours (see ``Owner``), so
the adapter can dump "what is ours" and never touch anything else.

Mapping (see docs/datapath.md):

* a network (VRF) = routing table ``owner.table(vni)`` + VXLAN device ``owner.vxlan_name(vni)``
  (VNI, local underlay IP, UDP 4789, learning off, MTU = underlay MTU - overhead, router MAC
  derived from the underlay IP) + ``ip rule iif <vxlan> lookup <table>`` + an unreachable
  default per address family, so a lookup never falls through to another table;
* a local port = ``ip rule iif <port> lookup <table>``, proxy ARP on the port, and a host route
  per address (the route itself comes from the VRF's routes, next hop ``local``);
* a remote next hop = an onlink route via the VXLAN device to a per-VTEP next-hop address, a
  permanent neighbour (that address -> the remote node's router MAC) and an FDB entry
  (router MAC -> remote VTEP);
* several next hops = one multipath route;
* each subnet gateway = a host route via the VXLAN device, which makes proxy ARP on the
  ports answer it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tungsten.datapath.base import DatapathState, LocalPort, NextHop, Vrf

AF_INET = 2
AF_INET6 = 10
VXLAN_PORT = 4789
VXLAN_OVERHEAD_V4 = 14 + 20 + 8 + 8
VXLAN_OVERHEAD_V6 = 14 + 40 + 8 + 8
MAX_VNI = (1 << 24) - 1
IFNAMSIZ = 15


@dataclass(frozen=True)
class Owner:
    """What marks a kernel object as ours: name prefix, table range, rule priority, proto."""

    prefix: str = "tg"
    table_base: int = 0x54000000  # tables table_base + vni: a fixed range of 2**24 ids
    rule_priority: int = 1000  # every rule of ours has this priority
    rt_proto: int = 84  # rtm_protocol of every route of ours

    def __post_init__(self) -> None:
        if not self.prefix or len(self.prefix) > IFNAMSIZ - len("vx") - 8:
            raise ValueError(f"id prefix {self.prefix!r}: 1 to 5 characters")
        if not self.prefix.isascii() or not self.prefix.isalnum():
            raise ValueError(f"id prefix {self.prefix!r}: letters and digits only")
        if not 256 <= self.table_base <= 0xFFFFFFFF - MAX_VNI:
            raise ValueError(f"table base {self.table_base}: out of range")
        if not 1 <= self.rule_priority < 32766:
            raise ValueError(f"rule priority {self.rule_priority}: must be below main's 32766")
        if not 5 <= self.rt_proto <= 255:
            raise ValueError(f"route protocol {self.rt_proto}: 5..255 (0-4 are the kernel's)")

    def vxlan_name(self, vni: int) -> str:
        return f"{self.prefix}vx{vni}"

    def is_vxlan_name(self, name: str) -> bool:
        rest = name[len(self.prefix) + 2:]
        return name.startswith(self.prefix + "vx") and rest.isdigit()

    def table(self, vni: int) -> int:
        if not 0 < vni <= MAX_VNI:
            raise ValueError(f"VNI {vni} out of range")
        return self.table_base + vni

    def owns_table(self, table: int) -> bool:
        return self.table_base < table <= self.table_base + MAX_VNI


# --- kernel objects ----------------------------------------------------------------------


@dataclass(frozen=True)
class VxlanLink:
    name: str
    vni: int
    local: str  # underlay address of this node
    underlay: str  # underlay interface name (the VXLAN device's lower link)
    mtu: int
    mac: str  # router MAC of this node
    port: int = VXLAN_PORT
    learning: bool = False

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class Rule:
    family: int
    iifname: str
    table: int
    priority: int

    @property
    def key(self) -> tuple[int, str, int, int]:
        return (self.family, self.iifname, self.table, self.priority)


@dataclass(frozen=True)
class Hop:
    """One path of a route: a device, and an onlink gateway when it leads to another node."""

    dev: str
    gateway: str | None = None


@dataclass(frozen=True)
class Route:
    family: int
    table: int
    dst: str  # prefix, normalised ("198.51.100.1/32", "0.0.0.0/0")
    hops: tuple[Hop, ...] = ()  # sorted; several = multipath
    kind: str = "unicast"  # "unicast" | "unreachable"

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.family, self.table, self.dst)


@dataclass(frozen=True)
class Neigh:
    family: int
    dev: str
    ip: str
    mac: str

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.family, self.dev, self.ip)


@dataclass(frozen=True)
class Fdb:
    dev: str
    mac: str
    dst: str  # remote VTEP

    @property
    def key(self) -> tuple[str, str]:
        return (self.dev, self.mac)


@dataclass(frozen=True)
class Sysctl:
    """A per-interface setting (``/proc/sys/net/<path>``); only ever set, never reverted."""

    path: str
    value: str

    @property
    def key(self) -> str:
        return self.path


KernelObject = VxlanLink | Rule | Route | Neigh | Fdb | Sysctl


@dataclass
class KernelObjects:
    """Ours, by kind, each keyed by its identity (``obj.key``)."""

    links: dict[str, VxlanLink] = field(default_factory=dict)
    fdbs: dict[tuple[str, str], Fdb] = field(default_factory=dict)
    neighs: dict[tuple[int, str, str], Neigh] = field(default_factory=dict)
    routes: dict[tuple[int, int, str], Route] = field(default_factory=dict)
    rules: dict[tuple[int, str, int, int], Rule] = field(default_factory=dict)
    sysctls: dict[str, Sysctl] = field(default_factory=dict)

    def add(self, obj: KernelObject) -> None:
        if isinstance(obj, VxlanLink):
            self.links[obj.key] = obj
        elif isinstance(obj, Fdb):
            self.fdbs[obj.key] = obj
        elif isinstance(obj, Neigh):
            self.neighs[obj.key] = obj
        elif isinstance(obj, Route):
            self.routes[obj.key] = obj
        elif isinstance(obj, Rule):
            self.rules[obj.key] = obj
        else:
            self.sysctls[obj.key] = obj

    def counts(self) -> dict[str, int]:
        return {"links": len(self.links), "fdbs": len(self.fdbs), "neighs": len(self.neighs),
                "routes": len(self.routes), "rules": len(self.rules),
                "sysctls": len(self.sysctls)}

    def all(self) -> list[KernelObject]:
        out: list[KernelObject] = []
        for kind in (self.links, self.fdbs, self.neighs, self.routes, self.rules, self.sysctls):
            out.extend(kind.values())
        return out


# --- addresses derived from the underlay ----------------------------------------------------


def router_mac(underlay_ip: str) -> str:
    """The MAC of a node's VXLAN devices, derived from its underlay address.

    The receiving kernel routes what it decapsulates, so the inner destination MAC must be
    the receiving device's own; both ends compute it from the VTEP address.  IPv4: the four
    address bytes; IPv6: four bytes of a hash (locally administered, unicast).
    """
    ip = ipaddress.ip_address(underlay_ip)
    raw = ip.packed if ip.version == 4 else hashlib.sha256(ip.packed).digest()[:4]
    return ":".join(f"{b:02x}" for b in (0x02, 0x54, *raw))


def nexthop_address(vtep: str, family: int) -> str:
    """The per-VTEP next-hop address for routes of ``family`` over a VXLAN device.

    It exists only in that device's neighbour table.  IPv4 routes use the VTEP's own IPv4
    address (unique per VTEP, no allocation); IPv6 routes a link-local address built from it.
    """
    ip = ipaddress.ip_address(vtep)
    if family == AF_INET:
        if ip.version != 4:
            raise ValueError(f"IPv4 overlay over an IPv6 VTEP ({vtep}) is not supported")
        return str(ip)
    low = ip.packed if ip.version == 4 else hashlib.sha256(ip.packed).digest()[:8]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(14 - len(low)) + low))


def overlay_mtu(underlay_mtu: int, underlay_ip: str) -> int:
    v6 = ipaddress.ip_address(underlay_ip).version == 6
    return underlay_mtu - (VXLAN_OVERHEAD_V6 if v6 else VXLAN_OVERHEAD_V4)


@functools.lru_cache(maxsize=1 << 16)  # asked for every route of every pass
def family_of(prefix_or_ip: str) -> int:
    net = ipaddress.ip_network(prefix_or_ip, strict=False)
    return AF_INET if net.version == 4 else AF_INET6


@functools.lru_cache(maxsize=1 << 16)
def norm_prefix(prefix: str) -> str:
    return str(ipaddress.ip_network(prefix, strict=False))


# --- desired state ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    objects: KernelObjects
    missing_ports: tuple[str, ...]  # port uuids whose device does not exist (yet)


def desired(state: DatapathState, owner: Owner, underlay: str, underlay_mtu: int,
            present: Iterable[str] | None = None) -> Plan:
    """The kernel objects ``state`` needs on this node.

    ``present`` are the interface names the kernel has (None: assume every port exists);
    a port whose device is missing gets its rule but no routes or settings through it yet.
    """
    have = None if present is None else set(present)
    objs = KernelObjects()
    mac = router_mac(state.underlay_ip)
    mtu = overlay_mtu(underlay_mtu, state.underlay_ip)
    ports_by_uuid = state.ports
    up = {u: p for u, p in ports_by_uuid.items() if have is None or p.ifname in have}
    missing = sorted(u for u in ports_by_uuid if u not in up)
    vrfs = sorted(state.vrfs.values(), key=lambda v: v.vni)
    for v in vrfs:
        objs.add(VxlanLink(name=owner.vxlan_name(v.vni), vni=v.vni, local=state.underlay_ip,
                           underlay=underlay, mtu=mtu, mac=mac))
    # Routes leaked from a network with no port here are sent with that network's VNI: the
    # node needs its device to send, but no VRF.  What arrives on it (nothing should) meets
    # an unreachable-only table, so it can never be forwarded into another network.
    own = {v.vni for v in vrfs}
    foreign = sorted({nh.vni for v in vrfs for nhs in v.routes.values() for nh in nhs
                      if nh.kind == "remote" and nh.vni is not None and nh.vni not in own})
    for vni in foreign:
        dev = owner.vxlan_name(vni)
        objs.add(VxlanLink(name=dev, vni=vni, local=state.underlay_ip, underlay=underlay,
                           mtu=mtu, mac=mac))
        objs.add(Rule(AF_INET, dev, owner.table(vni), owner.rule_priority))
        objs.add(Route(AF_INET, owner.table(vni), "0.0.0.0/0", kind="unreachable"))
    if vrfs:
        objs.add(Sysctl("ipv4/ip_forward", "1"))
    for v in vrfs:
        vx = owner.vxlan_name(v.vni)
        table = owner.table(v.vni)
        objs.add(Rule(AF_INET, vx, table, owner.rule_priority))
        families = {AF_INET} | {family_of(p) for p in v.routes}
        for fam in sorted(families):
            objs.add(Route(fam, table, "0.0.0.0/0" if fam == AF_INET else "::/0",
                           kind="unreachable"))
        for gw in v.gateways:
            if family_of(gw) == AF_INET:
                objs.add(Route(AF_INET, table, norm_prefix(gw), (Hop(vx),)))
        for prefix, nhs in sorted(v.routes.items()):
            _route(objs, owner, v, vx, table, prefix, nhs, up)
    for p in sorted(ports_by_uuid.values(), key=lambda p: p.ifname):
        vrf = state.vrfs.get(p.network)
        vni = vrf.vni if vrf is not None else p.vni
        objs.add(Rule(AF_INET, p.ifname, owner.table(vni), owner.rule_priority))
        if any(family_of(ip) == AF_INET6 for ip in p.ips):
            objs.add(Rule(AF_INET6, p.ifname, owner.table(vni), owner.rule_priority))
        if p.uuid in up:
            objs.add(Sysctl(f"ipv4/conf/{p.ifname}/proxy_arp", "1"))
            objs.add(Sysctl(f"ipv4/neigh/{p.ifname}/proxy_delay", "0"))
    for v in state.vrfs.values():  # IPv6 lookups for networks with IPv6 prefixes
        if any(family_of(p) == AF_INET6 for p in v.routes):
            objs.add(Rule(AF_INET6, owner.vxlan_name(v.vni), owner.table(v.vni),
                          owner.rule_priority))
    return Plan(objs, tuple(missing))


def _route(objs: KernelObjects, owner: Owner, vrf: Vrf, vx: str, table: int, prefix: str,
           nhs: tuple[NextHop, ...], up: Mapping[str, LocalPort]) -> None:
    fam = family_of(prefix)
    hops: set[Hop] = set()
    for nh in nhs:
        if nh.kind == "local":
            port = up.get(nh.port or "")
            if port is not None:
                hops.add(Hop(port.ifname))
        elif nh.kind == "remote" and nh.vtep:
            if nh.vni is not None and nh.vni != vrf.vni:
                # Leaked from another network: the packet is encapsulated with that VNI,
                # which needs that network's device here.
                dev = owner.vxlan_name(nh.vni)
                if nh.vni not in _vnis(objs):
                    continue  # no device for that VNI on this node: cannot forward
            else:
                dev = vx
            gw = nexthop_address(nh.vtep, fam)
            rmac = router_mac(nh.vtep)
            hops.add(Hop(dev, gw))
            objs.add(Neigh(fam, dev, gw, rmac))
            objs.add(Fdb(dev, rmac, nh.vtep))
    if hops:
        objs.add(Route(fam, table, norm_prefix(prefix), tuple(sorted(hops, key=_hop_order))))


def _vnis(objs: KernelObjects) -> set[int]:
    return {link.vni for link in objs.links.values()}


def _hop_order(h: Hop) -> tuple[str, str]:
    return (h.dev, h.gateway or "")


# --- diff -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    op: str  # "add" | "replace" | "remove"
    obj: KernelObject
    old: KernelObject | None = None  # replace: what is there now


# Order of application: what others depend on first; removals in the reverse order.
_KINDS = ("links", "fdbs", "neighs", "routes", "rules", "sysctls")

def diff(have: KernelObjects, want: KernelObjects) -> list[Change]:
    """Changes turning ``have`` (ours, dumped) into ``want``, in a safe order to apply.

    Removals come first, dependants before what they hang off (rules, routes, neighbours,
    FDB, then links); then adds and replaces in dependency order.  Settings (``Sysctl``) are
    never removed.  A VXLAN device whose identity (VNI, addresses, port) changed is removed
    and added again, and everything through it is added again (the kernel drops it).
    """
    recreate = {name for name, w in want.links.items()
                if name in have.links and _identity(have.links[name]) != _identity(w)}
    removes: list[Change] = []
    for kind in reversed(_KINDS):
        if kind == "sysctls":
            continue
        h: dict[object, KernelObject] = getattr(have, kind)
        w: dict[object, KernelObject] = getattr(want, kind)
        for key in sorted(h, key=repr):
            if key not in w or (kind == "links" and key in recreate):
                removes.append(Change("remove", h[key]))
    adds: list[Change] = []
    for kind in _KINDS:
        h = getattr(have, kind)
        w = getattr(want, kind)
        for key in sorted(w, key=repr):
            obj = w[key]
            if key not in h or _devices(obj) & recreate:
                adds.append(Change("add", obj))
            elif h[key] != obj:
                adds.append(Change("replace", obj, h[key]))
    return removes + adds


def without_devices(objs: KernelObjects, devices: set[str]) -> KernelObjects:
    """``objs`` less what the kernel dropped with ``devices`` (deleted or re-created): the
    devices themselves, routes, neighbours and FDB entries through them, their settings.
    Rules stay: they name the device and outlive it."""
    out = KernelObjects()
    for obj in objs.all():
        if isinstance(obj, Rule):
            out.add(obj)
        elif isinstance(obj, Sysctl):
            if not any(f"/{d}/" in obj.path for d in devices):
                out.add(obj)
        elif not _devices(obj) & devices:
            out.add(obj)
    return out


def _identity(link: VxlanLink) -> tuple[object, ...]:
    return (link.vni, link.local, link.underlay, link.port, link.learning)


def _devices(obj: KernelObject) -> set[str]:
    if isinstance(obj, VxlanLink):
        return {obj.name}
    if isinstance(obj, Route):
        return {h.dev for h in obj.hops}
    if isinstance(obj, Neigh | Fdb):
        return {obj.dev}
    if isinstance(obj, Rule):
        return {obj.iifname}
    return set()
