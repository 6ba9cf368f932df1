"""``tungsten-cni`` against a real controller and an agent with the ``sim`` datapath (no
plumbing, so no root): the port lifecycle, idempotent DEL, GC, and DEL while the agent is
down.  The network namespace is a plain file here (the sim agent only checks it exists)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Controller
from tests.integration.cnikit import AgentProc, Cni, instance_ips, make_network, vmis

pytest.importorskip("tungsten.control.node")


@pytest.fixture
def cni(controller: Controller, tmp_path: Path) -> Iterator[Cni]:
    make_network(controller.url, "blue", "198.51.100.0")
    agent = AgentProc(controller.url, tmp_path)
    try:
        agent.start()
        yield Cni(agent, "default-domain:default-project:blue")
    finally:
        agent.stop()


def netns_file(tmp_path: Path, name: str) -> str:
    p = tmp_path / f"ns-{name}"
    p.touch()
    return str(p)


def test_add_check_del(cni: Cni, tmp_path: Path) -> None:
    api = cni.agent.api
    ns = netns_file(tmp_path, "a")
    out = cni.add("ctr-a", ns, cni_args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1")
    assert out["cniVersion"] == "1.1.0"
    host, inner = out["interfaces"]
    assert host["name"].startswith("tap") and "sandbox" not in host
    assert inner == {"name": "eth0", "mac": inner["mac"], "mtu": 1450, "sandbox": ns}
    (ip,) = out["ips"]
    assert ip["address"].startswith("198.51.100.") and ip["address"].endswith("/32")
    assert ip["interface"] == 1 and ip["gateway"] == "198.51.100.254"
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "198.51.100.254"}]
    assert out["dns"] == {"nameservers": ["198.51.100.253"]}
    addr = ip["address"].split("/")[0]
    assert instance_ips(api) == [addr]
    (att,) = cni.agent.call("GET", "/cni/attachments")
    assert att["labels"] == {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-1"}
    assert att["state"] == "ready"

    rc, err = cni.run("CHECK", "ctr-a", "eth0", ns, cni.conf(prevResult=out))
    assert (rc, err) == (0, None)
    rc, err = cni.run("CHECK", "ctr-zz", "eth0", ns, cni.conf(prevResult=out))
    assert rc != 0 and err is not None and err["code"] == 104

    # ADD again for the same attachment while it exists: sim cannot see the interface, so
    # the old attachment is replaced (never two ports for one attachment)
    cni.delete("ctr-a", ns, prev=out)
    assert instance_ips(api) == [] and vmis(api) == []
    cni.delete("ctr-a", ns)  # twice: nothing left, still fine
    cni.delete("ctr-never-added")


def test_requested_ip_and_mac_and_errors(cni: Cni, tmp_path: Path) -> None:
    api = cni.agent.api
    ns = netns_file(tmp_path, "b")
    rc_ = {"ips": ["198.51.100.77/24"], "mac": "02:00:5e:00:00:77"}
    out = cni.add("ctr-b", ns, runtimeConfig=rc_, mtu=1400)
    assert out["ips"][0]["address"] == "198.51.100.77/32"
    assert out["interfaces"][1]["mac"] == "02:00:5e:00:00:77"
    assert out["interfaces"][1]["mtu"] == 1400
    # the same address again: refused, and nothing of the failed ADD is left
    rc, err = cni.run("ADD", "ctr-c", "eth0", netns_file(tmp_path, "c"),
                      cni.conf(runtimeConfig={"ips": ["198.51.100.77"]}))
    assert rc != 0 and err is not None and err["code"] == 102, err
    assert instance_ips(api) == ["198.51.100.77"]
    assert len(cni.agent.call("GET", "/cni/attachments")) == 1
    # an address outside the network's subnet
    rc, err = cni.run("ADD", "ctr-d", "eth0", netns_file(tmp_path, "d"),
                      cni.conf(runtimeConfig={"ips": ["203.0.113.5"]}))
    assert rc != 0 and err is not None and err["code"] == 7, err
    assert err["details"] == "runtimeConfig.ips"
    # an unknown network: invalid config, naming the key
    rc, err = cni.run("ADD", "ctr-e", "eth0", netns_file(tmp_path, "e"),
                      cni.conf(network="default-project:none-such"))
    assert rc != 0 and err is not None and (err["code"], err["details"]) == (7, "network")
    # an MTU above the overlay MTU
    rc, err = cni.run("ADD", "ctr-f", "eth0", netns_file(tmp_path, "f"), cni.conf(mtu=1500))
    assert rc != 0 and err is not None and (err["code"], err["details"]) == (7, "mtu")
    # a netns that does not exist
    rc, err = cni.run("ADD", "ctr-g", "eth0", str(tmp_path / "gone"))
    assert rc != 0 and err is not None and err["code"] == 3
    assert instance_ips(api) == ["198.51.100.77"]
    assert len(vmis(api)) == 1
    # no config from the control node within the timeout (1 ms): 103, and undone
    rc, err = cni.run("ADD", "ctr-h", "eth0", netns_file(tmp_path, "h"),
                      cni.conf(timeout=0.001))
    assert rc != 0 and err is not None and err["code"] == 103, err
    assert instance_ips(api) == ["198.51.100.77"]
    assert len(vmis(api)) == 1 and len(cni.agent.call("GET", "/cni/attachments")) == 1


def test_gc_keeps_only_valid_attachments(cni: Cni, tmp_path: Path) -> None:
    api = cni.agent.api
    for c in ("g1", "g2", "g3"):
        cni.add(c, netns_file(tmp_path, c))
    other = Cni(cni.agent, cni.network, name="othernet")
    other.add("g4", netns_file(tmp_path, "g4"))
    assert len(instance_ips(api)) == 4
    gc = cni.conf(**{"cni.dev/valid-attachments": [{"containerID": "g2", "ifname": "eth0"}]})
    rc, out = cni.run("GC", "", conf=gc)
    assert (rc, out) == (0, None)
    left = {a["containerID"] for a in cni.agent.call("GET", "/cni/attachments")}
    assert left == {"g2", "g4"}  # g4 belongs to another network config: not ours to GC
    assert len(instance_ips(api)) == 2
    gc = cni.conf(**{"cni.dev/attachments": []})  # the 1.1.0 spec's key name
    assert cni.run("GC", "", conf=gc) == (0, None)
    left = {a["containerID"] for a in cni.agent.call("GET", "/cni/attachments")}
    assert left == {"g4"}


def test_status(cni: Cni, controller: Controller) -> None:
    assert cni.run("STATUS", "", conf=cni.conf()) == (0, None)
    controller.stop()  # the agent goes headless: existing ports keep forwarding
    deadline = time.monotonic() + 60
    while True:
        rc, err = cni.run("STATUS", "", conf=cni.conf())
        if rc != 0:
            break
        assert time.monotonic() < deadline, "the agent never noticed the control node left"
        time.sleep(0.2)
    assert err is not None and err["code"] == 51, err
    cni.agent.stop()
    rc, err = cni.run("STATUS", "", conf=cni.conf())
    assert rc != 0 and err is not None and err["code"] == 50


def test_del_while_the_agent_is_down(cni: Cni, tmp_path: Path) -> None:
    api = cni.agent.api
    ns = netns_file(tmp_path, "k")
    keep = netns_file(tmp_path, "keep")
    out = cni.add("ctr-k", ns)
    cni.add("ctr-keep", keep)
    assert len(instance_ips(api)) == 2
    cni.agent.kill()
    cni.delete("ctr-k", ns, prev=out)  # succeeds with the agent down
    assert list((tmp_path / "agent.sock.pending").glob("*.json"))
    assert len(instance_ips(api)) == 2  # nobody released it yet
    cni.agent.start()
    assert instance_ips(api) == [cni.agent.call("GET", "/ports")[0]["ips"][0]]
    assert [a["containerID"] for a in cni.agent.call("GET", "/cni/attachments")] == \
        ["ctr-keep"]
    assert not list((tmp_path / "agent.sock.pending").glob("*.json"))


def test_netns_gone_while_the_agent_is_down(cni: Cni, tmp_path: Path) -> None:
    api = cni.agent.api
    ns = netns_file(tmp_path, "n")
    cni.add("ctr-n", ns)
    cni.agent.kill()
    Path(ns).unlink()  # the runtime removed the container, DEL never came
    cni.agent.start()
    assert instance_ips(api) == [] and vmis(api) == []


def test_add_the_agent_died_during_is_undone_at_start(cni: Cni, tmp_path: Path) -> None:
    """The agent made the VMI and instance-ip but died before recording the port's uuid:
    the record says so ("adding", no port); on start the agent finds the port by its name
    and releases it."""
    api = cni.agent.api
    ns = netns_file(tmp_path, "x")
    cni.add("ctr-x", ns)
    cni.agent.kill()
    reg_file = tmp_path / "state" / "ports.json"
    reg = json.loads(reg_file.read_text())
    (att,) = reg["attachments"]
    att.update(state="adding", port="", result={})
    reg["ports"] = []  # not registered yet either
    reg_file.write_text(json.dumps(reg))
    assert len(instance_ips(api)) == 1
    cni.agent.start()
    assert instance_ips(api) == [] and vmis(api) == []
    assert cni.agent.call("GET", "/cni/attachments") == []


def test_add_names_the_port_itself_and_adopts_one_of_its_name(cni: Cni,
                                                               tmp_path: Path) -> None:
    """ADD chooses the port's uuid (so its device is on record before it exists) and its
    MAC; the config API keeps both.  A port already named for the attachment (a retried
    create) is adopted instead: its uuid, its MAC, released by DEL."""
    import requests

    api = cni.agent.api
    ns = netns_file(tmp_path, "u")
    out = cni.add("ctr-u", ns)
    (att,) = cni.agent.call("GET", "/cni/attachments")
    vmi = requests.get(f"{api}/virtual-machine-interface/{att['port']}",
                       timeout=30).json()["virtual-machine-interface"]
    macs = vmi["virtual_machine_interface_mac_addresses"]["mac_address"]
    assert macs == [out["interfaces"][1]["mac"]]
    assert out["interfaces"][0]["name"] == att["host_ifname"] == \
        "tap" + att["port"].replace("-", "")[:11]
    cni.delete("ctr-u", ns, prev=out)

    # a VMI (and its address) of the attachment's name exists before the ADD
    fq = ["default-domain", "default-project", "cni-n1-ctr-v-eth0"]
    vn = requests.post(f"{api}/fqname-to-id", json={"type": "virtual-network",
                       "fq_name": [*fq[:2], "blue"]}, timeout=30).json()["uuid"]
    body: dict[str, Any] = {"virtual-machine-interface": {
        "fq_name": fq, "parent_type": "project",
        "virtual_network_refs": [{"to": [*fq[:2], "blue"], "uuid": vn}]}}
    made = requests.post(f"{api}/virtual-machine-interfaces", json=body, timeout=30)
    made.raise_for_status()
    uuid = made.json()["virtual-machine-interface"]["uuid"]
    requests.post(f"{api}/instance-ips", json={"instance-ip": {
        "fq_name": [uuid], "virtual_network_refs": [{"to": [*fq[:2], "blue"], "uuid": vn}],
        "virtual_machine_interface_refs": [{"to": fq, "uuid": uuid}]}},
        timeout=30).raise_for_status()
    ns2 = netns_file(tmp_path, "v")
    out2 = cni.add("ctr-v", ns2)
    (att,) = cni.agent.call("GET", "/cni/attachments")
    assert (att["port"], att["state"]) == (uuid, "ready")
    assert out2["interfaces"][0]["name"] == "tap" + uuid.replace("-", "")[:11]
    cni.delete("ctr-v", ns2, prev=out2)
    assert instance_ips(api) == [] and vmis(api) == []
