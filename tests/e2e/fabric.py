"""Shared helpers of the trace-based fabric suite (tests/e2e/test_fabric_*.py).

A real ``tungsten controller`` process (from ``controller_factory``) and several in-process
``Agent``s whose ``SimDatapath``s share one ``SimFabric``; config goes in over HTTP, the
verdicts come out of ``agent.trace``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from tungsten.agent.agent import Agent
from tungsten.datapath.base import TraceResult
from tungsten.datapath.sim import SimDatapath, SimFabric

WAIT = 30.0  # generous upper bound for a condition to become true (never asserted on)
PROJECT = ["default-domain", "default-project"]
IPAM = [*PROJECT, "default-network-ipam"]
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, None], timeout: float = 240.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


async def eventually(fn: Callable[[], Awaitable[T | None]], what: str,
                     timeout: float = WAIT) -> T:
    """Poll an async function until it returns something (not None, not empty)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await fn()
        if got:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


class Api:
    """The config API over raw HTTP (TF's VNC REST shapes)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with self.http.request(method, self.url + path, json=body) as r:
            text = await r.text()
            assert r.status == 200, f"{method} {path}: {r.status} {text}"
            out: dict[str, Any] = await r.json(content_type=None) if text else {}
            return out

    async def create(self, rtype: str, fq_name: list[str], parent_type: str | None = None,
                     **fields: Any) -> str:
        body: dict[str, Any] = {"fq_name": fq_name, **fields}
        if parent_type:
            body["parent_type"] = parent_type
        out = await self._call("POST", f"/{rtype}s", {rtype: body})
        return str(out[rtype]["uuid"])

    async def read(self, rtype: str, uuid: str) -> dict[str, Any]:
        out: dict[str, Any] = (await self._call("GET", f"/{rtype}/{uuid}"))[rtype]
        return out

    async def fq_to_id(self, rtype: str, fq_name: list[str]) -> str:
        out = await self._call("POST", "/fqname-to-id", {"type": rtype, "fq_name": fq_name})
        return str(out["uuid"])

    async def update(self, rtype: str, uuid: str, **fields: Any) -> None:
        await self._call("PUT", f"/{rtype}/{uuid}", {rtype: fields})

    async def delete(self, rtype: str, uuid: str) -> None:
        await self._call("DELETE", f"/{rtype}/{uuid}")

    async def objects(self, rtype: str) -> list[dict[str, Any]]:
        """Every object of a type, with its fields (``?detail=true``)."""
        out = await self._call("GET", f"/{rtype}s?detail=true")
        return [x.get(rtype, x) for x in out[f"{rtype}s"]]

    async def project(self, name: str) -> list[str]:
        fq = ["default-domain", name]
        await self.create("project", fq, "domain")
        return fq

    async def network(self, name: str, prefix: str, project: list[str] | None = None,
                      policies: list[str] | None = None) -> str:
        net = ipaddress.ip_network(prefix)
        return await self.create(
            "virtual-network", [*(project or PROJECT), name], "project",
            network_ipam_refs=[{"to": IPAM, "attr": {"ipam_subnets": [{"subnet": {
                "ip_prefix": str(net.network_address), "ip_prefix_len": net.prefixlen}}]}}],
            network_policy_refs=policy_refs(policies or []))


async def transformed(api: Api, vn_fq: list[str]) -> list[str]:
    """Wait until the transformer gave the network's primary instance its route targets."""
    async def targets() -> list[str]:
        ri = await api.read("routing-instance", await api.fq_to_id(
            "routing-instance", [*vn_fq, vn_fq[-1]]))
        return [":".join(r["to"]) for r in ri.get("route_target_refs") or []]

    return await eventually(targets, f"route targets of {':'.join(vn_fq)}")


def lease_holder(store_url: str) -> str | None:
    """Who holds the transformer lease on a store (``host:pid:port``), if anyone."""
    from tungsten.store import open_store
    from tungsten.transformer.lease import read_lease

    store = open_store(store_url)
    try:
        lease = read_lease(store)
    finally:
        store.close()
    return lease.holder if lease is not None else None


def holds_lease(ctl: Any) -> bool:
    """Whether this controller process (conftest's ``Controller``) holds the lease."""
    holder = lease_holder(ctl.store_url)
    return ctl.proc is not None and holder is not None and \
        holder.endswith(f":{ctl.proc.pid}:{ctl.port}")


def policy_refs(policies: list[str]) -> list[dict[str, Any]]:
    return [{"uuid": p, "attr": {"sequence": {"major": i, "minor": 0}}}
            for i, p in enumerate(policies)]


class Fabric:
    """Agents on one simulated underlay; ``stop()`` stops every agent it started."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.sim = SimFabric()
        self.agents: list[Agent] = []

    async def agent(self, node: str, underlay_ip: str, controls: list[str],
                    state_dir: Path | None = None, api_url: str | None = None) -> Agent:
        a = Agent(node, underlay_ip, controls, SimDatapath(self.sim), api_url=api_url,
                  state_dir=state_dir, http=self.http, settle=0.0)
        self.agents.append(a)
        await a.start()
        return a

    async def stop(self, agent: Agent) -> None:
        """Stop one agent (its datapath leaves the fabric: that node is gone)."""
        await agent.stop()
        self.sim.detach(agent.underlay_ip)

    async def close(self) -> None:
        for a in self.agents:
            await a.stop()


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[tuple[Api, Fabric]]:
    """The config API at ``url`` and a ``Fabric`` on one HTTP session; every agent the
    fabric started is stopped when the block ends, failures included."""
    async with aiohttp.ClientSession() as http:
        fab = Fabric(http)
        try:
            yield Api(http, url), fab
        finally:
            await fab.close()


async def plug(agent: Agent, network: str, name: str,
               project: list[str] | None = None) -> dict[str, Any]:
    """A new port on ``agent`` (VMI + instance-ip created by the agent), plugged."""
    proj = ":".join(project) if project else None
    port = await agent.add_port(network=network, name=name, project=proj, wait=WAIT)
    assert port["plugged"], port
    return port


def ip(port: dict[str, Any]) -> str:
    return str(port["ips"][0])


def prefixes(agent: Agent) -> set[str]:
    return {r["prefix"] for r in agent.routes()}


def has_route(agent: Agent, address: str) -> bool:
    return f"{address}/32" in prefixes(agent)


def routes_removed(agent: Agent) -> int:
    """How many routes the agent's sim datapath ever had removed (flaps show here)."""
    dp = agent.datapath
    assert isinstance(dp, SimDatapath)
    return dp.routes_removed


def route_table(agent: Agent) -> list[tuple[str, str, tuple[tuple[str, ...], ...]]]:
    """(vrf, prefix, next hops) of every installed route, sorted: comparable across time."""
    return sorted((r["vrf"], r["prefix"],
                   tuple(tuple(sorted(f"{k}={v}" for k, v in nh.items()))
                         for nh in r["nexthops"]))
                  for r in agent.routes())


def assert_no_duplicates(agent: Agent) -> None:
    """Each (VRF, prefix) once, and no next hop twice for one prefix."""
    routes = agent.routes()
    count = Counter((r["vrf"], r["prefix"]) for r in routes)
    assert all(n == 1 for n in count.values()), count
    for r in routes:
        hops = [tuple(sorted(nh.items())) for nh in r["nexthops"]]
        assert len(hops) == len(set(hops)), r


def delivered(res: TraceResult, port: dict[str, Any]) -> bool:
    return res.verdict == "delivered" and res.port == port["uuid"]


def check_delivered(agent: Agent, src: dict[str, Any], dst: dict[str, Any],
                    proto: str = "icmp", dport: int = 0) -> None:
    res = agent.trace(src["uuid"], ip(dst), proto_=proto, dport=dport)
    assert delivered(res, dst), res
