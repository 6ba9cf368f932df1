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

from tungsten.datapath.linux.ctnetlink import NfnlSocket, attrs

try:
    from nftables import Nftables
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError("the linux datapath needs Debian's python3-nftables importable from "
                      "this interpreter: run scripts/install-deps") from e

__all__ = ["Generation", "Nftables", "netns_id"]

NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
NFTA_GEN_ID = 1


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


class Generation(NfnlSocket):
    """The nftables ruleset generation of one namespace, on a netlink socket made there."""

    def __init__(self, netns: str | None) -> None:
        super().__init__(netns, timeout=5.0)

    def __call__(self) -> int:
        seq = self._send(NFT_MSG_GETGEN, 0, socket.AF_UNSPEC)
        for data, _, start, end in self._replies(seq, single=True):
            a = attrs(data, start + 4, end)  # after the nfgenmsg header
            if NFTA_GEN_ID in a:
                return int(struct.unpack_from(">I", data, a[NFTA_GEN_ID][0])[0])
        raise OSError(errno.EPROTO, "ruleset generation without an id")
