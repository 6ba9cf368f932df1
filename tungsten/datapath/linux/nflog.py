"""NFLOG (``nfnetlink_log``) and conntrack events for one network namespace.

pyroute2 has nfnetlink (``nfgen_msg``, ``NFNL_SUBSYS_ULOG``) and conntrack messages
(``nfct_msg``) but no NFLOG messages; their schema is declared here with pyroute2's nla
classes (attribute numbers from ``linux/netfilter/nfnetlink_log.h``).  No maintained Python
NFLOG library exists (the PyPI ones are unmaintained bindings needing libnetfilter_log).

``decode_packets``/``decode_ct_events``/``parse_headers`` are pure (bytes in, records out);
``NflogSocket``/``CtEventSocket`` open non-blocking netlink sockets inside the namespace
(like ``netlink.LinkEvents``): the caller polls them from a thread of its own.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, nla
from pyroute2.netlink.nfnetlink import (
    NFNL_SUBSYS_CTNETLINK,
    NFNL_SUBSYS_ULOG,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    nfgen_msg,
)
from pyroute2.netlink.nfnetlink.nfctsocket import (
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_NEW,
    nfct_msg,
)

from tungsten.datapath.linux.netlink import in_netns

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid

NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
NFULNL_CFG_F_CONNTRACK = 0x0004  # NFULA_CT: the packet's conntrack entry (its zone)

COPY_RANGE = 96  # bytes of each packet: an IPv6 header and the L4 ports fit
QUEUE_THRESHOLD = 32  # packets per netlink message under load
FLUSH_TIMEOUT = 10  # 1/100 s: a lone packet is delivered after at most 0.1 s
RCVBUF = 1 << 20  # a flood overflows this (ENOBUFS, counted as lost), not the agent


class _ct_attrs(nla):  # type: ignore[misc]
    """NFULA_CT: a conntrack entry's attributes, as in ctnetlink (pyroute2's schema)."""

    nla_map = nfct_msg.nla_map


for _name in {t for _, t in nfct_msg.nla_map}:  # the nested types ctnetlink's map names
    if hasattr(nfct_msg, _name):
        setattr(_ct_attrs, _name, getattr(nfct_msg, _name))


class nfulnl_msg(nfgen_msg):  # type: ignore[misc]
    """NFULNL_MSG_PACKET: one logged packet (``res_id``: the group)."""

    prefix = "NFULA_"
    nla_map = (
        ("NFULA_UNSPEC", "none"),
        ("NFULA_PACKET_HDR", "packet_hdr"),
        ("NFULA_MARK", "be32"),
        ("NFULA_TIMESTAMP", "timestamp"),
        ("NFULA_IFINDEX_INDEV", "be32"),
        ("NFULA_IFINDEX_OUTDEV", "be32"),
        ("NFULA_IFINDEX_PHYSINDEV", "be32"),
        ("NFULA_IFINDEX_PHYSOUTDEV", "be32"),
        ("NFULA_HWADDR", "hex"),
        ("NFULA_PAYLOAD", "cdata"),
        ("NFULA_PREFIX", "asciiz"),
        ("NFULA_UID", "be32"),
        ("NFULA_SEQ", "be32"),
        ("NFULA_SEQ_GLOBAL", "be32"),
        ("NFULA_GID", "be32"),
        ("NFULA_HWTYPE", "be16"),
        ("NFULA_HWHEADER", "hex"),
        ("NFULA_HWLEN", "be16"),
        ("NFULA_CT", "ct_attrs"),
        ("NFULA_CT_INFO", "be32"),
        ("NFULA_VLAN", "hex"),
        ("NFULA_L2HDR", "hex"),
    )

    class packet_hdr(nla):  # type: ignore[misc]
        fields = (("hw_protocol", ">H"), ("hook", "B"), ("pad", "B"))

    class timestamp(nla):  # type: ignore[misc]
        fields = (("sec", ">Q"), ("usec", ">Q"))

    ct_attrs = _ct_attrs


class nfulnl_cfg_msg(nfgen_msg):  # type: ignore[misc]
    """NFULNL_MSG_CONFIG: bind a group, set its copy mode, batching and flags."""

    prefix = "NFULA_CFG_"
    nla_map = (
        ("NFULA_CFG_UNSPEC", "none"),
        ("NFULA_CFG_CMD", "cfg_cmd"),
        ("NFULA_CFG_MODE", "cfg_mode"),
        ("NFULA_CFG_NLBUFSIZ", "be32"),
        ("NFULA_CFG_TIMEOUT", "be32"),
        ("NFULA_CFG_QTHRESH", "be32"),
        ("NFULA_CFG_FLAGS", "be16"),
    )

    class cfg_cmd(nla):  # type: ignore[misc]
        fields = (("command", "B"),)

    class cfg_mode(nla):  # type: ignore[misc]
        fields = (("copy_range", ">I"), ("copy_mode", "B"), ("pad", "B"))


# -- pure decoding ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Headers:
    """What the first bytes of a packet say."""

    family: int  # 4 | 6
    proto: int
    src: str
    dst: str
    sport: int = 0
    dport: int = 0


PORT_PROTOCOLS = (6, 17, 132)


def parse_headers(payload: bytes) -> Headers | None:
    """The network and transport header fields of a packet starting at its IP header
    (None: not IPv4/IPv6, or too short)."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        ihl = (payload[0] & 0x0F) * 4
        proto = payload[9]
        src = str(ipaddress.IPv4Address(payload[12:16]))
        dst = str(ipaddress.IPv4Address(payload[16:20]))
        fragment = struct.unpack_from("!H", payload, 6)[0] & 0x1FFF
        l4 = ihl if fragment == 0 else -1
    elif version == 6 and len(payload) >= 40:
        proto = payload[6]
        src = str(ipaddress.IPv6Address(payload[8:24]))
        dst = str(ipaddress.IPv6Address(payload[24:40]))
        l4 = 40
    else:
        return None
    sport = dport = 0
    if proto in PORT_PROTOCOLS and l4 >= 0 and len(payload) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", payload, l4)
    return Headers(version, proto, src, dst, sport, dport)


@dataclass(frozen=True)
class LoggedPacket:
    """One packet NFLOG delivered."""

    group: int
    prefix: str
    headers: Headers | None
    indev: int  # ifindex (0: none)
    outdev: int
    zone: int | None  # the conntrack zone (None: the kernel sent no conntrack entry)
    mark: int
    timestamp: float | None  # the kernel's, when it has one


def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, flags, whole message) per netlink message in ``data`` (a truncated tail ends
    the walk)."""
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, kind, flags, _, _ = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > len(data):
            return
        yield kind, flags, data[offset:offset + length]
        offset += (length + 3) & ~3


def decode_packets(data: bytes) -> Iterator[LoggedPacket]:
    """The NFULNL_MSG_PACKET messages in ``data`` (what one ``recv`` returned)."""
    for kind, _, raw in _messages(data):
        if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            continue
        try:
            msg = nfulnl_msg(raw)
            msg.decode()
        except Exception:  # pyroute2 raises assorted errors on garbage: skip the message
            continue
        payload = msg.get_attr("NFULA_PAYLOAD")
        ts = msg.get_attr("NFULA_TIMESTAMP")
        ct = msg.get_attr("NFULA_CT")
        zone = ct.get_attr("CTA_ZONE") if ct is not None else None
        yield LoggedPacket(
            group=int(msg["res_id"]), prefix=str(msg.get_attr("NFULA_PREFIX") or ""),
            headers=parse_headers(bytes(payload)) if payload else None,
            indev=int(msg.get_attr("NFULA_IFINDEX_INDEV") or 0),
            outdev=int(msg.get_attr("NFULA_IFINDEX_OUTDEV") or 0),
            zone=(int(zone) if zone is not None else 0) if ct is not None else None,
            mark=int(msg.get_attr("NFULA_MARK") or 0),
            timestamp=ts["sec"] + ts["usec"] / 1e6 if ts is not None else None)


@dataclass(frozen=True)
class CtEvent:
    """A conntrack entry created (``new``) or destroyed (``destroy``)."""

    kind: str  # "new" | "destroy"
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    zone: int
    mark: int
    packets: int | None  # both directions (None: accounting off)
    bytes: int | None
    id: int


def _tuple(msg: Any) -> tuple[int, str, str, int, int]:
    t = msg.get_attr("CTA_TUPLE_ORIG")
    ip = t.get_attr("CTA_TUPLE_IP") if t is not None else None
    pr = t.get_attr("CTA_TUPLE_PROTO") if t is not None else None
    if ip is None or pr is None:
        raise ValueError("no original tuple")
    src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
    dst = ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST")
    return (int(pr.get_attr("CTA_PROTO_NUM") or 0), str(src), str(dst),
            int(pr.get_attr("CTA_PROTO_SRC_PORT") or 0),
            int(pr.get_attr("CTA_PROTO_DST_PORT") or 0))


CTA_MARK = 8
NFGEN_HDR = 4


def _top_be32(raw: bytes, kind: int) -> int | None:
    """A top-level big-endian u32 attribute of a nfnetlink message, read without decoding
    the message (a busy node's unlogged flows are skipped for the cost of this scan)."""
    offset = NLMSG_HDR.size + NFGEN_HDR
    while offset + 4 <= len(raw):
        length, t = struct.unpack_from("=HH", raw, offset)
        if length < 4:
            return None
        if t & 0x3FFF == kind and length >= 8:
            return int(struct.unpack_from("!I", raw, offset + 4)[0])
        offset += (length + 3) & ~3
    return None


def decode_ct_events(data: bytes, mark_bit: int = 0) -> Iterator[CtEvent]:
    """The ctnetlink NEW/DELETE event messages in ``data`` (with ``mark_bit``: only those
    of entries whose mark has it)."""
    for kind, _, raw in _messages(data):
        sub, op = kind >> 8, kind & 0xFF
        if sub != NFNL_SUBSYS_CTNETLINK or op not in (IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE):
            continue
        if mark_bit and not (_top_be32(raw, CTA_MARK) or 0) & mark_bit:
            continue
        try:
            msg = nfct_msg(raw)
            msg.decode()
            proto, src, dst, sport, dport = _tuple(msg)
        except Exception:  # garbage or an entry without addresses: skip it
            continue
        packets = octets = None
        for direction in ("CTA_COUNTERS_ORIG", "CTA_COUNTERS_REPLY"):
            c = msg.get_attr(direction)
            if c is None:
                continue
            p = c.get_attr("CTA_COUNTERS_PACKETS") or c.get_attr("CTA_COUNTERS32_PACKETS")
            b = c.get_attr("CTA_COUNTERS_BYTES") or c.get_attr("CTA_COUNTERS32_BYTES")
            packets = (packets or 0) + int(p or 0)
            octets = (octets or 0) + int(b or 0)
        yield CtEvent("new" if op == IPCTNL_MSG_CT_NEW else "destroy", proto, src, dst,
                      sport, dport, int(msg.get_attr("CTA_ZONE") or 0),
                      int(msg.get_attr("CTA_MARK") or 0), packets, octets,
                      int(msg.get_attr("CTA_ID") or 0))


def config_message(group: int, attrs: list[tuple[str, Any]], seq: int) -> bytes:
    """An NFULNL_MSG_CONFIG request for ``group``, asking for an ack."""
    msg = nfulnl_cfg_msg()
    msg["header"]["type"] = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    msg["header"]["sequence_number"] = seq
    msg["nfgen_family"] = socket.AF_UNSPEC
    msg["version"] = 0
    msg["res_id"] = group
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


# -- sockets ---------------------------------------------------------------------------------
def _netfilter_socket(netns: str | None, groups: int = 0) -> socket.socket:
    with in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK,
                             socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


class NflogSocket:
    """Bound to one NFLOG group in one namespace (one listener per group and namespace:
    a second one gets EBUSY)."""

    def __init__(self, netns: str | None, group: int) -> None:
        self.group = group
        self.sock = _netfilter_socket(netns)
        self._seq = 0
        try:
            self._config([("NFULA_CFG_CMD", {"command": NFULNL_CFG_CMD_BIND})])
            self._config([("NFULA_CFG_MODE", {"copy_range": COPY_RANGE,
                                              "copy_mode": NFULNL_COPY_PACKET, "pad": 0})])
            self._config([("NFULA_CFG_QTHRESH", QUEUE_THRESHOLD),
                          ("NFULA_CFG_TIMEOUT", FLUSH_TIMEOUT)])
            # the zone comes with the packet's conntrack entry: the kernel needs
            # CONFIG_NETFILTER_NETLINK_GLUE_CT (EOPNOTSUPP without); the devices say where
            # the packet was in any case
            with contextlib.suppress(OSError):
                self._config([("NFULA_CFG_FLAGS", NFULNL_CFG_F_CONNTRACK)])
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def _config(self, attrs: list[tuple[str, Any]]) -> None:
        self._seq += 1
        self.sock.send(config_message(self.group, attrs, self._seq))
        deadline = 5.0
        while True:
            r, _, _ = select.select([self.sock], [], [], deadline)
            if not r:
                raise OSError(errno.ETIMEDOUT, "no answer to an NFLOG config request")
            data = self.sock.recv(1 << 16)
            for kind, _, raw in _messages(data):
                if kind != NLMSG_ERROR or len(raw) < NLMSG_HDR.size + 4:
                    continue  # a logged packet already: the reader gets the next ones
                code = struct.unpack_from("=i", raw, NLMSG_HDR.size)[0]
                seq = NLMSG_HDR.unpack_from(raw, 0)[3]
                if seq != self._seq:
                    continue
                if code != 0:
                    raise OSError(-code, f"NFLOG group {self.group}: {os.strerror(-code)}")
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._config([("NFULA_CFG_CMD", {"command": NFULNL_CFG_CMD_UNBIND})])
        self.sock.close()


class CtEventSocket:
    """Conntrack NEW and DESTROY events of one namespace."""

    def __init__(self, netns: str | None) -> None:
        self.sock = _netfilter_socket(netns, (1 << (NFNLGRP_CONNTRACK_NEW - 1)) |
                                      (1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def read_all(sock: socket.socket, limit: int = 16) -> tuple[list[bytes], bool]:
    """What is queued on a non-blocking socket (at most ``limit`` reads: a flood is not
    read forever), and whether messages were lost (ENOBUFS: the kernel dropped what the
    buffer could not hold)."""
    out: list[bytes] = []
    lost = False
    while len(out) < limit:
        try:
            out.append(sock.recv(1 << 17))
        except BlockingIOError:
            return out, lost
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            lost = True
    return out, lost
