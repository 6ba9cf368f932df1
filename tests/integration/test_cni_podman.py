"""podman containers get their network from ``tungsten-cni`` (root).

A lab with networks A (198.51.100.0/24) and B (203.0.113.0/24) and a workload on each; a
private podman (tests/integration/podmankit.py) whose CNI network is a conflist with
``tungsten-cni``, network A and a lab node's agent socket.  The container must reach the
network-A workloads (same node and across the overlay), not the network-B one, and after
``podman rm`` its instance-ip must be gone from the config API.

The agent runs in the node's namespace and plugs the veth into the container's namespace by
path, so it must not matter in which namespace podman runs: one podman runs in a namespace of
its own, the other in the machine's, and the plugin must leave nothing in either.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import podmankit
from tests.integration.labkit import Lab, lab_session
from tests.integration.podmankit import Podman, private_podman, tungsten_conflist
from tests.waits import wait_for

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / ".venv" / "bin" / "tungsten-cni"
WAIT = 60.0  # upper bound for a condition (never asserted on as a speed)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(podmankit.available() is not None,
                       reason=str(podmankit.available())),
]

TOPOLOGY = """\
name: {name}
nodes: [compute1, compute2]
projects: [acme]
networks:
  - {{name: neta, project: acme, subnet: 198.51.100.0/24}}
  - {{name: netb, project: acme, subnet: 203.0.113.0/24}}
workloads:
  - {{name: a1, node: compute1, network: neta}}
  - {{name: a2, node: compute2, network: neta}}
  - {{name: b1, node: compute1, network: netb}}
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if not PLUGIN.is_file():
        pytest.skip(f"{PLUGIN} is not installed yet (the tungsten-cni plugin of issue 5)")
    with lab_session(tmp_path, TOPOLOGY, "p", Lab, up=True) as lab:
        yield lab


def instance_ips(controller: str) -> dict[str, str]:
    """address -> instance-ip uuid, from the config API."""
    with urllib.request.urlopen(f"{controller}/instance-ips?detail=True", timeout=30) as r:
        body: dict[str, Any] = json.loads(r.read())
    out = {}
    for entry in body["instance-ips"]:
        iip = entry.get("instance-ip", entry)
        out[str(iip.get("instance_ip_address"))] = str(iip["uuid"])
    return out


def links(netns: str) -> set[str]:
    cmd = ["ip", "-n", netns, "-o", "link", "show"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def vmis(controller: str) -> set[str]:
    with urllib.request.urlopen(f"{controller}/virtual-machine-interfaces", timeout=30) as r:
        body: dict[str, Any] = json.loads(r.read())
    return {str(v["uuid"]) for v in body["virtual-machine-interfaces"]}


def wait_gone(controller: str, ip: str, ports_before: set[str]) -> None:
    """The container's instance-ip and port leave the config API."""
    wait_for(f"{ip} or its port still in the config API",
             lambda: ip not in instance_ips(controller) and vmis(controller) == ports_before,
             WAIT, every=0.5)


def check_container(lab: Lab, pm: Podman, cname: str, network: str, ips: dict[str, str],
                    controller: str) -> podmankit.Container:
    c = pm.start(cname, network)
    assert c.ip.startswith("198.51.100."), c
    assert c.ip in instance_ips(controller)  # the address is the config API's
    r = pm.exec(c.name, "ip", "-4", "addr", "show", "eth0")
    assert r.returncode == 0 and f"inet {c.ip}/" in r.stdout, r.stdout + r.stderr
    assert pm.ping(c.name, ips["a1"])  # network A, same node
    assert pm.ping(c.name, ips["a2"])  # network A, across the overlay
    assert lab.ping("a2", c.ip)  # and back
    assert not pm.ping(c.name, ips["b1"])  # network B: isolated
    assert not lab.ping("b1", c.ip)
    return c


@pytest.mark.timeout(600)
def test_podman_container_on_tungsten_network(lab: Lab) -> None:
    st = lab.status()
    controller = str(st["controller"])
    node = next(n for n in st["nodes"] if n["name"] == "compute1")
    ips = lab.ips()
    net = f"{lab.name}-a"
    conflist = tungsten_conflist(net, "default-domain:acme:neta", str(node["agent_socket"]))
    plugins = {"tungsten-cni": PLUGIN}

    # podman in a namespace of its own
    with private_podman(f"{lab.name}o", plugins) as pm:
        assert pm.netns is not None
        pm.add_network(conflist)
        before = vmis(controller)
        c = check_container(lab, pm, f"{lab.name}-own", net, ips, controller)
        assert links(pm.netns) == {"lo"}  # the plugin put nothing in the runtime's namespace
        # the lab's tcp path too, workload -> container
        r = pm.run("exec", "-d", c.name, "sh", "-c", "echo tungsten | nc -l -p 5001")
        assert r.returncode == 0, r.stderr
        got = ""
        for _ in range(10):
            got = lab.exec("a1", "sh", "-c",  # the host has no nc: busybox-static's
                           f"busybox nc -w 2 {c.ip} 5001 </dev/null").stdout.strip()
            if got:
                break
        assert got == "tungsten"
        assert len(vmis(controller)) == len(before) + 1  # so the check below can fail
        r = pm.rm(c.name)
        assert r.returncode == 0, r.stderr
        wait_gone(controller, c.ip, before)
        assert pm.close() == []

    # podman in the machine's namespace (as a runtime on a real node would run)
    with private_podman(f"{lab.name}r", plugins, own_netns=False) as pm:
        pm.add_network(conflist)
        before = vmis(controller)
        c = check_container(lab, pm, f"{lab.name}-root", net, ips, controller)
        assert len(vmis(controller)) == len(before) + 1  # so the check below can fail
        r = pm.rm(c.name)
        assert r.returncode == 0, r.stderr
        wait_gone(controller, c.ip, before)
        assert not Path(c.netns).exists()
        assert pm.close() == []
