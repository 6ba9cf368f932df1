"""The re-evaluation's kernel adapters in a namespace of the test's own (``tgr-`` + a random
suffix, removed in a ``finally``): conntrack over netlink (``ctnetlink.py``, ``reeval.py``),
the libnftables context kept per namespace and the ruleset generation (``nftlib.py``,
``acl.Nft``).  Conntrack entries are written straight into the namespace's table (no
traffic); addresses are from 198.18.0.0/15.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator

import pytest

from tests.integration.netnskit import sh
from tungsten.datapath.base import DatapathState, EndpointInfo, LocalPort, NextHop, Vrf
from tungsten.datapath.linux import acl
from tungsten.datapath.linux.ctnetlink import CtNetlink
from tungsten.datapath.linux.netlink import in_netns
from tungsten.datapath.linux.reeval import Conntrack, Flow

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

A, B, C = "198.18.7.1", "198.18.7.2", "198.18.7.3"
MARK = 0x80000005


@pytest.fixture
def ns() -> Iterator[str]:
    name = "tgr-" + secrets.token_hex(3)
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def add_entry(ns: str, proto: int, src: str, dst: str, sport: int = 0, dport: int = 0,
              zone: int = 0, mark: int = 0) -> None:
    """One conntrack entry, written with pyroute2 (its socket is made lazily: the whole
    exchange runs inside the namespace)."""
    from pyroute2 import Conntrack as P2Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    if proto == 1:
        orig = NFCTAttrTuple(saddr=src, daddr=dst, proto=1, icmp_id=sport, icmp_type=8,
                             icmp_code=0)
        reply = NFCTAttrTuple(saddr=dst, daddr=src, proto=1, icmp_id=sport, icmp_type=0,
                              icmp_code=0)
        extra = {}
    else:
        orig = NFCTAttrTuple(saddr=src, daddr=dst, proto=proto, sport=sport, dport=dport)
        reply = NFCTAttrTuple(saddr=dst, daddr=src, proto=proto, sport=dport, dport=sport)
        extra = {"protoinfo": {"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [
            ["CTA_PROTOINFO_TCP_STATE", 3]]}]]}} if proto == 6 else {}
    with in_netns(ns):
        ct = P2Conntrack(nfgen_family=socket.AF_INET)
        try:
            ct.entry("add", timeout=600, tuple_orig=orig, tuple_reply=reply,
                     zone=zone or None, mark=mark or None, **extra)
        finally:
            ct.close()


def test_entries_are_listed_with_zone_and_mark_and_deleted_one_by_one(ns: str) -> None:
    add_entry(ns, 6, A, B, 40000, 22, zone=5, mark=MARK)
    add_entry(ns, 6, A, B, 40000, 22, zone=0)  # the same tuple in another zone
    add_entry(ns, 17, A, C, 5353, 53, zone=5)
    add_entry(ns, 1, B, A, 77, zone=5)  # ping: its id is part of the tuple
    add_entry(ns, 1, B, A, 78, zone=5)
    ct = Conntrack(ns)
    flows = ct.flows()
    got = sorted((f.proto, f.src, f.dst, f.sport, f.dport, f.zone, f.mark) for f in flows)
    assert got == sorted([(6, A, B, 40000, 22, 5, MARK), (6, A, B, 40000, 22, 0, 0),
                          (17, A, C, 5353, 53, 5, 0), (1, B, A, 0, 0, 5, 0),
                          (1, B, A, 0, 0, 5, 0)])
    with CtNetlink(ns) as raw:
        assert raw.count() == 5
    # the host's table holds none of them: the socket was made inside the namespace
    with CtNetlink(None) as host:
        assert not any(e.src == A and e.dst == B for e in host.dump())

    # deleting the zone-5 TCP entry leaves its zone-0 twin and the others
    assert ct.delete(Flow(6, A, B, 40000, 22, 5))
    assert not ct.delete(Flow(6, A, B, 40000, 22, 5))  # gone already: no error
    left = sorted((f.proto, f.zone, f.sport) for f in ct.flows())
    assert left == [(1, 5, 0), (1, 5, 0), (6, 0, 40000), (17, 5, 5353)]
    # an ICMP entry is deleted by the tuple listed (its id), not its twin
    first = next(f for f in ct.flows() if f.proto == 1)
    assert ct.delete(first)
    assert sorted(f.proto for f in ct.flows()) == [1, 6, 17]


def port(n: int, sgs: tuple[int, ...]) -> LocalPort:
    return LocalPort(f"p{n}", "a", 5, f"02:00:00:00:07:{n:02x}", (f"198.18.7.{n}",),
                     f"tgrp{n}", 1450, sgs)


def group_state(members: list[int], outsiders: tuple[int, ...] = ()) -> DatapathState:
    """Ports of one network; ``members`` in a group admitting its members only."""
    sg = 8000007
    rule = {"rule_uuid": "in", "direction": ">", "action_list": {"simple_action": "pass"},
            "match_condition": {"protocol": "any", "ethertype": "IPv4",
                                "src_address": {"security_group": str(sg)},
                                "src_port": {"start_port": 0, "end_port": 65535},
                                "dst_address": {"virtual_network": "any"},
                                "dst_port": {"start_port": 0, "end_port": 65535}}}
    out = {**rule, "rule_uuid": "out",
           "match_condition": {**rule["match_condition"],  # type: ignore[dict-item]
                               "src_address": {"virtual_network": "any"},
                               "dst_address": {"subnet": {"ip_prefix": "0.0.0.0",
                                                          "ip_prefix_len": 0}}}}
    ports = [port(n, (sg,)) for n in members] + [port(n, ()) for n in outsiders]
    eps = {f"{p.ips[0]}/32": EndpointInfo("d:p:a", p.sgs) for p in ports}
    vrf = Vrf("a", "d:p:a", 5, {k: (NextHop("local"),) for k in eps}, endpoints=eps)
    return DatapathState("n1", "192.0.2.1", {p.uuid: p for p in ports}, {"a": vrf},
                         {sg: {"id": sg, "ingress": [rule], "egress": [out]}})


def test_converge_judges_the_flows_whose_verdict_may_change(ns: str) -> None:
    nft = acl.Nft(ns)
    try:
        nft.converge(acl.ruleset(group_state([1, 2, 3])))
        add_entry(ns, 6, "198.18.7.1", "198.18.7.2", 41000, 80, zone=5)
        add_entry(ns, 6, "198.18.7.3", "198.18.7.2", 41001, 80, zone=5)
        # a port joins the group: nothing is denied, only its flows would be judged
        nft.converge(acl.ruleset(group_state([1, 2, 3, 4])))
        assert nft.last_reevaluated == []
        # port 3 leaves the group: its flow to port 2 is denied now and deleted, port 1's
        # stays
        nft.converge(acl.ruleset(group_state([1, 2, 4], outsiders=(3,))))
        assert [(f.src, f.dst) for f in nft.last_reevaluated] == [("198.18.7.3", "198.18.7.2")]
        assert [(f.src, f.dst) for f in Conntrack(ns).flows()] == [("198.18.7.1", "198.18.7.2")]
    finally:
        nft.close()


def test_nft_context_stays_in_the_namespace_it_was_made_in(ns: str) -> None:
    from tungsten.datapath.linux.nftlib import Nftables

    mark = "tgr" + secrets.token_hex(3)
    sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", mark)
    with in_netns(ns):
        ctx = Nftables()
    # used from the host's namespace, it sees and changes the namespace's tables only
    rc, out, err = ctx.json_cmd({"nftables": [{"list": {"tables": None}}]})
    assert rc == 0, err
    assert {t["table"]["name"] for t in out["nftables"] if "table" in t} == {mark}
    rc, _, err = ctx.json_cmd({"nftables": [{"add": {"table": {"family": "inet",
                                                               "name": mark + "w"}}}]})
    assert rc == 0, err
    assert mark + "w" in sh("ip", "netns", "exec", ns, "nft", "list", "tables").stdout
    rc, out, err = Nftables().json_cmd({"nftables": [{"list": {"tables": None}}]})
    assert rc == 0, err
    assert not {mark, mark + "w"} & {t["table"]["name"] for t in out["nftables"]
                                     if "table" in t}


def test_nft_lists_the_table_only_when_someone_else_committed(ns: str) -> None:
    nft = acl.Nft(ns, table="tgr")
    listings = 0
    listed = nft.listed

    def counted() -> acl.Listed | None:
        nonlocal listings
        listings += 1
        return listed()

    nft.listed = counted  # type: ignore[method-assign]
    try:
        want = acl.ruleset(group_state([1, 2]), table="tgr")
        nft.converge(want)
        assert listings == 1  # a new adapter adopts what the kernel has
        assert listed() == acl.listed_as(want)
        assert nft.converge(want) == [] and listings == 1
        # a hand-made chain in our table: the generation moved, the table is listed and
        # the chain removed
        sh("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "tgr", "stray")
        cmds = nft.converge(want)
        assert listings == 2
        assert {"delete": {"chain": {"family": "inet", "table": "tgr", "name": "stray"}}} \
            in cmds
        assert "stray" not in sh("ip", "netns", "exec", ns, "nft", "list", "table", "inet",
                                 "tgr").stdout
        # the namespace deleted and made again under its name: the adapter follows it
        sh("ip", "netns", "del", ns)
        sh("ip", "netns", "add", ns)
        assert nft.converge(want)
        assert "chain forward" in sh("ip", "netns", "exec", ns, "nft", "list", "table",
                                     "inet", "tgr").stdout
    finally:
        nft.close()
