"""A process hosting many simulated agents (``sim`` datapath), driven over stdin/stdout.

``tungsten sim`` starts a few of these so that hundreds of agents fit on one machine: every
agent is a full ``Agent`` object with its own control-node sessions, port registry and
datapath; only the Python interpreter is shared.  Commands are JSON lines on stdin, each
answered by one JSON line on stdout:

    {"op": "ready"}                                   -> {"connected": [node, ...]}
    {"op": "plug", "ports": {node: [vmi uuid, ...]}}  -> {"ok": true}
    {"op": "status", "rule": RULE_UUID | null}        -> {"routes": {node: n}, "rss_mb": x,
                                                          "acl": {node: bool}}
    {"op": "stop"}                                    -> {"ok": true}, then the process exits
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from tungsten.agent.agent import Agent
from tungsten.datapath.sim import SimDatapath, SimFabric

LINE_LIMIT = 64 * 2**20


def node_name(i: int) -> str:
    return f"sim-node-{i:04d}"


def underlay_ip(i: int) -> str:
    """Underlay addresses of simulated nodes: 198.19.0.0/16 (benchmarking space)."""
    return f"198.19.{(i + 1) // 250}.{(i + 1) % 250 + 1}"


def has_acl_rule(agent: Agent, rule: str) -> bool:
    """Whether every network of the agent's ports carries ACL rule ``rule``."""
    cur = agent.datapath.current()
    if cur is None or not cur.vrfs:
        return False
    return all(any(r.get("rule_uuid") == rule for r in vrf.acl) for vrf in cur.vrfs.values())


class Host:
    def __init__(self, first: int, count: int, controls: list[str], api: str,
                 state_dir: Path) -> None:
        self.fabric = SimFabric()
        self.first, self.count = first, count
        self.controls, self.api, self.state_dir = controls, api, state_dir
        self.agents: dict[str, Agent] = {}

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "ready":
            return {"connected": [n for n, a in self.agents.items() if not a.headless]}
        if op == "plug":
            # register without waiting for the plug: convergence is what the run measures
            await asyncio.gather(*(self.agents[node].add_port(vmi=v, wait=0)
                                   for node, vmis in cmd["ports"].items() for v in vmis))
            return {"ok": True}
        if op == "status":
            rule = cmd.get("rule")
            out: dict[str, Any] = {
                "routes": {n: a.converged_routes() for n, a in self.agents.items()},
                "rss_mb": psutil.Process().memory_info().rss / 2**20,
            }
            if rule:
                out["acl"] = {n: has_acl_rule(a, rule) for n, a in self.agents.items()}
            return out
        return {"error": f"unknown op {op!r}"}

    async def serve(self) -> None:
        # One HTTP session for all agents of this process (one pool, not hundreds).
        # limit=0: every agent holds a WebSocket from this pool, plus its API calls
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        for i in range(self.first, self.first + self.count):
            node = node_name(i)
            self.agents[node] = Agent(node, underlay_ip(i), self.controls,
                                      SimDatapath(self.fabric), api_url=self.api,
                                      state_dir=self.state_dir / node, http=http)
        try:
            await self._serve()
        finally:
            await http.close()

    async def _serve(self) -> None:
        await asyncio.gather(*(a.start() for a in self.agents.values()))
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_LIMIT)  # a plug command carries many uuids
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            while line := await reader.readline():
                cmd = orjson.loads(line)
                if cmd.get("op") == "stop":
                    break
                try:
                    reply = await self.handle(cmd)
                except Exception as e:  # reported to the orchestrator, which fails cleanly
                    reply = {"error": f"{type(e).__name__}: {e}"}
                sys.stdout.write(orjson.dumps(reply).decode() + "\n")
                sys.stdout.flush()
        finally:
            await asyncio.gather(*(a.stop() for a in self.agents.values()),
                                 return_exceptions=True)
        sys.stdout.write('{"ok": true}\n')
        sys.stdout.flush()


def main(host_class: type[Host] = Host, description: str | None = __doc__) -> None:
    """Serve a host of ``host_class`` (``sechost.py`` adds a command to ``Host``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--control", action="append", required=True)
    p.add_argument("--api", required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    args = p.parse_args()
    host = host_class(args.first, args.count, args.control, args.api, args.state_dir)
    asyncio.run(host.serve())


if __name__ == "__main__":
    main()
