"""``tungsten lab`` for real (root): namespaces, a controller, linux-datapath agents.

Every lab here is named ``t<random>`` and lives under a per-test ``TUNGSTEN_STATE_DIR``; the
fixture runs ``lab down`` and then removes whatever of ``tl-<lab>-*`` and the lab's processes
could be left, failures included.  Documentation address ranges only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.labkit import (
    NEEDS_ROOT,
    Lab,
    assert_nothing_left,
    lab_session,
    our_namespaces,
)
from tests.waits import poll_until

pytestmark = NEEDS_ROOT

WAIT = 60.0  # upper bound for a condition (never asserted on)

TOPOLOGY = """\
name: {name}
nodes: [compute1, compute2]
projects: [acme, globex]
networks:
  - {{name: red,   project: acme,   subnet: 198.51.100.0/24}}
  - {{name: blue,  project: acme,   subnet: 203.0.113.0/24}}
  - {{name: green, project: globex, subnet: 198.51.100.0/24}}   # overlapping red
workloads:
  - {{name: web1, node: compute1, network: red}}
  - {{name: web2, node: compute2, network: red}}
  - {{name: db1,  node: compute2, network: blue}}
  - {{name: twin, node: compute2, network: green}}
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with lab_session(tmp_path, TOPOLOGY, "t", Lab) as lab:
        yield lab


def test_up_status_ping_isolation_down(lab: Lab) -> None:
    r = lab.run("up", str(lab.file))
    assert r.returncode == 0, r.stderr
    assert "workload twin on compute2" in r.stderr  # progress shown
    st = lab.status()
    assert {"name", "controller", "nodes", "workloads"} <= set(st)
    assert str(st["controller"]).startswith("http://127.0.0.1:")
    nodes = st["nodes"]
    assert isinstance(nodes, list) and [n["name"] for n in nodes] == ["compute1", "compute2"]
    for n in nodes:
        assert {"name", "underlay_ip", "netns", "agent_socket", "cni_conf"} <= set(n)
        assert Path(n["cni_conf"]).is_file() and Path(n["agent_socket"]).is_socket()
        assert n["netns"] in our_namespaces(lab.name)
    assert [n["underlay_ip"] for n in nodes] == ["192.0.2.1", "192.0.2.2"]
    wls = st["workloads"]
    assert isinstance(wls, list)
    for w in wls:
        assert {"name", "node", "network", "ip", "mac", "port_uuid"} <= set(w)
    ip = {w["name"]: w["ip"].split("/")[0] for w in wls}
    assert wls[0]["ip"].endswith("/24")

    # `status` without a name (one lab up) and the table form
    r = lab.run("status")
    assert r.returncode == 0 and "web1" in r.stdout

    # cross-node, same network
    assert lab.ping("web1", ip["web2"])
    # exit status passed through
    assert lab.exec("web1", "sh", "-c", "exit 7").returncode == 7
    # another network of the project, no policy: nothing gets through
    assert not lab.ping("web1", ip["db1"])
    # the overlapping twin in another project is never reached: with the red twin of its
    # address silent, nothing answers; with it answering, the red one did
    dst = ip["twin"]
    red_owner = next((w for w in wls if w["network"] == "red" and w["ip"].split("/")[0] == dst),
                     None)
    if red_owner is not None:
        assert lab.ping("web2", dst)
        lab.exec(red_owner["name"], "sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=1")
    assert not lab.ping("web2", dst)

    r = lab.run("down")
    assert r.returncode == 0, r.stderr
    assert_nothing_left(lab)
    r = lab.run("down", lab.name)
    assert r.returncode == 2 and "no lab" in r.stderr


def test_up_of_a_bad_file_changes_nothing(lab: Lab) -> None:
    lab.file.write_text(lab.file.read_text().replace("node: compute2, network: blue",
                                                     "node: compute2, netwrk: blue"))
    r = lab.run("up", str(lab.file))
    assert r.returncode == 2
    assert f"{lab.file}:11:" in r.stderr and "unknown key 'netwrk'" in r.stderr
    assert_nothing_left(lab)


def test_up_failing_midway_removes_what_it_made(lab: Lab) -> None:
    # a good file, but a workload's namespace is taken: refused before anything is made
    taken = f"tl-{lab.name}-db1"
    subprocess.run(["ip", "netns", "add", taken], check=True)
    try:
        r = lab.run("up", str(lab.file))
        assert r.returncode == 2 and taken in r.stderr
        assert our_namespaces(lab.name) == [taken]  # not ours: left alone
    finally:
        subprocess.run(["ip", "netns", "del", taken], check=False)
    # an error after things exist (a bad agent option makes every agent exit)
    env_file = lab.file.with_name("bad.yaml")
    env_file.write_text(lab.file.read_text())
    r = subprocess.run(lab.cmd("up", str(env_file)), capture_output=True, text=True,
                       timeout=300, check=False,
                       env={**lab.env, "TUNGSTEN_AGENT_NETNS": "ignored",
                            "TUNGSTEN_LOG_LEVEL": "loud"})
    assert r.returncode == 2, r.stderr
    assert "removing what was made" in r.stderr and "not created" in r.stderr
    assert_nothing_left(lab)


def test_down_after_kill9_of_up(lab: Lab) -> None:
    up = subprocess.Popen(lab.cmd("up", str(lab.file)), env=lab.env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state = lab.labdir / "lab.json"

        def agents_started() -> bool:  # midway
            try:
                return len(json.loads(state.read_text())["processes"]) >= 2
            except (OSError, ValueError, KeyError):
                return False

        poll_until(lambda: up.poll() is not None or agents_started(), WAIT, every=0.02)
        os.kill(up.pid, signal.SIGKILL)
    finally:
        up.wait()
    assert our_namespaces(lab.name)  # it did make things
    r = lab.run("down", lab.name)
    assert r.returncode == 0, r.stderr
    assert_nothing_left(lab)
