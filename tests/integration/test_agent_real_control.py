"""The agent with the real control node and config API: in process (two agents, one fabric)
and as processes driven through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import ClientSession, web

from tests.conftest import free_port, terminate
from tests.integration.test_agent_fake_control import run, until
from tungsten.agent.agent import Agent
from tungsten.api.core import ConfigApi
from tungsten.api.server import build_app
from tungsten.datapath.sim import SimDatapath, SimFabric
from tungsten.store import open_store

VN_FQ = ["default-domain", "default-project", "blue"]
VN_BODY = {"virtual-network": {
    "fq_name": VN_FQ, "parent_type": "project",
    "network_ipam_refs": [{"to": ["default-domain", "default-project", "default-network-ipam"],
                           "attr": {"ipam_subnets": [{"subnet": {"ip_prefix": "198.51.100.0",
                                                                  "ip_prefix_len": 24}}]}}]}}

SERVER = """
import asyncio, sys
from aiohttp import web
from tungsten.api.core import ConfigApi
from tungsten.api.server import build_app
from tungsten.control.node import ControlNode
from tungsten.store import open_store

api = ConfigApi(open_store(sys.argv[2]))
app = build_app(api)
ControlNode(api).mount(app)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


async def serve_controller() -> tuple[web.AppRunner, str]:
    from tungsten.control.node import ControlNode

    api = ConfigApi(open_store("sqlite:///:memory:"))
    app = build_app(api)
    ControlNode(api, hold_time=2.0).mount(app)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def test_two_agents_with_the_real_control_node() -> None:
    pytest.importorskip("tungsten.control.node")

    async def main() -> None:
        runner, url = await serve_controller()
        fabric = SimFabric()
        a1 = Agent("n1", "192.0.2.1", [url], SimDatapath(fabric), settle=0.0)
        a2 = Agent("n2", "192.0.2.2", [url], SimDatapath(fabric), settle=0.0)
        try:
            async with ClientSession() as http:
                async with http.post(url + "/virtual-networks", json=VN_BODY) as r:
                    assert r.status == 200, await r.text()
                await a1.start()
                await a2.start()
                p1 = await a1.add_port(network="blue", name="p1")
                p2 = await a2.add_port(network="default-domain:default-project:blue",
                                       name="p2")
                assert p1["plugged"] and p2["plugged"], (p1, p2)
                assert p1["mtu"] == 1450 and p1["gateway"] == "198.51.100.254"
                # The VMI and its instance-ip exist in the config, bound to the node.
                async with http.get(f"{url}/virtual-machine-interface/{p1['uuid']}") as r:
                    vmi = (await r.json())["virtual-machine-interface"]
                binds = {kv["key"]: kv["value"] for kv in
                         vmi["virtual_machine_interface_bindings"]["key_value_pair"]}
                assert binds["host_id"] == "n1" and vmi["instance_ip_back_refs"]
                await until(lambda: a1.vrouter_uuid is not None, "virtual-router registered")
                async with http.get(f"{url}/virtual-router/{a1.vrouter_uuid}") as r:
                    vr = (await r.json())["virtual-router"]
                assert vr["virtual_router_ip_address"] == "192.0.2.1"
                await until(lambda: a1.converged_routes() == 2 == a2.converged_routes(),
                            "both routes on both nodes")
                res = a1.trace(p1["uuid"], p2["ips"][0], proto_="tcp", dport=22)
                assert (res.verdict, res.port, res.node) == ("delivered", p2["uuid"], "n2")
                # Deleting the port deletes its VMI and withdraws its route everywhere.
                assert await a1.delete_port(p1["uuid"])
                await until(lambda: a2.converged_routes() == 1, "route withdrawn on n2")
                async with http.get(f"{url}/virtual-machine-interface/{p1['uuid']}") as r:
                    assert r.status == 404
        finally:
            await a1.stop()
            await a2.stop()
            await runner.cleanup()

    run(main())


# -- processes and the CLI -----------------------------------------------------------------
def _tungsten(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "tungsten", *args], capture_output=True,
                         text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture
def control_process(tmp_path: Path) -> Iterator[str]:
    pytest.importorskip("tungsten.control.node")
    port = free_port()
    log = open(tmp_path / "control.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port),
                             f"sqlite:///{tmp_path / 'config.db'}"], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "control.log").read_text()
            try:
                requests.get(url + "/", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the controller did not start"
                time.sleep(0.05)
        yield url
    finally:
        terminate(proc)
        log.close()


@pytest.fixture
def agent_process(control_process: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    sock = tmp_path / "agent.sock"
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "tungsten", "agent", "run", "--node", "n1",
                             "--underlay-ip", "192.0.2.1", "--control", control_process,
                             "--socket", str(sock), "--state-dir", str(tmp_path / "agent")],
                            stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.05)
        yield control_process, sock
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_cli_against_a_running_agent(agent_process: tuple[str, Path]) -> None:
    from tungsten.cli.agent import call

    url, sock = agent_process
    assert requests.post(url + "/virtual-networks", json=VN_BODY, timeout=10).ok
    port: dict[str, Any] = call(sock, "POST", "/ports", {"network": "blue", "name": "web"})
    assert port["plugged"] and port["ips"][0].startswith("198.51.100.")

    ports = json.loads(_tungsten("agent", "ports", "--socket", str(sock), "--json").stdout)
    assert [p["uuid"] for p in ports] == [port["uuid"]]
    table = _tungsten("agent", "ports", "--socket", str(sock)).stdout
    assert "IFNAME" in table and port["ifname"] in table

    routes = json.loads(_tungsten("agent", "routes", "--socket", str(sock), "--json",
                                  "--network", "default-domain:default-project:blue").stdout)
    assert [r["prefix"] for r in routes] == [port["ips"][0] + "/32"]
    assert "local" in _tungsten("agent", "routes", "--socket", str(sock)).stdout

    acls = json.loads(_tungsten("agent", "acls", "--socket", str(sock), "--json").stdout)
    assert acls[0]["port"] == port["uuid"]

    tr = json.loads(_tungsten("trace", "--socket", str(sock), "--port", port["uuid"],
                              "--dst", "198.51.100.200", "--proto", "tcp", "--dport", "80",
                              "--json").stdout)
    assert tr["verdict"] == "no_route"
    human = _tungsten("trace", "--socket", str(sock), "--port", port["uuid"], "--dst",
                      port["ips"][0]).stdout
    assert "delivered" in human

    assert call(sock, "DELETE", f"/ports/{port['uuid']}")["deleted"] is True
    assert call(sock, "DELETE", f"/ports/{port['uuid']}")["deleted"] is False


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    out = _tungsten("agent", "ports", "--socket", str(tmp_path / "none.sock"), check=False)
    assert out.returncode == 2 and "no agent answers" in out.stderr
    assert "Traceback" not in out.stderr
    out = _tungsten("agent", "run", "--node", "n1", "--underlay-ip", "not-an-ip",
                    "--control", "http://127.0.0.1:1", "--socket", str(tmp_path / "s"),
                    check=False)
    assert out.returncode == 2 and "not an IP address" in out.stderr
    assert not os.path.exists(tmp_path / "s")
