"""Subnet arithmetic and the address allocator (pure)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tungsten.api.ipam import (
    SubnetAllocator,
    SubnetError,
    default_dns,
    default_gateway,
    first_last,
    parse_addr,
    parse_subnet,
    to_str,
)


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def subnet(prefix: str, **extra: Any) -> dict[str, Any]:
    """An IpamSubnetType dict with the gateway and DNS filled in as the server does."""
    n = net(prefix)
    from_start = bool(extra.get("addr_from_start"))
    s: dict[str, Any] = {
        "subnet": {"ip_prefix": str(n.network_address), "ip_prefix_len": n.prefixlen},
        "default_gateway": default_gateway(n, from_start),
        "dns_server_address": default_dns(n, from_start),
    }
    s.update(extra)
    return s


class Used:
    """The caller's view of taken addresses (normally the claims in the store)."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def __call__(self, addr: int) -> bool:
        return addr in self.taken


def take(alloc: SubnetAllocator, used: Used) -> str | None:
    """Allocate, record and commit (advance) one address, as the server does."""
    addr = alloc.allocate(used)
    if addr is None:
        return None
    used.taken.add(addr)
    alloc.advance(addr)
    return to_str(addr, alloc.net.version)


def free(alloc: SubnetAllocator, used: Used, text: str) -> None:
    used.taken.discard(ip(text))
    alloc.freed(ip(text))


# -- parsing ----------------------------------------------------------------------------------
def test_parse_subnet() -> None:
    assert parse_subnet({"ip_prefix": "192.0.2.0", "ip_prefix_len": 24}) == net("192.0.2.0/24")
    assert parse_subnet({"ip_prefix": "2001:db8::", "ip_prefix_len": 64}) == net("2001:db8::/64")


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {},
        {"ip_prefix": "192.0.2.0"},
        {"ip_prefix": None, "ip_prefix_len": 24},
        {"ip_prefix": "192.0.2.1", "ip_prefix_len": 24},  # host bits set
        {"ip_prefix": "192.0.2.0", "ip_prefix_len": 33},
        {"ip_prefix": "not-an-address", "ip_prefix_len": 24},
    ],
)
def test_parse_subnet_rejects(bad: dict[str, Any] | None) -> None:
    with pytest.raises(SubnetError):
        parse_subnet(bad)


def test_to_str_and_parse_addr() -> None:
    assert to_str(ip("198.51.100.7"), 4) == "198.51.100.7"
    assert to_str(ip("2001:db8::7"), 6) == "2001:db8::7"
    assert parse_addr("203.0.113.9") == ipaddress.IPv4Address("203.0.113.9")


# -- gateway and DNS defaults -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prefix", "gw", "dns", "gw_start", "dns_start"),
    [
        ("192.0.2.0/24", "192.0.2.254", "192.0.2.253", "192.0.2.1", "192.0.2.2"),
        ("198.18.0.0/15", "198.19.255.254", "198.19.255.253", "198.18.0.1", "198.18.0.2"),
        ("203.0.113.0/29", "203.0.113.6", "203.0.113.5", "203.0.113.1", "203.0.113.2"),
        # /30: two usable addresses, taken by the gateway and DNS
        ("192.0.2.4/30", "192.0.2.6", "192.0.2.5", "192.0.2.5", "192.0.2.6"),
        # /31 (point-to-point) and /32: no network or broadcast address to skip
        ("192.0.2.8/31", "192.0.2.9", "192.0.2.8", "192.0.2.8", "192.0.2.9"),
        ("192.0.2.10/32", "192.0.2.10", "192.0.2.10", "192.0.2.10", "192.0.2.10"),
        # IPv6: TF treats the all-ones address like a broadcast, so the gateway is ::fffe
        ("2001:db8::/64", "2001:db8::ffff:ffff:ffff:fffe", "2001:db8::ffff:ffff:ffff:fffd",
         "2001:db8::1", "2001:db8::2"),
        ("2001:db8::/126", "2001:db8::2", "2001:db8::1", "2001:db8::1", "2001:db8::2"),
        ("2001:db8::/127", "2001:db8::1", "2001:db8::", "2001:db8::", "2001:db8::1"),
        ("2001:db8::5/128", "2001:db8::5", "2001:db8::5", "2001:db8::5", "2001:db8::5"),
    ],
)
def test_gateway_and_dns_defaults(prefix: str, gw: str, dns: str, gw_start: str,
                                  dns_start: str) -> None:
    n = net(prefix)
    assert default_gateway(n, False) == gw
    assert default_dns(n, False) == dns
    assert default_gateway(n, True) == gw_start
    assert default_dns(n, True) == dns_start
    for addr in (gw, dns, gw_start, dns_start):
        assert ipaddress.ip_address(addr) in n


def test_first_last() -> None:
    assert first_last(net("192.0.2.0/24")) == (ip("192.0.2.1"), ip("192.0.2.254"))
    assert first_last(net("192.0.2.8/31")) == (ip("192.0.2.8"), ip("192.0.2.9"))
    assert first_last(net("2001:db8::/126")) == (ip("2001:db8::1"), ip("2001:db8::2"))


# -- the allocator --------------------------------------------------------------------------------
def test_top_down_order() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24"))
    used = Used()
    # .255 broadcast, .254 gateway, .253 DNS: the first address given out is .252
    assert [take(alloc, used) for _ in range(3)] == ["192.0.2.252", "192.0.2.251",
                                                     "192.0.2.250"]


def test_from_start_order() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24", addr_from_start=True))
    used = Used()
    assert [take(alloc, used) for _ in range(3)] == ["192.0.2.3", "192.0.2.4", "192.0.2.5"]


def test_ipv6_top_down_and_from_start() -> None:
    alloc = SubnetAllocator.build(subnet("2001:db8::/64"))
    assert take(alloc, Used()) == "2001:db8::ffff:ffff:ffff:fffc"
    alloc = SubnetAllocator.build(subnet("2001:db8::/64", addr_from_start=True))
    assert take(alloc, Used()) == "2001:db8::3"


def test_reserved_addresses_never_returned() -> None:
    s = subnet("192.0.2.0/28")
    alloc = SubnetAllocator.build(s)
    used = Used()
    got = []
    while (a := take(alloc, used)) is not None:
        got.append(a)
    reserved = {"192.0.2.0", "192.0.2.15", s["default_gateway"], s["dns_server_address"]}
    assert reserved.isdisjoint(got)
    assert len(got) == 16 - 4 == alloc.count_usable()
    assert len(set(got)) == len(got)
    for r in reserved:
        assert alloc.is_reserved(ip(r))


def test_gateway_given_by_user_is_reserved() -> None:
    s = subnet("192.0.2.0/29", default_gateway="192.0.2.6", dns_server_address="0.0.0.0")
    alloc = SubnetAllocator.build(s)
    # 0.0.0.0 means "no DNS address": nothing but .0, .7 and the gateway is reserved
    assert alloc.reserved == {ip("192.0.2.0"), ip("192.0.2.7"), ip("192.0.2.6")}
    assert take(alloc, Used()) == "192.0.2.5"


def test_build_rejects_bad_reserved_address() -> None:
    with pytest.raises(SubnetError, match="default_gateway"):
        SubnetAllocator.build(subnet("192.0.2.0/24", default_gateway="bogus"))


def test_slash30_has_no_free_address() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.4/30"))
    assert alloc.count_usable() == 0
    assert alloc.allocate(Used()) is None


def test_slash31_and_slash32_have_no_free_address() -> None:
    for prefix in ("192.0.2.8/31", "192.0.2.10/32", "2001:db8::5/128"):
        alloc = SubnetAllocator.build(subnet(prefix))
        assert alloc.allocate(Used()) is None, prefix


def test_slash126_v6() -> None:
    alloc = SubnetAllocator.build(subnet("2001:db8::/126"))
    # ::0 (subnet-router anycast) and ::3 are never given; ::2 and ::1 are gateway and DNS
    assert alloc.allocate(Used()) is None
    alloc = SubnetAllocator.build(subnet("2001:db8::/126", dns_server_address="::"))
    # "::" means no DNS address, so ::1 is free
    assert take(alloc, Used()) == "2001:db8::1"


def test_allocation_pools() -> None:
    pools = [{"start": "192.0.2.100", "end": "192.0.2.101"},
             {"start": "192.0.2.10", "end": "192.0.2.11"}]
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24", allocation_pools=pools))
    assert alloc.ranges == [(ip("192.0.2.10"), ip("192.0.2.11")),
                            (ip("192.0.2.100"), ip("192.0.2.101"))]
    assert alloc.contains(ip("192.0.2.11")) and not alloc.contains(ip("192.0.2.12"))
    used = Used()
    got = [take(alloc, used) for _ in range(5)]
    # top-down across pools, highest pool first; then exhausted
    assert got == ["192.0.2.101", "192.0.2.100", "192.0.2.11", "192.0.2.10", None]


def test_allocation_pools_from_start() -> None:
    pools = [{"start": "192.0.2.100", "end": "192.0.2.101"},
             {"start": "192.0.2.10", "end": "192.0.2.11"}]
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24", allocation_pools=pools,
                                         addr_from_start=True))
    used = Used()
    got = [take(alloc, used) for _ in range(5)]
    assert got == ["192.0.2.10", "192.0.2.11", "192.0.2.100", "192.0.2.101", None]
    assert alloc.count_usable() == 4


def test_pool_containing_reserved_address() -> None:
    pools = [{"start": "192.0.2.250", "end": "192.0.2.254"}]
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24", allocation_pools=pools))
    used = Used()
    got = [take(alloc, used) for _ in range(4)]
    assert got == ["192.0.2.252", "192.0.2.251", "192.0.2.250", None]
    assert alloc.count_usable() == 3


@pytest.mark.parametrize(
    "pool",
    [
        {"start": "192.0.2.0", "end": "192.0.2.10"},  # includes the network address
        {"start": "192.0.2.10", "end": "192.0.2.255"},  # includes the broadcast address
        {"start": "198.51.100.1", "end": "198.51.100.5"},  # another subnet
        {"start": "192.0.2.20", "end": "192.0.2.10"},  # reversed
        {"start": "192.0.2.10"},  # no end
        {"start": "nope", "end": "192.0.2.10"},
    ],
)
def test_bad_allocation_pool(pool: dict[str, str]) -> None:
    with pytest.raises(SubnetError):
        SubnetAllocator.build(subnet("192.0.2.0/24", allocation_pools=[pool]))


def test_used_addresses_are_skipped() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24"))
    used = Used()
    used.taken |= {ip("192.0.2.252"), ip("192.0.2.250")}
    assert take(alloc, used) == "192.0.2.251"
    assert take(alloc, used) == "192.0.2.249"


def test_allocate_without_advance_returns_same_address() -> None:
    # an aborted request must not move the hint: the same address comes back
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24"))
    used = Used()
    first = alloc.allocate(used)
    assert alloc.allocate(used) == first
    assert alloc.hint is None


def test_hint_advances_top_down() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24"))
    used = Used()
    take(alloc, used)
    assert alloc.hint == ip("192.0.2.251")
    take(alloc, used)
    assert alloc.hint == ip("192.0.2.250")
    # advancing with an older address never moves the hint back
    alloc.advance(ip("192.0.2.252"))
    assert alloc.hint == ip("192.0.2.250")


def test_hint_advances_from_start() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24", addr_from_start=True))
    used = Used()
    take(alloc, used)
    assert alloc.hint == ip("192.0.2.4")
    alloc.advance(ip("192.0.2.3"))
    assert alloc.hint == ip("192.0.2.4")


def test_freed_address_is_reused_first_top_down() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24"))
    used = Used()
    got = [take(alloc, used) for _ in range(4)]  # .252 .251 .250 .249
    free(alloc, used, got[1])
    assert take(alloc, used) == "192.0.2.251"
    # then it carries on below the last one handed out
    assert take(alloc, used) == "192.0.2.248"


def test_freed_address_is_reused_first_from_start() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24", addr_from_start=True))
    used = Used()
    got = [take(alloc, used) for _ in range(4)]  # .3 .4 .5 .6
    free(alloc, used, got[0])
    free(alloc, used, got[2])
    assert take(alloc, used) == "192.0.2.3"
    assert take(alloc, used) == "192.0.2.5"
    assert take(alloc, used) == "192.0.2.7"


def test_freed_before_any_allocation_is_a_no_op() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24"))
    alloc.freed(ip("192.0.2.10"))
    assert alloc.hint is None
    assert take(alloc, Used()) == "192.0.2.252"


def test_freed_beyond_the_hint_does_not_move_it() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.0/24"))
    used = Used()
    take(alloc, used)
    alloc.freed(ip("192.0.2.10"))  # below the hint (not yet reached top-down)
    assert alloc.hint == ip("192.0.2.251")


def test_exhaustion_returns_none_and_recovers_after_free() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.0/29"))
    used = Used()
    got = [take(alloc, used) for _ in range(4)]
    assert got == ["192.0.2.4", "192.0.2.3", "192.0.2.2", "192.0.2.1"]
    assert take(alloc, used) is None
    assert alloc.allocate(used) is None
    free(alloc, used, "192.0.2.3")
    assert take(alloc, used) == "192.0.2.3"
    assert take(alloc, used) is None


def test_candidates_start_at_hint() -> None:
    alloc = SubnetAllocator.build(subnet("192.0.2.0/29"))
    alloc.hint = ip("192.0.2.3")
    assert list(alloc.candidates()) == [ip("192.0.2.3"), ip("192.0.2.2"), ip("192.0.2.1")]
    alloc = SubnetAllocator.build(subnet("192.0.2.0/29", addr_from_start=True))
    alloc.hint = ip("192.0.2.5")
    assert list(alloc.candidates()) == [ip("192.0.2.5"), ip("192.0.2.6")]
