"""The pure parts of conntrack over netlink and of the re-evaluation's scope: the ctnetlink
codec, which devices a change of plan concerns, and the fallback without ctnetlink."""

from __future__ import annotations

import logging
import socket
import struct

import pytest

from tests.unit.test_security_nft import CONNTRACK, lport, state
from tests.unit.test_security_verdict import DEFAULT_SG, SG_DEFAULT
from tungsten.datapath.linux import acl, ctnetlink, reeval
from tungsten.datapath.linux.ctnetlink import decode_entry, tuple_attr
from tungsten.datapath.linux.reeval import Conntrack, Flow, doomed, parse


def message(family: int, proto: int, src: str, dst: str, sport: int, dport: int,
            zone: int, mark: int) -> bytes:
    """The attributes of a ctnetlink entry as the kernel sends them (orig tuple, mark,
    zone), with an unrelated attribute first."""
    attrs = ctnetlink._nla(3, struct.pack(">I", 0x8)) + \
        tuple_attr(family, proto, src, dst, sport, dport)
    attrs += ctnetlink._nla(ctnetlink.CTA_MARK, struct.pack(">I", mark))
    if zone:
        attrs += ctnetlink._nla(ctnetlink.CTA_ZONE, struct.pack(">H", zone))
    return attrs


@pytest.mark.parametrize(("family", "src", "dst"), [
    (socket.AF_INET, "198.51.100.1", "198.51.100.2"),
    (socket.AF_INET6, "2001:db8::1", "2001:db8::2")])
def test_entries_decode_with_zone_mark_and_their_own_tuple(family: int, src: str,
                                                           dst: str) -> None:
    buf = message(family, 6, src, dst, 40000, 22, 5, 0x80000001)
    e = decode_entry(buf, 0, len(buf), family)
    assert e is not None
    assert (e.family(), e.proto, e.src, e.dst, e.sport, e.dport, e.zone, e.mark) == \
        (family, 6, src, dst, 40000, 22, 5, 0x80000001)
    assert e.key == tuple_attr(family, 6, src, dst, 40000, 22)  # sent back as is
    bare = message(family, 1, src, dst, 0, 0, 0, 0)
    e = decode_entry(bare, 0, len(bare), family)
    assert e is not None and (e.proto, e.sport, e.dport, e.zone, e.mark) == (1, 0, 0, 0, 0)
    assert decode_entry(bare, 0, len(bare), socket.AF_PACKET) is None
    assert decode_entry(b"\0" * 3, 0, 3, family) is None


def test_a_flow_made_by_hand_is_deleted_by_its_fields() -> None:
    f = Flow(17, "2001:db8::1", "2001:db8::2", 5353, 53, 7)
    assert f.family() == socket.AF_INET6
    assert f.tuple_orig() == tuple_attr(socket.AF_INET6, 17, "2001:db8::1", "2001:db8::2",
                                        5353, 53)
    keyed = Flow(1, "198.51.100.1", "198.51.100.2", 0, 0, 5, key=b"kernel's")
    assert keyed.tuple_orig() == b"kernel's"
    assert keyed == Flow(1, "198.51.100.1", "198.51.100.2", 0, 0, 5)  # the key is no identity


def test_without_ctnetlink_nothing_is_judged_and_it_is_said_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refused(netns: str | None) -> ctnetlink.CtNetlink:
        raise OSError(93, "Protocol not supported")

    monkeypatch.setattr(reeval, "CtNetlink", refused)
    monkeypatch.setattr(reeval, "_warned", set())
    st = state([lport(1, (SG_DEFAULT,))], {SG_DEFAULT: DEFAULT_SG})
    with caplog.at_level(logging.WARNING, logger="tungsten.datapath.reeval"):
        assert Conntrack("tgx-none").flows() == []
        assert Conntrack("tgx-none").reevaluate(st, {5: 5}) == []
    assert len([r for r in caplog.records if "tgx-none" in r.getMessage()]) == 1


def test_devices_narrow_the_flows_looked_at_without_changing_verdicts() -> None:
    st = state([lport(1, (1,)), lport(2, (1,))], {1: {"id": 1}})
    flows = parse(CONNTRACK)
    for devices in (None, {"tapp1"}, {"tapp2"}, {"tapp9"}, set()):
        want = [f for f in doomed(st, {5: 5}, flows)
                if devices is None or (f.src in ("198.51.100.1", "198.51.100.2")
                and devices & {"tapp1", "tapp2"})]
        assert doomed(st, {5: 5}, flows, devices=devices) == want


def plan(ports: list[int], group: tuple[int, ...] = (SG_DEFAULT,),
         acl_rules: tuple[dict[str, object], ...] = ()) -> acl.Ruleset:
    st = state([lport(n, group) for n in ports], {SG_DEFAULT: DEFAULT_SG})
    if acl_rules:
        vrf = st.vrfs["a"]
        st.vrfs["a"] = type(vrf)(vrf.network, vrf.name, vrf.vni, vrf.routes, vrf.gateways,
                                 acl_rules, vrf.endpoints)
    r = acl.ruleset(st)
    assert r is not None
    return r


def test_a_port_joining_concerns_its_own_flows_only() -> None:
    two, three = plan([1, 2]), plan([1, 2, 3])
    # its chains, sets and dispatch entries are new; the others' groups admit one more
    # address (widening): only its device
    assert acl._plan_devices(two, three) == {"tapp3"}
    # leaving: the others' groups admit one address fewer, so all their flows are judged
    assert acl._plan_devices(three, two) == {"tapp1", "tapp2", "tapp3"}
    assert acl._plan_devices(three, three) == set()
    # a network's ACL is shared: every flow
    rule = {"action_list": {"simple_action": "pass"},
            "match_condition": {"protocol": "tcp", "src_address": {},
                                "dst_address": {}}}
    assert acl._plan_devices(three, plan([1, 2, 3], acl_rules=(rule,))) is None


def test_the_listing_a_plan_leaves_is_what_commands_compare() -> None:
    want = plan([1, 2])
    listed = acl.listed_as(want)
    assert listed is not None and acl.commands(listed, want, installed={
        ns.name: ns.by_key() for ns in want.sets}) == []
    assert acl.listed_as(None) is None
