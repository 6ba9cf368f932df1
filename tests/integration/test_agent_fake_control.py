"""The agent against a fake control node (an aiohttp WebSocket server speaking protocol.py)
and an in-process config API: port add/delete, origination after plug, headless mode,
resume, revision gaps, restart adoption."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.waits import until
from tungsten.agent.agent import Agent
from tungsten.agent.localapi import serve_unix
from tungsten.control import protocol as proto
from tungsten.control.protocol import Route, View, route_key
from tungsten.datapath.base import Packet
from tungsten.datapath.sim import SimDatapath, SimFabric

N1, N2 = "192.0.2.1", "192.0.2.2"
VN = "11111111-2222-3333-4444-555555555555"
VN_NAME = "default-domain:default-project:blue"
RI = VN_NAME + ":blue"
P1, P2 = "aaaaaaaa-0000-0000-0000-000000000001", "aaaaaaaa-0000-0000-0000-000000000002"


def run(coro: Coroutine[Any, Any, None], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def network() -> dict[str, Any]:
    return {"uuid": VN, "name": VN_NAME, "vni": 7, "ri": RI, "acl": [],
            "subnets": [{"prefix": "198.51.100.0/24", "gateway": "198.51.100.254",
                         "dns": None, "subnet_uuid": "s"}]}


def port_cfg(uuid: str, ip: str) -> dict[str, Any]:
    return {"uuid": uuid, "name": f"default-domain:default-project:{uuid[-1]}", "network": VN,
            "mac": "02:00:00:00:00:0" + uuid[-1],
            "ips": [{"address": ip, "prefix_len": 24, "family": "v4"}],
            "sgs": [], "tags": [], "enabled": True}


class FakeControl:
    """Serves the agent stream; records what agents send; the test drives what they get.

    Like the real control node it reflects routes: a route an agent announces goes into every
    connected agent's view (one shared RIB, no route targets)."""

    def __init__(self, config: View | None = None, resume: bool = True) -> None:
        self.config: View = config or {"ports": {}, "networks": {}, "security_groups": {}}
        self.rib: dict[str, Route] = {}
        self.resume = resume
        self.received: list[tuple[str, dict[str, Any]]] = []  # (node, msg)
        self.streams: dict[str, tuple[web.WebSocketResponse, list[int]]] = {}  # sid -> (ws, rev)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._n = 0
        self._node: dict[str, str] = {}  # session id -> node
        self._open: set[web.WebSocketResponse] = set()  # every open stream, mapped or not
        self.issued: list[str] = []  # session ids handed out, in order (unique per instance)
        self._tag = secrets.token_hex(3)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def msgs(self, kind: str, node: str | None = None) -> list[dict[str, Any]]:
        return [m for n, m in self.received if m["type"] == kind and node in (None, n)]

    def view(self) -> View:
        return {**self.config, "routes": dict(self.rib)}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(proto.STREAM_PATH, self._stream)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening first (agents would reconnect at once), then drop the streams."""
        if self._runner is None:
            return
        for site in list(self._runner.sites):
            await site.stop()
        await self.drop_streams()
        self.streams.clear()
        await self._runner.cleanup()
        self._runner = None

    async def drop_streams(self) -> None:
        for ws in list(self._open):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.close(), 5)

    async def delta(self, upsert: View | None = None, remove: dict[str, list[str]] | None = None,
                    skip: int = 0) -> None:
        for coll, entries in (upsert or {}).items():
            (self.rib if coll == "routes" else self.config.setdefault(coll, {})).update(entries)
        for coll, ids in (remove or {}).items():
            target = self.rib if coll == "routes" else self.config.get(coll, {})
            for i in ids:
                target.pop(i, None)
        for ws, rev in list(self.streams.values()):
            rev[0] += 1 + skip
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(proto.encode({"type": proto.DELTA, "revision": rev[0],
                                                "upsert": upsert or {}, "remove": remove or {}}))

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._open.add(ws)
        try:
            return await self._serve(ws)
        finally:
            self._open.discard(ws)

    async def _serve(self, ws: web.WebSocketResponse) -> web.WebSocketResponse:
        sid = None
        async for frame in ws:
            msg = proto.decode(frame.data)
            node = msg.get("node", "?") if sid is None else self._node.get(sid, "?")
            self.received.append((node, msg))
            if msg["type"] == proto.HELLO:
                sid = msg.get("session")
                if self.resume and self._node.get(sid or "") == msg["node"] \
                        and msg.get("revision") is not None:
                    rev = [int(msg["revision"])]
                    await ws.send_str(proto.encode({"type": proto.RESUMED, "session": sid,
                                                    "revision": rev[0]}))
                else:
                    self._n += 1
                    sid, rev = f"{self._tag}-s{self._n}", [1]
                    self.issued.append(sid)
                    await ws.send_str(proto.encode({"type": proto.SNAPSHOT, "session": sid,
                                                    "revision": 1, "view": self.view()}))
                self._node[sid] = msg["node"]
                self.streams[sid] = (ws, rev)
            elif msg["type"] == proto.ROUTES:
                add = {route_key(r): r for r in msg["add"]}
                gone = msg["del"]
                self.rib.update(add)
                for k in gone:
                    self.rib.pop(k, None)
                asyncio.get_running_loop().call_soon(
                    lambda a=add, g=gone: asyncio.ensure_future(self._reflect(a, g)))
        if sid is not None and self.streams.get(sid, (None,))[0] is ws:
            del self.streams[sid]
        return ws

    async def _reflect(self, add: dict[str, Route], gone: list[str]) -> None:
        await self.delta({"routes": add} if add else None,
                         {"routes": gone} if gone else None)


@contextlib.asynccontextmanager
async def fake_control(config: View | None = None, resume: bool = True
                       ) -> AsyncIterator[FakeControl]:
    fc = FakeControl(config, resume)
    await fc.start()
    try:
        yield fc
    finally:
        await fc.stop()


@contextlib.asynccontextmanager
async def agent(node: str, ip: str, controls: list[str], dp: SimDatapath,
                state_dir: Path | None = None) -> AsyncIterator[Agent]:
    a = Agent(node, ip, controls, dp, state_dir=state_dir, register=False, settle=0.0)
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


def two_node_config() -> View:
    return {"ports": {P1: port_cfg(P1, "198.51.100.1"), P2: port_cfg(P2, "198.51.100.2")},
            "networks": {VN: network()}, "security_groups": {}}


async def two_agents_converged(fc: FakeControl, fabric: SimFabric, stack: contextlib.AsyncExitStack
                               ) -> tuple[Agent, Agent]:
    a1 = await stack.enter_async_context(agent("n1", N1, [fc.url], SimDatapath(fabric)))
    a2 = await stack.enter_async_context(agent("n2", N2, [fc.url], SimDatapath(fabric)))
    await a1.add_port(P1, wait=10)
    await a2.add_port(P2, wait=10)
    await until(lambda: a1.converged_routes() == 2 and a2.converged_routes() == 2,
                "both nodes have both routes")
    return a1, a2


# ------------------------------------------------------------------------------------------
def test_route_originated_only_after_plug_and_withdrawn_on_delete() -> None:
    async def main() -> None:
        async with fake_control() as fc, agent("n1", N1, [fc.url], SimDatapath()) as a:
            await until(lambda: bool(fc.msgs(proto.HELLO)), "hello")
            info = await a.add_port(P1, wait=0)
            assert info["plugged"] is False
            await until(lambda: any(P1 in m["ports"] for m in fc.msgs(proto.SUBSCRIBE)),
                        "subscribe")
            await asyncio.sleep(0.1)
            assert not any(m["add"] for m in fc.msgs(proto.ROUTES)), "routed before config"
            # Config arrives: the port is plugged, then (only then) its route goes up.
            await fc.delta({"ports": {P1: port_cfg(P1, "198.51.100.1")},
                            "networks": {VN: network()}})
            await until(lambda: any(m["add"] for m in fc.msgs(proto.ROUTES)), "route")
            (r,) = [r for m in fc.msgs(proto.ROUTES) for r in m["add"]]
            assert (r["ri"], r["prefix"], r["nexthop"], r["vni"], r["port"], r["node"]) == (
                RI, "198.51.100.1/32", N1, 7, P1, "n1")
            assert a.datapath.current() is not None and P1 in a.datapath.current().ports
            info = a.port_info(P1)
            assert (info["plugged"], info["mtu"], info["gateway"]) == (True, 1450,
                                                                        "198.51.100.254")
            assert fc.msgs(proto.ACK), "the agent acks what it applied"
            # Delete: route withdrawn, unsubscribed; deleting again is fine.
            assert await a.delete_port(P1) is True
            await until(lambda: any(route_key(r) in m["del"] for m in fc.msgs(proto.ROUTES)),
                        "withdraw")
            await until(lambda: any(P1 in m["ports"] for m in fc.msgs(proto.UNSUBSCRIBE)),
                        "unsubscribe")
            assert await a.delete_port(P1) is False
            await until(lambda: a.converged_routes() == 0, "datapath emptied of the port")

    run(main())


def test_headless_keeps_forwarding_and_resync_does_not_flap() -> None:
    async def main() -> None:
        fabric = SimFabric()
        async with contextlib.AsyncExitStack() as stack:
            fc = FakeControl(two_node_config())
            await fc.start()
            stack.push_async_callback(fc.stop)
            a1, a2 = await two_agents_converged(fc, fabric, stack)
            dp1 = a1.datapath
            assert isinstance(dp1, SimDatapath)
            pkt = Packet("198.51.100.1", "198.51.100.2", "tcp", 1000, 80)
            assert dp1.trace(P1, pkt).verdict == "delivered"
            removed = dp1.routes_removed
            port = fc.port
            # Every control node gone: headless, nothing cleared, traffic still flows.
            await fc.stop()
            await until(lambda: a1.headless and a2.headless, "headless")
            await asyncio.sleep(0.3)  # a few reconnect attempts
            res = dp1.trace(P1, pkt)
            assert (res.verdict, res.port, res.node) == ("delivered", P2, "n2")
            assert a1.converged_routes() == 2 and dp1.routes_removed == removed
            # A new control node (no session memory, empty RIB) comes back on the same port.
            fc2 = FakeControl(two_node_config())
            fc2.port = port
            fc2.rib = dict(fc.rib)  # other agents' routes, as a real node would relearn
            await fc2.start()
            stack.push_async_callback(fc2.stop)
            await until(lambda: not a1.headless and not a2.headless, "sessions back")
            await until(lambda: len(fc2.msgs(proto.ROUTES)) >= 2, "routes re-announced")
            await asyncio.sleep(0.2)
            assert dp1.routes_removed == removed, "a route flapped during resync"
            assert dp1.trace(P1, pkt).verdict == "delivered"
            assert all(m["session"] is not None for m in fc2.msgs(proto.HELLO))

    run(main())


def test_reconnect_resumes_with_session_and_revision() -> None:
    async def main() -> None:
        async with fake_control(two_node_config()) as fc, \
                agent("n1", N1, [fc.url], SimDatapath()) as a:
            await a.add_port(P1, wait=10)
            await until(lambda: a.converged_routes() == 1, "own route")
            applies = a.datapath.applies  # type: ignore[attr-defined]
            rev = a.status()["sessions"][0]["revision"]
            await fc.drop_streams()
            await until(lambda: len(fc.msgs(proto.HELLO)) == 2, "second hello")
            hello = fc.msgs(proto.HELLO)[1]
            assert hello["session"] == fc.issued[0] and hello["revision"] == rev
            assert hello["ports"] == [P1]
            await until(lambda: not a.headless, "resumed")
            # Deltas continue on the resumed session.
            r = Route(ri=RI, prefix="198.51.100.9/32", mac="02:00:00:00:00:09", nexthop=N2,
                      vni=7, encap="vxlan", port="p9", node="n2", sgs=[], tags=[])
            await fc.delta({"routes": {route_key(r): r}})
            await until(lambda: a.converged_routes() == 2, "route after resume")
            assert a.datapath.applies == applies + 1  # type: ignore[attr-defined]
            assert a.datapath.routes_removed == 0  # type: ignore[attr-defined]

    run(main())


def test_revision_gap_asks_for_a_snapshot() -> None:
    async def main() -> None:
        async with fake_control(two_node_config()) as fc, \
                agent("n1", N1, [fc.url], SimDatapath()) as a:
            await a.add_port(P1, wait=10)
            await fc.delta({"networks": {VN: network()}}, skip=1)  # revision 3 after 1
            await until(lambda: len(fc.msgs(proto.HELLO)) == 2, "reconnect")
            assert fc.msgs(proto.HELLO)[1]["session"] is None
            await until(lambda: not a.headless, "new snapshot")
            assert a.port_info(P1)["plugged"]

    run(main())


def test_restart_readopts_ports_without_flushing() -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp)
            dp = SimDatapath()
            async with fake_control(two_node_config()) as fc:
                async with agent("n1", N1, [fc.url], dp, state) as a:
                    await a.add_port(P1, wait=10)
                    await until(lambda: bool(fc.rib), "route announced")
                assert (state / "ports.json").exists()
                before = dp.current()
                await fc.stop()  # restart while the control node is away
                async with agent("n1", N1, [fc.url], dp, state) as a:
                    await asyncio.sleep(0.2)
                    assert dp.current() is before, "the restart touched the datapath"
                    assert [p["uuid"] for p in a.ports()] == [P1]
                    assert a.port_info(P1)["plugged"]
                    await fc.start()
                    await until(lambda: any(m["ports"] == [P1] for m in fc.msgs(proto.HELLO)
                                            [1:]), "hello with the adopted port")
                    await until(lambda: len(fc.msgs(proto.ROUTES)) >= 2, "route re-announced")
                    assert dp.routes_removed == 0

    run(main())


def test_two_control_nodes_union_and_failover() -> None:
    async def main() -> None:
        async with fake_control(two_node_config()) as c1, \
                fake_control(two_node_config()) as c2, \
                agent("n1", N1, [c1.url, c2.url], SimDatapath()) as a:
            await a.add_port(P1, wait=10)
            await until(lambda: len(c1.msgs(proto.ROUTES)) >= 1 and
                        len(c2.msgs(proto.ROUTES)) >= 1, "announced to both")
            ra = Route(ri=RI, prefix="198.51.100.20/32", mac="02:00:00:00:00:20",
                       nexthop=N2, vni=7, encap="vxlan", port="pa", node="n2", sgs=[],
                       tags=[])
            rb = Route(**{**ra, "prefix": "198.51.100.21/32", "port": "pb"})  # type: ignore[typeddict-item]
            await c1.delta({"routes": {route_key(ra): ra}})
            await c2.delta({"routes": {route_key(rb): rb}})
            await until(lambda: a.converged_routes() == 3, "union of both nodes' routes")
            primary = next(s for s in a.status()["sessions"] if s["primary"])
            dead = c1 if primary["url"] == c1.url else c2
            await dead.stop()
            await until(lambda: sum(s["established"] for s in a.status()["sessions"]) == 1,
                        "one session left")
            await until(lambda: a.status()["sessions"][[c1, c2].index(dead) ^ 1]["primary"],
                        "failover of the config source")
            assert a.port_info(P1)["plugged"]

    run(main())


def test_local_api_on_unix_socket() -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            sock = Path(tmp) / "agent.sock"
            async with fake_control(two_node_config()) as fc, \
                    agent("n1", N1, [fc.url], SimDatapath(SimFabric())) as a:
                runner = await serve_unix(a, sock)
                try:
                    conn = aiohttp.UnixConnector(path=str(sock))
                    async with aiohttp.ClientSession(connector=conn) as http:
                        async def call(method: str, path: str, body: Any = None
                                       ) -> tuple[int, Any]:
                            async with http.request(method, "http://agent" + path,
                                                    json=body) as r:
                                return r.status, await r.json()

                        st, port = await call("POST", "/ports", {"vmi": P1})
                        assert st == 200 and port["plugged"] and port["ifname"].startswith("tap")
                        assert (await call("GET", "/ports"))[1][0]["uuid"] == P1
                        st, routes = await call("GET", f"/routes?network={VN_NAME}")
                        assert [r["prefix"] for r in routes] == ["198.51.100.1/32"]
                        st, acls = await call("GET", f"/acls?port={P1}")
                        assert st == 200 and acls[0]["acl"] == []
                        st, tr = await call("POST", "/trace", {"port": P1,
                                                               "dst": "198.51.100.1"})
                        assert st == 200 and tr["verdict"] == "delivered"
                        assert (await call("POST", "/ports", {}))[0] == 400
                        assert (await call("DELETE", "/ports/nope"))[0] == 200
                        assert (await call("DELETE", f"/ports/{P1}"))[1]["deleted"] is True
                finally:
                    await runner.cleanup()

    run(main())

