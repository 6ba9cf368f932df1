"""Subnet arithmetic and address allocation (pure; the caller supplies what is in use).

TF semantics: the gateway defaults to the last usable address minus one (``.254`` in a /24),
the DNS server to last minus two (``.253``); with ``addr_from_start`` they are ``.1`` and
``.2``.  Addresses are handed out from the top of the subnet downward unless
``addr_from_start`` is set.  The network, broadcast, gateway and DNS addresses are never
handed out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SubnetError(ValueError):
    pass


def parse_subnet(subnet: dict[str, Any] | None) -> IPNetwork:
    if not subnet or subnet.get("ip_prefix") is None or subnet.get("ip_prefix_len") is None:
        raise SubnetError("subnet needs ip_prefix and ip_prefix_len")
    text = f"{subnet['ip_prefix']}/{subnet['ip_prefix_len']}"
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise SubnetError(f"invalid subnet {text}: {e}") from e


def first_last(net: IPNetwork) -> tuple[int, int]:
    """The first and last usable addresses (as ints) of a subnet."""
    lo, hi = int(net.network_address), int(net.broadcast_address)
    # TF reserves the all-ones address in IPv6 too, so its v6 gateway is last-1 (``::fffe``).
    if net.prefixlen <= (30 if net.version == 4 else 126):
        return lo + 1, hi - 1
    return lo, hi


def default_gateway(net: IPNetwork, from_start: bool) -> str:
    first, last = first_last(net)
    return str(ipaddress.ip_address(first if from_start else last))


def default_dns(net: IPNetwork, from_start: bool) -> str:
    first, last = first_last(net)
    addr = first + 1 if from_start else last - 1
    return str(ipaddress.ip_address(max(first, min(addr, last))))


@dataclass
class SubnetAllocator:
    """Allocates addresses of one subnet; ``used`` tells which ints are taken."""

    net: IPNetwork
    ranges: list[tuple[int, int]]  # allocation ranges (inclusive), ascending
    reserved: set[int]
    from_start: bool
    hint: int | None = None  # all candidates beyond the hint (in allocation order) are used
    _size: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._size = sum(hi - lo + 1 for lo, hi in self.ranges)

    @classmethod
    def build(cls, subnet: dict[str, Any]) -> SubnetAllocator:
        net = parse_subnet(subnet.get("subnet"))
        from_start = bool(subnet.get("addr_from_start"))
        first, last = first_last(net)
        pools = subnet.get("allocation_pools") or []
        ranges: list[tuple[int, int]] = []
        for p in pools:
            try:
                lo = int(ipaddress.ip_address(p["start"]))
                hi = int(ipaddress.ip_address(p["end"]))
            except (KeyError, TypeError, ValueError) as e:
                raise SubnetError(f"invalid allocation pool {p}: {e}") from e
            if not (first <= lo <= hi <= last):
                raise SubnetError(f"allocation pool {p['start']}-{p['end']} is not inside {net}")
            ranges.append((lo, hi))
        if not ranges:
            ranges = [(first, last)]
        ranges.sort()
        reserved = {int(net.network_address), int(net.broadcast_address)}
        for key in ("default_gateway", "dns_server_address"):
            value = subnet.get(key)
            if value and value != "0.0.0.0":
                try:
                    reserved.add(int(ipaddress.ip_address(value)))
                except ValueError as e:
                    raise SubnetError(f"invalid {key} {value!r}") from e
        return cls(net, ranges, reserved, from_start)

    def contains(self, addr: int) -> bool:
        return any(lo <= addr <= hi for lo, hi in self.ranges)

    def is_reserved(self, addr: int) -> bool:
        return addr in self.reserved

    def candidates(self) -> Iterator[int]:
        """Addresses in allocation order, starting at the hint."""
        if self.from_start:
            for lo, hi in self.ranges:
                start = lo if self.hint is None else max(lo, self.hint)
                yield from range(start, hi + 1)
        else:
            for lo, hi in reversed(self.ranges):
                start = hi if self.hint is None else min(hi, self.hint)
                yield from range(start, lo - 1, -1)

    def allocate(self, used: Callable[[int], bool]) -> int | None:
        """The first free address in allocation order.  The hint does not move until the
        caller's transaction commits (``advance``), so an aborted request frees nothing."""
        for addr in self.candidates():
            if addr in self.reserved or used(addr):
                continue
            return addr
        return None

    def advance(self, addr: int) -> None:
        if self.from_start:
            self.hint = max(self.hint or addr + 1, addr + 1)
        else:
            self.hint = min(self.hint if self.hint is not None else addr - 1, addr - 1)

    def freed(self, addr: int) -> None:
        if self.hint is None:
            return
        if (self.from_start and addr < self.hint) or (not self.from_start and addr > self.hint):
            self.hint = addr

    def count_usable(self) -> int:
        return self._size - sum(1 for r in self.reserved if self.contains(r))


def to_str(addr: int, version: int) -> str:
    return str(ipaddress.IPv4Address(addr) if version == 4 else ipaddress.IPv6Address(addr))


def parse_addr(text: str) -> IPAddress:
    return ipaddress.ip_address(text)
