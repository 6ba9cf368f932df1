"""The one place that imports Debian's ``python3-nftables`` (libnftables' JSON API).

The venv's interpreter is not Debian's: ``scripts/install-deps`` adds a ``.pth`` to the venv
that puts only a directory holding a symlink to ``/usr/lib/python3/dist-packages/nftables``
on the path.  Without it this module fails with a message saying so.
"""

from __future__ import annotations

try:
    from nftables import Nftables
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError("the linux datapath needs Debian's python3-nftables importable from "
                      "this interpreter: run scripts/install-deps") from e

__all__ = ["Nftables"]
