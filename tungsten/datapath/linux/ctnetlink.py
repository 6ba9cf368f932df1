"""Conntrack over netlink (ctnetlink) in one network namespace: how many entries, list them
(original tuple, zone, mark), delete one; no ``conntrack`` process, no text.

A raw ``NETLINK_NETFILTER`` socket is opened inside the namespace (``in_netns``) and stays
bound to it.  pyroute2's ``NFCTSocket`` speaks the same protocol, but runs an asyncio loop
step per message: measured here 18 ms to list 200 entries and 51 ms for 1000, where this
decoder takes 11 and 16 (the CLI: 13 and 19).  The floor, ~10 ms even for an empty
namespace, is the kernel walking its conntrack hash table (shared by every namespace,
``nf_conntrack_buckets``); ``count`` is answered without the walk, so callers skip the
listing of a namespace that has no entry.

An entry keeps its original tuple's attribute as the kernel sent it, so deleting it sends
exactly that tuple back (ICMP entries need their id, type and code; other protocols keep
whatever keys the kernel tracks them by).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Self

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
_SUBSYS = 1 << 8  # NFNL_SUBSYS_CTNETLINK
CT_GET, CT_DELETE, CT_GET_STATS = _SUBSYS | 1, _SUBSYS | 2, _SUBSYS | 5
CTA_TUPLE_ORIG, CTA_MARK, CTA_ZONE = 1, 8, 18
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_STATS_GLOBAL_ENTRIES = 1
PORT_PROTOCOLS = (6, 17, 33, 132, 136)  # tcp, udp, dccp, sctp, udplite

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big endian, 0)
_NLA = struct.Struct("=HH")
_BE16, _BE32 = struct.Struct(">H"), struct.Struct(">I")
_BUF = 1 << 18  # larger than any message the kernel batches in one read of a dump


@dataclass(frozen=True)
class Flow:
    """A conntrack entry's original direction (what re-evaluation judges and flow logs show)."""

    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    zone: int
    mark: int = field(default=0, compare=False)  # ct mark (logged flows: see flowlog.py)
    # the original tuple as the kernel encoded it (CTA_TUPLE_ORIG with its header), sent back
    # as is to delete exactly this entry: ICMP entries that differ by id only are one Flow
    key: bytes = field(default=b"", compare=False, repr=False)

    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.src else socket.AF_INET

    def tuple_orig(self) -> bytes:
        return self.key or tuple_attr(self.family(), self.proto, self.src, self.dst,
                                      self.sport, self.dport)


def attrs(buf: bytes | memoryview, off: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (start, end) of its payload, for the attributes in [off, end)."""
    out: dict[int, tuple[int, int]] = {}
    while off + 4 <= end:
        length, kind = _NLA.unpack_from(buf, off)
        if length < 4:
            break
        out.setdefault(kind & 0x3FFF, (off + 4, min(off + length, end)))
        off += (length + 3) & ~3
    return out


def decode_entry(buf: bytes | memoryview, off: int, end: int, family: int) -> Flow | None:
    """The entry in one ``IPCTNL_MSG_CT_NEW`` message's attributes; None if it lacks a
    tuple this understands (a family other than IPv4/IPv6)."""
    a = attrs(buf, off, end)
    if CTA_TUPLE_ORIG not in a or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    t0, t1 = a[CTA_TUPLE_ORIG]
    tup = attrs(buf, t0, t1)
    if CTA_TUPLE_IP not in tup or CTA_TUPLE_PROTO not in tup:
        return None
    ip = attrs(buf, *tup[CTA_TUPLE_IP])
    proto = attrs(buf, *tup[CTA_TUPLE_PROTO])
    src_key, dst_key = ((CTA_IP_V4_SRC, CTA_IP_V4_DST) if family == socket.AF_INET
                        else (CTA_IP_V6_SRC, CTA_IP_V6_DST))
    if src_key not in ip or dst_key not in ip or CTA_PROTO_NUM not in proto:
        return None
    (s0, s1), (d0, d1) = ip[src_key], ip[dst_key]
    sport = _BE16.unpack_from(buf, proto[CTA_PROTO_SRC_PORT][0])[0] \
        if CTA_PROTO_SRC_PORT in proto else 0
    dport = _BE16.unpack_from(buf, proto[CTA_PROTO_DST_PORT][0])[0] \
        if CTA_PROTO_DST_PORT in proto else 0
    num = buf[proto[CTA_PROTO_NUM][0]]
    if num not in PORT_PROTOCOLS:
        sport = dport = 0  # ICMP ids and GRE keys are not ports
    return Flow(num, socket.inet_ntop(family, bytes(buf[s0:s1])),
                socket.inet_ntop(family, bytes(buf[d0:d1])), sport, dport,
                _BE16.unpack_from(buf, a[CTA_ZONE][0])[0] if CTA_ZONE in a else 0,
                _BE32.unpack_from(buf, a[CTA_MARK][0])[0] if CTA_MARK in a else 0,
                bytes(buf[t0 - 4:t1]))


def _nla(kind: int, payload: bytes) -> bytes:
    head = _NLA.pack(4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def tuple_attr(family: int, proto: int, src: str, dst: str, sport: int = 0,
               dport: int = 0) -> bytes:
    """CTA_TUPLE_ORIG for an entry known by its fields only (ports for the protocols that
    have them; the kernel needs more to find an ICMP entry)."""
    s_key, d_key = ((CTA_IP_V4_SRC, CTA_IP_V4_DST) if family == socket.AF_INET
                    else (CTA_IP_V6_SRC, CTA_IP_V6_DST))
    ip = _nla(s_key, socket.inet_pton(family, src)) + _nla(d_key, socket.inet_pton(family, dst))
    l4 = _nla(CTA_PROTO_NUM, bytes([proto]))
    if proto in PORT_PROTOCOLS:
        l4 += _nla(CTA_PROTO_SRC_PORT, _BE16.pack(sport)) + \
            _nla(CTA_PROTO_DST_PORT, _BE16.pack(dport))
    return _nla(CTA_TUPLE_ORIG | NLA_F_NESTED, _nla(CTA_TUPLE_IP | NLA_F_NESTED, ip)
                + _nla(CTA_TUPLE_PROTO | NLA_F_NESTED, l4))


class NfnlSocket:
    """A ``NETLINK_NETFILTER`` socket bound to network namespace ``netns`` (None: this one);
    one request at a time (``_send``, then ``_replies``).  Raises ``OSError`` when the
    kernel has no such netlink family; ``failed`` once the socket itself failed (a timeout,
    a lost reply): make another.

    Keep it open across changes: closing a netfilter netlink socket right after an
    nftables commit waits ~10 ms in the kernel (measured here)."""

    def __init__(self, netns: str | None, timeout: float = 10.0) -> None:
        from tungsten.datapath.linux.netlink import in_netns

        with in_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      NETLINK_NETFILTER)
        self.sock.settimeout(timeout)
        self._seq = 0
        self.failed = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, kind: int, flags: int, family: int, attrs: bytes = b"") -> int:
        self._seq += 1
        body = _NFGEN.pack(family, 0, 0) + attrs
        try:
            self.sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | flags,
                                     self._seq, 0) + body)
        except OSError:
            self.failed = True
            raise
        return self._seq

    def _replies(self, seq: int, single: bool = False) -> list[tuple[memoryview, int, int, int]]:
        """The messages answering request ``seq`` as (buffer, type, start, end of payload),
        until DONE or an ack (``single``: the first one; the statistics answer has no DONE);
        an error reply raises ``OSError``."""
        out: list[tuple[memoryview, int, int, int]] = []
        while True:
            try:
                data = memoryview(self.sock.recv(_BUF))
            except OSError:
                self.failed = True
                raise
            off = 0
            while off + _HDR.size <= len(data):
                length, kind, _, mseq, _ = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    return out
                end = min(off + length, len(data))
                if mseq == seq:
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", data, off + _HDR.size)[0]
                        if err:
                            raise OSError(err, os.strerror(err))
                        return out
                    out.append((data, kind, off + _HDR.size, end))
                    if single:
                        return out
                off += (length + 3) & ~3



class CtNetlink(NfnlSocket):
    """Conntrack (ctnetlink) of one namespace: count, list, delete."""

    def count(self) -> int:
        """The number of entries in the namespace (no walk of the table)."""
        seq = self._send(CT_GET_STATS, NLM_F_DUMP, socket.AF_UNSPEC)
        for data, _, start, end in self._replies(seq, single=True):
            a = attrs(data, start + _NFGEN.size, end)
            if CTA_STATS_GLOBAL_ENTRIES in a:
                return int(_BE32.unpack_from(data, a[CTA_STATS_GLOBAL_ENTRIES][0])[0])
        raise OSError(errno.EPROTO, "conntrack statistics without an entry count")

    def dump(self) -> list[Flow]:
        """Every entry of the namespace, IPv4 and IPv6."""
        seq = self._send(CT_GET, NLM_F_DUMP, socket.AF_UNSPEC)
        out: list[Flow] = []
        for data, _, start, end in self._replies(seq):
            e = decode_entry(data, start + _NFGEN.size, end, data[start])
            if e is not None:
                out.append(e)
        return out

    def delete(self, family: int, tuple_orig: bytes, zone: int) -> bool:
        """Delete the entry with this original tuple in ``zone``; False if it was gone."""
        seq = self._send(CT_DELETE, NLM_F_ACK, family,
                         tuple_orig + _nla(CTA_ZONE, _BE16.pack(zone)))
        try:
            self._replies(seq)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True
