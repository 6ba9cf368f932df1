"""The flow log's pure parts: NFLOG and ctnetlink messages decoded from bytes built here by
hand (the kernel's layout, not pyroute2's encoder), log prefixes, the aggregation of
repeated decisions, conntrack records, filters, the file and its rotation, the catalog."""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from tungsten.agent.flowrecorder import (
    Aggregator,
    FlowRecorder,
    ct_record,
    decision,
    load,
    rule_label,
    select,
)
from tungsten.datapath.base import DatapathState, Vrf
from tungsten.datapath.linux import flowlog
from tungsten.datapath.linux.nflog import (
    CtEvent,
    LoggedPacket,
    config_message,
    decode_ct_events,
    decode_packets,
    nfulnl_cfg_msg,
    parse_headers,
)

NLA_F_NESTED = 0x8000


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return head + payload + b"\0" * (-len(payload) % 4)


def nlmsg(kind: int, body: bytes, family: int = socket.AF_INET, res_id: int = 7) -> bytes:
    payload = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, 0, 0) + payload


def ipv4_tcp(src: str, dst: str, sport: int, dport: int, proto: int = 6,
             frag: int = 0) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, frag, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + struct.pack("!HHIIHHHH", sport, dport, 0, 0, 0x5002, 0, 0, 0)


def packet_msg(prefix: str, payload: bytes, *, indev: int = 2, outdev: int = 3,
               zone: int | None = None) -> bytes:
    body = (nla(1, struct.pack("!HBB", 0x0800, 2, 0))  # PACKET_HDR: forward hook
            + nla(3, struct.pack("!QQ", 1_700_000_000, 250_000))  # TIMESTAMP
            + nla(4, struct.pack("!I", indev)) + nla(5, struct.pack("!I", outdev))
            + nla(9, payload) + nla(10, prefix.encode() + b"\0"))
    if zone is not None:
        body += nla(18, nla(18, struct.pack("!H", zone)), nested=True)  # NFULA_CT: CTA_ZONE
    return nlmsg((4 << 8) | 0, body)


def test_nflog_packets_decode_from_kernel_bytes() -> None:
    deny = packet_msg("tgflow r-1 deny ", ipv4_tcp("198.51.100.2", "198.51.100.18", 4000, 22))
    passed = packet_msg("tgflow r-2 pass ",
                        ipv4_tcp("198.51.100.2", "198.51.100.18", 4001, 80), zone=4301)
    other = nlmsg(2, struct.pack("=i", 0))  # an ack in the same read: skipped
    got = list(decode_packets(deny + other + passed + passed[:20]))  # a torn tail: ignored
    assert len(got) == 2
    d, p = got
    assert (d.group, d.prefix, d.indev, d.outdev, d.zone) == (7, "tgflow r-1 deny ", 2, 3, None)
    assert d.headers is not None and (d.headers.proto, d.headers.src, d.headers.dst,
                                      d.headers.sport, d.headers.dport) == (
        6, "198.51.100.2", "198.51.100.18", 4000, 22)
    assert d.timestamp == 1_700_000_000.25
    assert p.zone == 4301 and flowlog.parse_prefix(p.prefix) == ("r-2", "pass")


def test_headers_of_ipv6_fragments_and_garbage() -> None:
    v6 = (struct.pack("!IHBB", 6 << 28, 8, 17, 64)
          + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
          + socket.inet_pton(socket.AF_INET6, "2001:db8::2")
          + struct.pack("!HHHH", 53, 5353, 8, 0))
    h = parse_headers(v6)
    assert h is not None and (h.family, h.proto, h.src, h.dst, h.sport, h.dport) == (
        6, 17, "2001:db8::1", "2001:db8::2", 53, 5353)
    frag = parse_headers(ipv4_tcp("192.0.2.1", "192.0.2.2", 1, 2, frag=185))  # no L4 header
    assert frag is not None and (frag.sport, frag.dport) == (0, 0)
    icmp = parse_headers(ipv4_tcp("192.0.2.1", "192.0.2.2", 1, 2, proto=1))
    assert icmp is not None and (icmp.proto, icmp.sport) == (1, 0)
    assert parse_headers(b"") is None and parse_headers(b"\x45\x00") is None
    assert parse_headers(b"\x10" * 40) is None


def ct_msg(op: int, *, mark: int, zone: int = 4301, counters: tuple[int, int] | None = None,
           ident: int = 9) -> bytes:
    ip = nla(1, socket.inet_aton("198.51.100.2")) + nla(2, socket.inet_aton("198.51.100.18"))
    proto = nla(1, b"\x06") + nla(2, struct.pack("!H", 4001)) + nla(3, struct.pack("!H", 80))
    body = (nla(1, nla(1, ip, True) + nla(2, proto, True), True)  # CTA_TUPLE_ORIG
            + nla(8, struct.pack("!I", mark)) + nla(18, struct.pack("!H", zone))
            + nla(12, struct.pack("!I", ident)))
    if counters is not None:
        c = nla(1, struct.pack("!Q", counters[0])) + nla(2, struct.pack("!Q", counters[1]))
        body += nla(9, c, True) + nla(10, c, True)
    return nlmsg((1 << 8) | op, body, res_id=0)


def test_conntrack_events_decode_from_kernel_bytes() -> None:
    mark = flowlog.rule_mark("r-2")
    new, end = list(decode_ct_events(ct_msg(0, mark=mark) + ct_msg(2, mark=mark,
                                                                    counters=(5, 300))))
    assert (new.kind, new.proto, new.src, new.dst, new.sport, new.dport, new.zone,
            new.mark, new.packets, new.id) == ("new", 6, "198.51.100.2", "198.51.100.18",
                                               4001, 80, 4301, mark, None, 9)
    assert (end.kind, end.packets, end.bytes) == ("destroy", 10, 600)
    # only the entries of logged rules, found without decoding the others
    both = ct_msg(0, mark=0x123, ident=1) + ct_msg(0, mark=mark, ident=2)
    assert [e.id for e in decode_ct_events(both, flowlog.MARK_BIT)] == [2]
    assert [e.id for e in decode_ct_events(both)] == [1, 2]


def test_config_messages_carry_the_group_and_commands() -> None:
    raw = config_message(7, [("NFULA_CFG_CMD", {"command": 1}),
                             ("NFULA_CFG_MODE", {"copy_range": 96, "copy_mode": 2,
                                                 "pad": 0})], seq=3)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", raw)
    assert (length, kind, flags & 0x5, seq) == (len(raw), (4 << 8) | 1, 0x5, 3)
    assert struct.unpack_from("!H", raw, 18)[0] == 7  # res_id: the group, network order
    assert raw[20:28] == struct.pack("=HHB", 5, 1, 1) + b"\0\0\0"  # CMD bind (padded)
    assert struct.unpack_from("!IB", raw, 32) == (96, 2)  # MODE: range, copy packet
    msg = nfulnl_cfg_msg(raw)
    msg.decode()
    assert msg.get_attr("NFULA_CFG_CMD")["command"] == 1


def test_prefixes() -> None:
    assert flowlog.parse_prefix("tgflow 1b2c deny ") == ("1b2c", "deny")
    assert flowlog.parse_prefix("tgflow 1b2c pass") == ("1b2c", "pass")
    for bad in ("", "tgflow", "tgflow x", "tgflow x drop", "other x pass"):
        assert flowlog.parse_prefix(bad) is None
    # what log_statements writes parses back
    stmts = flowlog.log_statements("r-9", "deny")
    assert flowlog.parse_prefix(stmts[1]["log"]["prefix"]) == ("r-9", "deny")


def logged(prefix: str, sport: int = 4000, dport: int = 22) -> LoggedPacket:
    h = parse_headers(ipv4_tcp("198.51.100.2", "198.51.100.18", sport, dport))
    return LoggedPacket(7, prefix, h, 2, 3, None, 0, None)


def test_repeats_fold_and_a_flood_is_capped() -> None:
    names = {2: "tap-a", 3: "vx1"}.get
    assert decision(logged("not ours"), names) is None
    agg = Aggregator(rate=3, window=1.0)
    out: list[dict[str, Any]] = []
    for i in range(10):  # one attempt repeated: one record
        d = decision(logged("tgflow r-1 deny "), names)
        assert d is not None
        out += agg.add(100.0 + i * 0.01, *d)
    for port in range(5):  # five more 5-tuples: two fit the rate, three are counted only
        d = decision(logged("tgflow r-1 deny ", sport=5000 + port), names)
        assert d is not None
        out += agg.add(100.5, *d)
    assert out == []  # the window is still open
    out = agg.flush(101.2)
    assert [r.get("count") for r in out] == [10, 1, 1, 3]
    assert out[0]["in"] == "tap-a" and out[0]["out"] == "vx1" and out[0]["rule"] == "r-1"
    assert out[-1]["event"] == "suppressed"
    assert agg.flush(200.0) == [] and agg.start is None
    # a later decision opens a new window; the next one after it closes the first
    d = decision(logged("tgflow r-1 deny "), names)
    assert d is not None
    assert agg.add(300.0, *d) == []
    assert [r["count"] for r in agg.add(301.5, *d)] == [1]


def event(kind: str, mark: int, ident: int = 1, packets: int | None = None) -> CtEvent:
    return CtEvent(kind, 6, "198.51.100.2", "198.51.100.18", 4001, 80, 4301, mark,
                   packets, None if packets is None else packets * 60, ident)


def test_conntrack_records_of_marked_entries() -> None:
    mark = flowlog.rule_mark("r-2")
    rules = {mark: "r-2"}.get
    starts: dict[int, float] = {}
    assert ct_record(event("new", 0x123), 10.0, rules, starts) is None  # not logged
    s = ct_record(event("new", mark), 10.0, rules, starts)
    assert s is not None and (s["event"], s["rule"], s["zone"]) == ("start", "r-2", 4301)
    e = ct_record(event("destroy", mark, packets=4), 12.5, rules, starts)
    assert e is not None and (e["event"], e["duration"], e["packets"], e["bytes"]) == (
        "end", 2.5, 4, 240)
    assert starts == {}
    lone = ct_record(event("destroy", mark, ident=2), 13.0, rules, starts)
    assert lone is not None and "duration" not in lone and "packets" not in lone


RECORDS = [
    {"time": 3.0, "event": "start", "action": "pass", "rule": "b"},
    {"time": 1.0, "event": "decision", "action": "deny", "rule": "a"},
    {"time": 2.0, "event": "decision", "action": "pass", "rule": "b"},
    {"time": 4.0, "event": "end", "action": "pass", "rule": "b"},
]


def test_filters() -> None:
    assert [r["time"] for r in select(RECORDS)] == [1.0, 2.0, 3.0, 4.0]  # oldest first
    assert [r["time"] for r in select(RECORDS, action="deny")] == [1.0]
    assert [r["time"] for r in select(RECORDS, rule="b", last=2)] == [3.0, 4.0]
    assert [r["time"] for r in select(RECORDS, since=2.5)] == [3.0, 4.0]
    assert [r["time"] for r in select(RECORDS, event="decision")] == [1.0, 2.0]
    assert select(RECORDS, last=0) == []


def test_the_file_rotates_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    rec = FlowRecorder(None, path, max_bytes=300, capacity=5)
    for i in range(12):
        rec._keep([{"time": float(i), "event": "decision", "action": "deny", "rule": "a"}])
    rec.stop()
    assert (tmp_path / "flows.jsonl.1").exists()
    assert not path.exists() or path.stat().st_size < 300 + 100
    kept = load(path)
    assert [r["time"] for r in kept] == sorted(r["time"] for r in kept)
    assert kept[-1]["time"] == 11.0 and len(kept) < 12  # the oldest rotated away
    assert [r["time"] for r in rec.records()] == [7.0, 8.0, 9.0, 10.0, 11.0]  # the ring
    with open(path, "a") as f:
        f.write('{"torn": ')  # a crash mid-line
    again = FlowRecorder(None, path)
    again._load()
    assert again.records()[-1]["time"] == 11.0


def test_catalog_names_the_logged_rules() -> None:
    acl = ({"rule_uuid": "acl-1", "action_list": {"simple_action": "deny", "log": True}},
           {"rule_uuid": "acl-2", "action_list": {"simple_action": "pass"}})
    fw = {"s": {"name": "d:p:shop", "policies": [{"name": "pol", "rules": [
        {"uuid": "fw-1", "name": "web", "action_list": {"simple_action": "pass", "log": True}}]}]}}
    state = DatapathState("n", "192.0.2.1", vrfs={"net": Vrf(network="net", name="d:p:A",
                                                               vni=5, routes={}, acl=acl)},
                          firewall=fw)
    cat = flowlog.catalog(state)
    assert cat == {"acl-1": {"kind": "acl", "network": "d:p:A", "action": "deny"},
                   "fw-1": {"kind": "firewall", "policy_set": "d:p:shop", "policy": "pol",
                            "name": "web", "action": "pass"}}
    assert flowlog.catalog(None) == {}
    assert rule_label({"rule": "acl-1", "rule_info": cat["acl-1"]}) == "acl-1 (acl of d:p:A)"
    assert rule_label({"rule": "fw-1", "rule_info": cat["fw-1"]}) == "fw-1 (d:p:shop/pol)"
    assert rule_label({"rule": None, "mark": 0x40000001}) == "0x40000001"


def test_cli_errors_say_what_to_do(tmp_path: Path) -> None:
    from tungsten.cli.flows import flows as main

    r = CliRunner().invoke(main, ["--since", "soon"])
    assert r.exit_code != 0 and "give a duration such as 90s" in r.output
    r = CliRunner().invoke(main, ["--lab", "x"])
    assert r.exit_code != 0 and "give both --lab and --node" in r.output
    r = CliRunner(env={"TUNGSTEN_STATE_DIR": str(tmp_path)}).invoke(
        main, ["--lab", "nolab", "--node", "n1"])
    assert r.exit_code != 0 and "tungsten lab up" in r.output


def test_policy_names_map_rule_uuids_to_their_policy() -> None:
    from tungsten.agent.flowrecorder import rule_label
    from tungsten.datapath.linux.flowlog import policy_names

    listing = {"network-policys": [
        {"network-policy": {"fq_name": ["default-domain", "acme", "web"],
                            "network_policy_entries": {"policy_rule": [
                                {"rule_uuid": "r1"}, {"rule_uuid": "r2"}, {}]}}},
        {"network-policy": {"fq_name": ["default-domain", "acme", "empty"]}},
        "junk"]}
    names = policy_names(listing)
    assert names == {"r1": "default-domain:acme:web", "r2": "default-domain:acme:web"}
    assert policy_names({}) == {}
    rec = {"rule": "r1", "rule_info": {"kind": "acl", "network": "d:acme:red",
                                       "policy": names["r1"]}}
    assert rule_label(rec) == "r1 (default-domain:acme:web, acl of d:acme:red)"
    assert rule_label({"rule": "r3", "rule_info": {"kind": "acl", "network": "n"}}) == \
        "r3 (acl of n)"
