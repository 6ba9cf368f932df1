"""The one place that imports Debian's ``python3-nftables`` (libnftables' JSON API), and the
ruleset generation of a namespace.

The venv's interpreter is not Debian's: ``scripts/install-deps`` adds a ``.pth`` to the venv
that puts only a directory holding a symlink to ``/usr/lib/python3/dist-packages/nftables``
on the path.  Without it this module fails with a message saying so.

A libnftables context opens its netlink socket when it is made, and that socket stays in the
namespace the calling thread was in (checked by ``tests/integration/test_linux_acl.py``), so
one context made inside a node's namespace serves every later call from any namespace.
``generation`` reads the kernel's ruleset generation id (``NFT_MSG_GETGEN``), which every
committed transaction of the namespace bumps by one: the adapter uses it to know that the
table is still as its last transaction left it, without listing it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

try:
    from nftables import Nftables
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError("the linux datapath needs Debian's python3-nftables importable from "
                      "this interpreter: run scripts/install-deps") from e

__all__ = ["Generation", "Nftables", "netns_id"]

NETLINK_NETFILTER = 12
NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
NLMSG_ERROR = 2
NFTA_GEN_ID = 1
_HDR = struct.Struct("=IHHII")


def netns_id(netns: str | None) -> tuple[int, int] | None:
    """What identifies the namespace now behind ``netns`` (device, inode of its file; for
    None, this process's); None if there is none.  A namespace deleted and made again under
    the same name has another inode."""
    path = "/proc/self/ns/net" if netns is None else os.path.join("/run/netns", netns)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Generation:
    """The nftables ruleset generation of one namespace, on a netlink socket made there."""

    def __init__(self, netns: str | None) -> None:
        from tungsten.datapath.linux.netlink import in_netns

        with in_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      NETLINK_NETFILTER)
        self.sock.settimeout(5.0)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __call__(self) -> int:
        self._seq += 1
        # nlmsghdr, then nfgenmsg (AF_UNSPEC, version 0, res_id 0)
        self.sock.send(_HDR.pack(_HDR.size + 4, NFT_MSG_GETGEN, 1, self._seq, 0) + bytes(4))
        while True:
            data = self.sock.recv(4096)
            off = 0
            while off + _HDR.size <= len(data):
                length, kind, _, seq, _ = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    break
                if seq == self._seq:
                    if kind == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", data, off + _HDR.size)[0]
                        raise OSError(err or errno.EPROTO, os.strerror(err or errno.EPROTO))
                    a, end = off + _HDR.size + 4, off + length
                    while a + 4 <= end:
                        alen, akind = struct.unpack_from("=HH", data, a)
                        if alen < 4:
                            break
                        if akind & 0x3FFF == NFTA_GEN_ID and alen >= 8:
                            return int(struct.unpack_from(">I", data, a + 4)[0])
                        a += (alen + 3) & ~3
                    raise OSError(errno.EPROTO, "ruleset generation without an id")
                off += (length + 3) & ~3
