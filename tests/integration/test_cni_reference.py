"""The podman kit works (root): two containers on Debian's reference ``bridge`` +
``host-local`` plugins reach each other, and ``podman rm`` gives the address back.

This validates tests/integration/podmankit.py, on which the tungsten-cni podman test stands.
"""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from tests.integration import podmankit
from tests.integration.podmankit import private_podman, reference_conflist

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(podmankit.available() is not None,
                       reason=str(podmankit.available())),
]


@pytest.mark.timeout(300)
def test_reference_bridge_two_containers_and_release() -> None:
    tag = "pkr" + secrets.token_hex(3)
    with private_podman(tag) as pm:
        net = f"{tag}-net"
        pm.add_network(reference_conflist(net, f"{tag}br", "198.51.100.0/24", pm.ipam_dir))
        a = pm.start(f"{tag}-a", net)
        b = pm.start(f"{tag}-b", net)
        assert a.ip != b.ip and a.ip.startswith("198.51.100.")
        leases = pm.ipam_dir / net
        assert (leases / a.ip).is_file() and (leases / b.ip).is_file()

        # the container's eth0 holds the address podman reported
        r = pm.exec(a.name, "ip", "-4", "addr", "show", "eth0")
        assert r.returncode == 0 and f"inet {a.ip}/24" in r.stdout, r.stdout + r.stderr
        assert pm.ping(a.name, b.ip)
        assert pm.tcp(b.name, b.ip, a.name)
        # a dead address does not answer: the ping check can fail
        assert not pm.ping(a.name, "198.51.100.250")

        # the bridge went into podman's own namespace, not the machine's
        assert pm.netns is not None
        r = subprocess.run(["ip", "-n", pm.netns, "link", "show", f"{tag}br"],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        assert subprocess.run(["ip", "link", "show", f"{tag}br"], capture_output=True,
                              check=False).returncode != 0

        r = pm.rm(a.name)
        assert r.returncode == 0, r.stderr
        assert not (leases / a.ip).exists()  # host-local released the address
        assert (leases / b.ip).is_file()
        assert not os.path.exists(a.netns)  # and podman removed the namespace
        assert not pm.ping(b.name, a.ip)
        assert pm.close() == []  # nothing had to be removed by force
