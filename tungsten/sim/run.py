"""``tungsten sim``: a whole control plane with N simulated agents on this machine.

Starts a controller (config API, transformer, control node) as its own process, a few host
processes with the agents (``sim`` datapath), creates K networks and N×M ports through the
config API, plugs every port into its agent as soon as it exists, and waits until every agent
holds exactly the routes it should.  Ports are spread over the networks in one of two ways:
``--networks-per-agent 1`` (default) puts all ports of an agent in one network, agents going
round-robin over the networks (a compute node hosting one tenant's workloads); a larger value
spreads each agent's ports over that many networks, so each agent must learn more routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from tungsten.sim.host import LINE_LIMIT, node_name

PROJECT = ["default-domain", "default-project"]
OVERLAY = ipaddress.ip_network("198.18.0.0/16")  # benchmarking space; underlay: 198.19/16


class SimError(RuntimeError):
    pass


@dataclass
class SimPlan:
    agents: int
    ports_per_agent: int
    networks: int
    networks_per_agent: int = 1
    procs: int = 0  # agent host processes; 0: chosen from the agent count
    policy_change: bool = False
    hold_time: float = 5.0
    timeout: float = 300.0
    # also time an SG rule and a firewall rule change until every agent holds it
    security_change: bool = False

    def network_of(self, agent: int, j: int) -> int:
        """The network of port ``j`` of agent ``agent``."""
        spread = max(1, min(self.networks_per_agent, self.networks))
        return (agent * spread + j % spread) % self.networks

    def expected_routes(self) -> dict[str, int]:
        """Routes each agent must hold: every port of every network it has a port in."""
        per_net = [0] * self.networks
        for a in range(self.agents):
            for j in range(self.ports_per_agent):
                per_net[self.network_of(a, j)] += 1
        out = {}
        for a in range(self.agents):
            nets = {self.network_of(a, j) for j in range(self.ports_per_agent)}
            out[node_name(a)] = sum(per_net[n] for n in nets)
        return out

    def subnets(self) -> list[ipaddress.IPv4Network]:
        biggest = max(
            sum(1 for a in range(self.agents) for j in range(self.ports_per_agent)
                if self.network_of(a, j) == n)
            for n in range(self.networks)
        )
        plen = min(24, 32 - math.ceil(math.log2(biggest + 5)))  # + network/bcast/gw/dns
        subnets = [ipaddress.IPv4Network(n) for n in OVERLAY.subnets(new_prefix=plen)]
        if len(subnets) < self.networks:
            raise SimError(f"{self.networks} networks of /{plen} do not fit in {OVERLAY}")
        return subnets[: self.networks]


@dataclass(eq=False)  # identity-hashed: used as a dict key
class Proc:
    proc: asyncio.subprocess.Process
    nodes: list[str] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self.lock:
            self.proc.stdin.write(orjson.dumps(cmd) + b"\n")
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        if not line:
            raise SimError(f"an agent host exited (code {self.proc.returncode})")
        reply: dict[str, Any] = orjson.loads(line)
        if "error" in reply:
            raise SimError(f"agent host: {reply['error']}")
        return reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_http(url: str, proc: asyncio.subprocess.Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise SimError(f"the controller exited with code {proc.returncode}")
            try:
                async with s.get(url + "/") as r:
                    await r.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise SimError("the controller did not answer in time")


async def run_sim(plan: SimPlan, progress: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tungsten-sim-") as tmp:
        return await _run(plan, Path(tmp), progress)


async def _run(plan: SimPlan, tmp: Path, say: Callable[[str], None]) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "controller.log", "wb")  # noqa: SIM115 - closed in finally
    ctl = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tungsten", "controller", "--listen", f"127.0.0.1:{port}",
        "--store", f"sqlite:///{tmp / 'config.db'}", "--hold-time", str(plan.hold_time),
        stdout=log, stderr=log)
    hosts: list[Proc] = []
    try:
        await _wait_http(url, ctl)
        say(f"controller up at {url}")
        result = await _drive(plan, tmp, url, ctl, hosts, say)
        return result
    finally:
        for h in hosts:
            if h.proc.returncode is None:
                with contextlib.suppress(SimError, TimeoutError, OSError, ValueError):
                    await asyncio.wait_for(h.call({"op": "stop"}), 10)
                if h.proc.returncode is None:
                    h.proc.kill()
                await h.proc.wait()
        if ctl.returncode is None:
            ctl.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(ctl.wait(), 10)
            except TimeoutError:
                ctl.kill()
                await ctl.wait()
        log.close()


async def _drive(plan: SimPlan, tmp: Path, url: str, ctl: asyncio.subprocess.Process,
                 hosts: list[Proc], say: Callable[[str], None]) -> dict[str, Any]:
    procs = plan.procs or max(1, min(plan.agents, (os.cpu_count() or 2) * 2))
    per = math.ceil(plan.agents / procs)
    # the security-change timing asks the hosts what their agents hold (sechost.py)
    host_module = "tungsten.sim.sechost" if plan.security_change else "tungsten.sim.host"
    for first in range(0, plan.agents, per):
        count = min(per, plan.agents - first)
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", host_module, "--first", str(first), "--count",
            str(count), "--control", url, "--api", url, "--state-dir", str(tmp / "agents"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT,
            stderr=open(tmp / f"host-{first}.log", "wb"))  # noqa: SIM115 - child owns it
        hosts.append(Proc(p, [node_name(i) for i in range(first, first + count)]))
    say(f"{plan.agents} agents in {len(hosts)} host processes")
    deadline = time.monotonic() + plan.timeout
    while True:
        connected = 0
        for h in hosts:
            connected += len((await h.call({"op": "ready"}))["connected"])
        if connected == plan.agents:
            break
        if time.monotonic() > deadline:
            raise SimError(f"only {connected} of {plan.agents} agents connected")
        await asyncio.sleep(0.1)
    say(f"all {plan.agents} agents connected")

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=32), json_serialize=lambda o: orjson.dumps(o).decode()
    ) as http:
        async def post(rtype: str, body: dict[str, Any]) -> dict[str, Any]:
            async with http.post(f"{url}/{rtype}s", json={rtype: body}) as r:
                text = await r.text()
                if r.status != 200:
                    raise SimError(f"POST /{rtype}s: {r.status} {text}")
                out: dict[str, Any] = orjson.loads(text)[rtype]
                return out

        vns: list[str] = []
        for n, subnet in enumerate(plan.subnets()):
            vn = await post("virtual-network", {
                "fq_name": [*PROJECT, f"sim-net-{n}"], "parent_type": "project",
                "network_ipam_refs": [{"to": [*PROJECT, "default-network-ipam"], "attr": {
                    "ipam_subnets": [{"subnet": {"ip_prefix": str(subnet.network_address),
                                                 "ip_prefix_len": subnet.prefixlen}}]}}]})
            vns.append(vn["uuid"])
        say(f"{len(vns)} networks created")

        host_of = {node: h for h in hosts for node in h.nodes}
        pending: dict[Proc, dict[str, list[str]]] = {}
        first_port: dict[str, str] = {}  # node -> one of its ports (security_change)
        total = plan.agents * plan.ports_per_agent
        done = 0
        queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        for a in range(plan.agents):
            for j in range(plan.ports_per_agent):
                queue.put_nowait((a, j))

        async def create_worker() -> None:
            nonlocal done
            while not queue.empty():
                a, j = queue.get_nowait()
                node = node_name(a)
                vn = vns[plan.network_of(a, j)]
                vmi = await post("virtual-machine-interface", {
                    "fq_name": [*PROJECT, f"{node}-p{j}"], "parent_type": "project",
                    "virtual_network_refs": [{"uuid": vn}]})
                await post("instance-ip", {
                    "fq_name": [f"{node}-p{j}-ip"], "virtual_network_refs": [{"uuid": vn}],
                    "virtual_machine_interface_refs": [{"uuid": vmi["uuid"]}]})
                pending.setdefault(host_of[node], {}).setdefault(node, []).append(vmi["uuid"])
                first_port.setdefault(node, vmi["uuid"])
                done += 1

        async def plugger(stop: asyncio.Event) -> None:
            while True:
                batch = dict(pending)
                pending.clear()
                for h, ports in batch.items():
                    await h.call({"op": "plug", "ports": ports})
                if stop.is_set() and not pending:
                    return
                await asyncio.sleep(0.05)

        async def reporter(stop: asyncio.Event) -> None:
            while not stop.is_set():
                say(f"created {done}/{total} ports")
                await asyncio.sleep(1.0)

        created = asyncio.Event()
        t0 = time.monotonic()
        plug_task = asyncio.create_task(plugger(created))
        report_task = asyncio.create_task(reporter(created))
        await asyncio.gather(*(create_worker() for _ in range(32)))
        t_created = time.monotonic()
        created.set()
        await plug_task
        report_task.cancel()
        say(f"created {total} ports in {t_created - t0:.2f} s; waiting for convergence")

        expected = plan.expected_routes()
        routes_expected = sum(expected.values())
        installed = 0
        while True:
            statuses = [await h.call({"op": "status"}) for h in hosts]
            routes = {n: c for s in statuses for n, c in s["routes"].items()}
            installed = sum(min(routes.get(n, 0), e) for n, e in expected.items())
            if all(routes.get(n) == e for n, e in expected.items()):
                break
            if time.monotonic() > deadline:
                raise SimError(f"not converged: {installed}/{routes_expected} routes installed")
            await asyncio.sleep(0.05)
        t_conv = time.monotonic()
        say(f"converged: {routes_expected} routes in {t_conv - t_created:.2f} s after the "
            "last create")

        result: dict[str, Any] = {
            "agents": plan.agents,
            "ports": total,
            "networks": plan.networks,
            "networks_per_agent": plan.networks_per_agent,
            "agent_processes": len(hosts),
            "routes_expected": routes_expected,
            "routes_installed": sum(routes.values()),
            "create_s": round(t_created - t0, 3),
            "converge_s": round(t_conv - t_created, 3),
            "routes_per_s": round(routes_expected / max(t_conv - t0, 1e-9), 1),
            "controller_rss_mb": round(psutil.Process(ctl.pid).memory_info().rss / 2**20, 1),
        }
        agent_rss = []
        for h, s in zip(hosts, statuses, strict=True):
            agent_rss.extend([round(s["rss_mb"] / len(h.nodes), 1)] * len(h.nodes))
        result["agent_rss_mb"] = agent_rss
        result["agent_host_rss_mb"] = [round(s["rss_mb"], 1) for s in statuses]
        if plan.policy_change:
            result["policy_change_s"] = await _policy_change(hosts, url, vns, post, deadline)
            say(f"policy change reached every agent in {result['policy_change_s']:.3f} s")
        if plan.security_change:
            result.update(await _security_change(hosts, url, first_port, post, deadline, say))
        return result


def _port_rule(port: int) -> dict[str, Any]:
    return {"direction": "<>", "protocol": "tcp", "action_list": {"simple_action": "pass"},
            "src_addresses": [{"virtual_network": "any"}],
            "src_ports": [{"start_port": -1, "end_port": -1}],
            "dst_addresses": [{"virtual_network": "any"}],
            "dst_ports": [{"start_port": port, "end_port": port}]}


async def _wait_rule(hosts: list[Proc], rule_uuid: str, deadline: float) -> None:
    while True:
        acl: dict[str, bool] = {}
        for h in hosts:
            acl.update((await h.call({"op": "status", "rule": rule_uuid}))["acl"])
        if all(acl.values()):
            return
        if time.monotonic() > deadline:
            missing = sum(1 for v in acl.values() if not v)
            raise SimError(f"policy change: {missing} agents never got rule {rule_uuid}")
        await asyncio.sleep(0.01)


async def _policy_change(hosts: list[Proc], base: str, vns: list[str],
                         post: Callable[[str, dict[str, Any]], Any],
                         deadline: float) -> float:
    """Time one policy update until every agent holds the new rule in its networks' ACLs.

    Setup (not timed): a policy with one rule, attached to every network, and every agent
    holding that rule.  Timed: one PUT adding a second rule to the policy, through the
    transformer (new ACLs) and the control node (deltas) into every agent's datapath state."""
    policy = await post("network-policy", {
        "fq_name": [*PROJECT, "sim-policy"], "parent_type": "project",
        "network_policy_entries": {"policy_rule": [_port_rule(8080)]}})
    url = f"{base}/network-policy/{policy['uuid']}"
    async with aiohttp.ClientSession() as http:
        async def rules() -> list[dict[str, Any]]:
            async with http.get(url) as r:
                body = orjson.loads(await r.read())["network-policy"]
            out: list[dict[str, Any]] = body["network_policy_entries"]["policy_rule"]
            return out

        first = await rules()
        for vn in vns:
            async with http.post(f"{base}/ref-update", json={
                "type": "virtual-network", "uuid": vn, "ref-type": "network-policy",
                "ref-uuid": policy["uuid"], "operation": "ADD",
                "attr": {"sequence": {"major": 0, "minor": 0}}}) as r:
                if r.status != 200:
                    raise SimError(f"attaching the policy: {r.status} {await r.text()}")
        await _wait_rule(hosts, first[0]["rule_uuid"], deadline)
        t0 = time.monotonic()
        async with http.put(url, json={"network-policy": {"network_policy_entries": {
                "policy_rule": [*first, _port_rule(8443)]}}}) as r:
            if r.status != 200:
                raise SimError(f"updating the policy: {r.status} {await r.text()}")
        added = (await rules())[-1]["rule_uuid"]
        await _wait_rule(hosts, added, deadline)
        return round(time.monotonic() - t0, 3)


async def _wait_security(hosts: list[Proc], rule: str, contains: str | None, agents: int,
                         deadline: float) -> None:
    """Until ``agents`` agents hold security rule ``rule`` (``sechost.py``)."""
    while True:
        held: dict[str, bool] = {}
        for h in hosts:
            held.update((await h.call({"op": "security", "rule": rule,
                                       "contains": contains}))["held"])
        if len(held) >= agents and all(held.values()):
            return
        if time.monotonic() > deadline:
            missing = agents - sum(held.values())
            raise SimError(f"security change: {missing} agents never got rule {rule}")
        await asyncio.sleep(0.01)


async def _security_change(hosts: list[Proc], base: str, first_port: dict[str, str],
                           post: Callable[[str, dict[str, Any]], Any], deadline: float,
                           say: Callable[[str], None]) -> dict[str, float]:
    """Time an SG rule and a firewall rule change until every agent holds it.

    Setup (not timed): a security group with one rule on one port of every agent; a firewall
    rule in a policy of the project's default application-policy-set (it applies to every
    port of the project); every agent holding both.  Timed: one PUT adding a rule to the
    group (``sg_rule_change_s``), one PUT changing the firewall rule's port
    (``fw_rule_change_s``), each until every agent's datapath state holds it."""
    import uuid as uuidlib

    def sg_rule(port: int) -> dict[str, Any]:
        return {**_port_rule(port), "direction": ">", "rule_uuid": str(uuidlib.uuid4()),
                "ethertype": "IPv4", "src_addresses": [{"security_group": "local"}]}

    first = sg_rule(8080)
    sg = await post("security-group", {
        "fq_name": [*PROJECT, "sim-sg"], "parent_type": "project",
        "security_group_entries": {"policy_rule": [first]}})
    fw_service = {"protocol": "tcp", "src_ports": {"start_port": 0, "end_port": 65535},
                  "dst_ports": {"start_port": 8080, "end_port": 8080}}
    fw = await post("firewall-rule", {
        "fq_name": [*PROJECT, "sim-fw"], "parent_type": "project", "direction": "<>",
        "action_list": {"simple_action": "pass"}, "service": fw_service,
        "endpoint_1": {"any": True}, "endpoint_2": {"any": True}})
    pol = await post("firewall-policy", {
        "fq_name": [*PROJECT, "sim-fw-pol"], "parent_type": "project",
        "firewall_rule_refs": [{"uuid": fw["uuid"], "attr": {"sequence": "1"}}]})
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as http:
        async def call(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with http.request(method, f"{base}{path}", json=body) as r:
                text = await r.text()
                if r.status != 200:
                    raise SimError(f"{method} {path}: {r.status} {text}")
                reply: dict[str, Any] = orjson.loads(text)
                return reply

        aps = (await call("POST", "/fqname-to-id", {
            "type": "application-policy-set",
            "fq_name": [*PROJECT, "default-application-policy-set"]}))["uuid"]
        await call("PUT", f"/application-policy-set/{aps}", {"application-policy-set": {
            "firewall_policy_refs": [{"uuid": pol["uuid"], "attr": {"sequence": "1"}}]}})
        sem = asyncio.Semaphore(16)

        async def join(vmi: str) -> None:
            async with sem:
                await call("PUT", f"/virtual-machine-interface/{vmi}", {
                    "virtual-machine-interface": {"security_group_refs": [
                        {"uuid": sg["uuid"]}]}})

        await asyncio.gather(*(join(v) for v in first_port.values()))
        agents = len(first_port)
        await _wait_security(hosts, first["rule_uuid"], None, agents, deadline)
        await _wait_security(hosts, fw["uuid"], None, agents, deadline)
        say(f"security setup held by every agent ({agents})")

        added = sg_rule(8443)
        t0 = time.monotonic()
        await call("PUT", f"/security-group/{sg['uuid']}", {"security-group": {
            "security_group_entries": {"policy_rule": [first, added]}}})
        await _wait_security(hosts, added["rule_uuid"], None, agents, deadline)
        out["sg_rule_change_s"] = round(time.monotonic() - t0, 3)
        say(f"SG rule change reached every agent in {out['sg_rule_change_s']:.3f} s")

        t0 = time.monotonic()
        await call("PUT", f"/firewall-rule/{fw['uuid']}", {"firewall-rule": {
            "service": {**fw_service, "dst_ports": {"start_port": 8443, "end_port": 8443}}}})
        await _wait_security(hosts, fw["uuid"], "8443", agents, deadline)
        out["fw_rule_change_s"] = round(time.monotonic() - t0, 3)
        say(f"firewall rule change reached every agent in {out['fw_rule_change_s']:.3f} s")
    return out
