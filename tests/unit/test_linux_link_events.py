"""The linux datapath's incremental bookkeeping, without a kernel: link events as netlink
sends them, and what a deleted or re-created device takes with it."""

from __future__ import annotations

import struct

from tungsten.datapath.linux.netlink import (
    IFLA_IFNAME,
    RTM_DELLINK,
    RTM_NEWLINK,
    parse_link_events,
)
from tungsten.datapath.linux.plan import (
    AF_INET,
    Hop,
    KernelObjects,
    Neigh,
    Route,
    Rule,
    Sysctl,
    VxlanLink,
    without_devices,
)

RTM_NEWROUTE = 24


def _msg(kind: int, index: int, name: str | None, extra: bytes = b"") -> bytes:
    attrs = b""
    if name is not None:
        raw = name.encode() + b"\0"
        attrs += struct.pack("=HH", 4 + len(raw), IFLA_IFNAME) + raw
        attrs += b"\0" * (-len(attrs) % 4)
    attrs += extra
    body = struct.pack("=BxHiII", 0, 1, index, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_link_events_in_one_datagram() -> None:
    mtu = struct.pack("=HHI", 8, 4, 1450)  # an attribute before the name is skipped
    data = (_msg(RTM_NEWLINK, 7, "tgabc", extra=b"") + _msg(RTM_NEWROUTE, 0, None)
            + _msg(RTM_DELLINK, 5, "eth9") + _msg(RTM_NEWLINK, 8, None, extra=mtu))
    assert list(parse_link_events(data)) == [(True, 7, "tgabc"), (False, 5, "eth9")]


def test_truncated_data_ends_the_parse() -> None:
    data = _msg(RTM_NEWLINK, 3, "tgx")
    assert list(parse_link_events(data[:-3])) == []
    assert list(parse_link_events(b"\x00" * 8)) == []


def test_without_devices_keeps_rules_and_other_devices() -> None:
    objs = KernelObjects()
    kept = [Rule(AF_INET, "tgp1", 100, 1000), Route(AF_INET, 100, "0.0.0.0/0",
                                                    kind="unreachable"),
            Route(AF_INET, 100, "198.51.100.2/32", (Hop("tgp2"),)),
            Sysctl("ipv4/conf/tgp2/proxy_arp", "1"), Sysctl("ipv4/ip_forward", "1")]
    dropped = [VxlanLink("tgvx5", 5, "192.0.2.1", "ul0", 1450, "02:54:c0:00:02:01"),
               Route(AF_INET, 100, "198.51.100.1/32", (Hop("tgp1"),)),
               Route(AF_INET, 100, "198.51.100.9/32", (Hop("tgvx5", "192.0.2.2"),)),
               Neigh(AF_INET, "tgvx5", "192.0.2.2", "02:54:c0:00:02:02"),
               Sysctl("ipv4/conf/tgp1/proxy_arp", "1")]
    for o in kept + dropped:
        objs.add(o)
    left = without_devices(objs, {"tgp1", "tgvx5"})
    assert sorted(map(repr, left.all())) == sorted(map(repr, kept))
