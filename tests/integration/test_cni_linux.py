"""``tungsten-cni`` with an agent on the linux datapath: real veths, addresses, routes.

One node namespace (``tcni-<random>-n1``, a veth ``ul0`` as its underlay) with an agent
process programming it, containers as namespaces of their own.  Everything is created by the
test with a random tag and removed in ``finally``.  Addresses are documentation ranges.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Controller
from tests.integration.cnikit import PLUGIN, AgentProc, Cni, instance_ips, make_network, vmis
from tests.integration.netnskit import sh

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]
pytest.importorskip("tungsten.control.node")
pytest.importorskip("tungsten.datapath.linux")

TUNING = Path("/usr/lib/cni/tuning")
GW = "198.51.100.254"


@dataclass
class Node:
    tag: str
    cni: Cni
    namespaces: list[str] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return f"{self.tag}-n1"

    def container(self, name: str) -> str:
        ns = f"{self.tag}-{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        return f"/run/netns/{ns}"

    def drop(self, path: str) -> None:
        sh("ip", "netns", "del", Path(path).name, check=False)

    def node_links(self) -> list[str]:
        out = sh("ip", "-n", self.netns, "-j", "link", "show").stdout
        return [lk["ifname"] for lk in json.loads(out)]

    def node_routes(self) -> str:
        return sh("ip", "-n", self.netns, "route", "show", "table", "all").stdout


def cexec(netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", Path(netns).name, *cmd, check=check)


def ping(netns: str, dst: str) -> bool:
    return cexec(netns, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", dst,
                 check=False).returncode == 0


def addr_of(result: dict[str, Any], index: int = 0) -> str:
    return str(result["ips"][index]["address"]).split("/")[0]


@pytest.fixture
def node(controller: Controller, tmp_path: Path) -> Iterator[Node]:
    tag = "tcni-" + secrets.token_hex(3)
    make_network(controller.url, "blue", "198.51.100.0")
    make_network(controller.url, "red", "203.0.113.0")
    n = Node(tag, Cni(AgentProc(controller.url, tmp_path, underlay_ip="192.0.2.1"),
                      "default-domain:default-project:blue"))
    try:
        sh("ip", "netns", "add", n.netns)
        n.namespaces.append(n.netns)
        sh("ip", "-n", n.netns, "link", "set", "lo", "up")
        sh("ip", "-n", n.netns, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
        sh("ip", "-n", n.netns, "addr", "add", "192.0.2.1/24", "dev", "ul0")
        sh("ip", "-n", n.netns, "link", "set", "ul0p", "up")
        sh("ip", "-n", n.netns, "link", "set", "ul0", "up")
        n.cni.agent.datapath_args = ["--datapath", "linux", "--netns", n.netns,
                                     "--underlay-if", "ul0"]
        n.cni.agent.start()
        yield n
    finally:
        n.cni.agent.stop()
        for ns in reversed(n.namespaces):
            sh("ip", "netns", "del", ns, check=False)


def assert_clean(node: Node) -> None:
    """No address, port, veth, route or attachment is left."""
    api = node.cni.agent.api
    assert instance_ips(api) == []
    assert vmis(api) == []
    assert [x for x in node.node_links() if x.startswith("tap")] == []
    assert "tap" not in node.node_routes()
    assert node.cni.agent.call("GET", "/cni/attachments") == []


def test_add_check_del(node: Node) -> None:
    cni = node.cni
    ns = node.container("c1")
    out = cni.add("c1", ns)
    host, inner = out["interfaces"]
    ip = addr_of(out)
    assert host["name"] in node.node_links() and host.get("mac")
    shown = json.loads(cexec(ns, "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert shown["address"] == inner["mac"] and shown["mtu"] == 1450 == inner["mtu"]
    assert {(a["local"], a["prefixlen"]) for a in shown["addr_info"]
            if a["family"] == "inet"} == {(ip, 32)}
    route = cexec(ns, "ip", "route").stdout
    assert f"default via {GW} dev eth0" in route and "onlink" in route
    assert cni.run("CHECK", "c1", "eth0", ns, cni.conf(prevResult=out)) == (0, None)

    # a second ADD for an interface the container has: refused, nothing changes
    rc, err = cni.run("ADD", "c1", "eth0", ns)
    assert rc != 0 and err is not None and err["code"] == 101, err
    rc, err = cni.run("ADD", "c1-other", "eth0", ns)
    assert rc != 0 and err is not None and err["code"] == 101, err
    assert instance_ips(cni.agent.api) == [ip]

    # CHECK sees what is broken
    cexec(ns, "ip", "route", "del", "default")
    rc, err = cni.run("CHECK", "c1", "eth0", ns, cni.conf(prevResult=out))
    assert rc != 0 and err is not None and err["code"] == 104 and "route" in err["msg"]

    cni.delete("c1", ns, prev=out)
    assert "eth0" not in cexec(ns, "ip", "link").stdout
    assert_clean(node)
    cni.delete("c1", ns)  # again
    assert cni.run("STATUS", "", conf=cni.conf()) == (0, None)


def test_del_after_the_netns_is_gone(node: Node) -> None:
    ns = node.container("c2")
    out = node.cni.add("c2", ns)
    node.drop(ns)
    node.cni.delete("c2", ns, prev=out)
    node.cni.delete("c2")  # and without CNI_NETNS
    assert_clean(node)


def test_gc_removes_devices_too(node: Node) -> None:
    cni = node.cni
    keep, drop = node.container("gk"), node.container("gd")
    cni.add("gk", keep)
    cni.add("gd", drop)
    gc = cni.conf(**{"cni.dev/valid-attachments": [{"containerID": "gk", "ifname": "eth0"}]})
    assert cni.run("GC", "", conf=gc) == (0, None)
    assert "eth0" not in cexec(drop, "ip", "link").stdout
    assert "eth0" in cexec(keep, "ip", "link").stdout
    assert len(instance_ips(cni.agent.api)) == 1
    cni.delete("gk", keep)
    assert_clean(node)


def test_veth_made_ahead_is_undone(node: Node) -> None:
    """ADD makes the veth while the port is created: an ADD failing after that (the
    address is taken; the address is in no subnet) leaves no device on either side, and
    an ADD adopting a port of the attachment's name (another uuid, another MAC) drops the
    veth made for its own uuid and plugs the adopted port."""
    import requests

    cni = node.cni
    api = cni.agent.api
    first = node.container("va")
    out = cni.add("va", first, runtimeConfig={"ips": ["198.51.100.77"]})
    for cid, ip, code in (("vb", "198.51.100.77", 102), ("vc", "203.0.113.5", 7)):
        ns = node.container(cid)
        rc, err = cni.run("ADD", cid, "eth0", ns, cni.conf(runtimeConfig={"ips": [ip]}))
        assert rc != 0 and err is not None and err["code"] == code, err
        assert "eth0" not in cexec(ns, "ip", "link").stdout
    assert [x for x in node.node_links() if x.startswith("tap")] == \
        [out["interfaces"][0]["name"]]
    cni.delete("va", first, prev=out)
    assert_clean(node)

    fq = ["default-domain", "default-project", "cni-n1-vd-eth0"]
    vn_fq = [*fq[:2], "blue"]
    vn = requests.post(f"{api}/fqname-to-id", json={"type": "virtual-network",
                       "fq_name": vn_fq}, timeout=30).json()["uuid"]
    made = requests.post(f"{api}/virtual-machine-interfaces", json={
        "virtual-machine-interface": {"fq_name": fq, "parent_type": "project",
                                      "virtual_network_refs": [{"to": vn_fq, "uuid": vn}]}},
        timeout=30)
    made.raise_for_status()
    uuid = made.json()["virtual-machine-interface"]["uuid"]
    requests.post(f"{api}/instance-ips", json={"instance-ip": {
        "fq_name": [uuid], "virtual_network_refs": [{"to": vn_fq, "uuid": vn}],
        "virtual_machine_interface_refs": [{"to": fq, "uuid": uuid}]}},
        timeout=30).raise_for_status()
    ns = node.container("vd")
    out = cni.add("vd", ns)
    tap = "tap" + uuid.replace("-", "")[:11]
    assert out["interfaces"][0]["name"] == tap
    assert [x for x in node.node_links() if x.startswith("tap")] == [tap]
    shown = json.loads(cexec(ns, "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert shown["address"] == out["interfaces"][1]["mac"]
    assert cni.run("CHECK", "vd", "eth0", ns, cni.conf(prevResult=out)) == (0, None)
    cni.delete("vd", ns, prev=out)
    assert_clean(node)


def test_two_interfaces_in_one_container(node: Node) -> None:
    cni = node.cni
    red = Cni(cni.agent, "default-project:red", name="rednet")
    c1, c2, c3 = node.container("m1"), node.container("m2"), node.container("m3")
    blue1 = cni.add("m1", c1, "eth0")
    red1 = red.add("m1", c1, "net1")
    blue2 = cni.add("m2", c2)
    red3 = red.add("m3", c3)
    links = cexec(c1, "ip", "-o", "link").stdout
    assert "eth0" in links and "net1" in links
    assert addr_of(red1).startswith("203.0.113.") and addr_of(blue1).startswith("198.51.100.")
    # one default route only (the first interface's); the second network by its gateway
    assert ping(c2, addr_of(blue1))
    assert ping(c3, addr_of(red1))
    assert not ping(c2, addr_of(red3))  # networks stay apart
    for cid, c, ifname, res, net in (("m1", c1, "net1", red1, red),
                                     ("m1", c1, "eth0", blue1, cni),
                                     ("m2", c2, "eth0", blue2, cni),
                                     ("m3", c3, "eth0", red3, red)):
        net.delete(cid, c, ifname, prev=res)
    assert_clean(node)


def test_del_storm_leaves_nothing(node: Node) -> None:
    """100 ADD/DEL cycles, 10 in parallel, each worker with its own container."""
    cni = node.cni
    containers = [node.container(f"s{i}") for i in range(10)]

    def worker(i: int) -> list[str]:
        seen = []
        for j in range(10):
            cid = f"storm{i}-{j}"
            out = cni.add(cid, containers[i])
            seen.append(addr_of(out))
            cni.delete(cid, containers[i], prev=out)
            if j % 3 == 0:
                cni.delete(cid, containers[i])  # DEL twice now and then
        return seen

    with ThreadPoolExecutor(10) as pool:
        got = [a for addrs in pool.map(worker, range(10)) for a in addrs]
    assert len(got) == 100
    assert_clean(node)
    # every pass of the storm applied cleanly (a failed pass is retried as a full dump: the
    # ports still end up right, so only the log shows it, e.g. a route via a device not up)
    log = (node.cni.agent.workdir / "agent.log").read_text()
    assert "reconcile failed" not in log, log[-4000:]
    for c in containers:
        assert "eth0" not in cexec(c, "ip", "link").stdout


def test_agent_killed_between_add_and_del(node: Node) -> None:
    cni = node.cni
    ns, other = node.container("k1"), node.container("k2")
    out = cni.add("k1", ns)
    keep = cni.add("k2", other)
    cni.agent.kill()
    cni.delete("k1", ns, prev=out)  # succeeds while the agent is down
    assert len(instance_ips(cni.agent.api)) == 2  # released only once the agent is back
    cni.agent.start()
    assert instance_ips(cni.agent.api) == [addr_of(keep)]
    assert out["interfaces"][0]["name"] not in node.node_links()
    assert "eth0" not in cexec(ns, "ip", "link").stdout
    assert cni.run("CHECK", "k2", "eth0", other, cni.conf(prevResult=keep)) == (0, None)
    cni.delete("k2", other)
    assert_clean(node)


def run_plugin(binary: list[str], command: str, conf: dict[str, Any], cid: str, netns: str,
               ifname: str = "eth0") -> dict[str, Any] | None:
    env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": "/usr/lib/cni"}
    p = subprocess.run(binary, input=json.dumps(conf).encode(), env=env, capture_output=True,
                       timeout=300, check=False)
    assert p.returncode == 0, (binary, command, p.stdout, p.stderr)
    return json.loads(p.stdout) if p.stdout.strip() else None


def run_conflist(conflist: dict[str, Any], binaries: dict[str, list[str]], command: str,
                 cid: str, netns: str, prev: dict[str, Any] | None = None) \
        -> dict[str, Any] | None:
    """What a runtime does with a network-config list: ADD and CHECK in order, each plugin
    given the previous result; DEL in reverse order with the final result."""
    plugins = conflist["plugins"]
    order = list(reversed(plugins)) if command == "DEL" else plugins
    result = prev
    for p in order:
        conf = {**p, "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
        if result is not None:
            conf["prevResult"] = result
        out = run_plugin(binaries[p["type"]], command, conf, cid, netns)
        if command == "ADD":
            result = out
    return result


@pytest.mark.skipif(not TUNING.exists(), reason="needs containernetworking-plugins (tuning)")
def test_chaining_with_tuning(node: Node) -> None:
    ns = node.container("t1")
    conflist = {"cniVersion": "1.0.0", "name": "tnet", "plugins": [
        {"type": "tungsten-cni", "network": node.cni.network,
         "agentSocket": str(node.cni.agent.socket)},
        {"type": "tuning", "mtu": 1400, "promisc": True,
         "sysctl": {"net.ipv4.conf.all.arp_ignore": "1"}}]}
    binaries = {"tungsten-cni": PLUGIN, "tuning": [str(TUNING)]}
    result = run_conflist(conflist, binaries, "ADD", "t1", ns)
    assert result is not None and result["cniVersion"] == "1.0.0"
    assert [i["name"] for i in result["interfaces"]][1] == "eth0"  # tuning saw our result
    shown = json.loads(cexec(ns, "ip", "-j", "link", "show", "eth0").stdout)[0]
    assert shown["mtu"] == 1400 and "PROMISC" in shown["flags"]
    assert cexec(ns, "sysctl", "-n", "net.ipv4.conf.all.arp_ignore").stdout.strip() == "1"
    run_conflist(conflist, binaries, "CHECK", "t1", ns, prev=result)
    run_conflist(conflist, binaries, "DEL", "t1", ns, prev=result)
    assert_clean(node)


def test_host_device_mode(node: Node) -> None:
    """A veth in the node namespace stands in for a VF: ``vf<tag>`` moves into the container,
    its peer (the "representor") becomes the port's node side."""
    cni = node.cni
    vf, rep = "vf" + node.tag[-6:], "vr" + node.tag[-6:]
    sh("ip", "-n", node.netns, "link", "add", vf, "type", "veth", "peer", "name", rep)
    ns, peer = node.container("h1"), node.container("h2")
    out = cni.add("h1", ns, device=vf)
    other = cni.add("h2", peer)
    host = out["interfaces"][0]["name"]
    links = node.node_links()
    assert vf not in links and rep not in links and host in links
    shown = json.loads(cexec(ns, "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert shown["address"] == out["interfaces"][1]["mac"]
    assert ping(peer, addr_of(out)) and ping(ns, addr_of(other))
    assert cni.run("CHECK", "h1", "eth0", ns, cni.conf(prevResult=out, device=vf)) == (0, None)
    cni.delete("h1", ns, prev=out)
    links = node.node_links()
    assert vf in links and rep in links and host not in links
    assert "inet " not in sh("ip", "-n", node.netns, "addr", "show", vf).stdout
    # the device must exist: a missing one is an invalid config, and nothing is left
    rc, err = cni.run("ADD", "h3", "eth0", ns, cni.conf(device="nosuchdev0"))
    assert rc != 0 and err is not None and (err["code"], err["details"]) == (7, "device")
    cni.delete("h2", peer)
    assert_clean(node)
