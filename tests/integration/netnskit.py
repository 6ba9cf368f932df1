"""Two namespaced "nodes" joined by a veth underlay, for the linux datapath's tests."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable

UL = {"n1": "192.0.2.1", "n2": "192.0.2.2"}  # underlay addresses (documentation range)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


def add_two_nodes(tag: str, nodes: dict[str, str], namespaces: list[str]) -> None:
    """Create namespaces ``<tag>-n1`` and ``<tag>-n2`` with ``ul0`` between them.  Each
    namespace is recorded in ``namespaces`` before anything is put in it, for cleanup."""
    for n in ("n1", "n2"):
        ns = f"{tag}-{n}"
        sh("ip", "netns", "add", ns)
        namespaces.append(ns)
        nodes[n] = ns
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    n1, n2 = nodes["n1"], nodes["n2"]
    sh("ip", "-n", n1, "link", "add", "ul0", "type", "veth", "peer", "ul0", "netns", n2)
    for n, ns in nodes.items():
        sh("ip", "-n", ns, "addr", "add", f"{UL[n]}/24", "dev", "ul0")
        sh("ip", "-n", ns, "link", "set", "ul0", "up")


def teardown(procs: Iterable[subprocess.Popen[str]], namespaces: list[str]) -> None:
    """Kill and reap ``procs`` (their pipes closed), then delete ``namespaces``, the last
    made first."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.communicate(timeout=30)
    for ns in reversed(namespaces):
        sh("ip", "netns", "del", ns, check=False)
