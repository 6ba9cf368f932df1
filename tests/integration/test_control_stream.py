"""The control node over real WebSockets on loopback: a config API app with the control node
mounted, fake agents as aiohttp WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.unit.test_control_views import Fabric
from tungsten.api.core import ConfigApi
from tungsten.api.server import build_app
from tungsten.control import protocol as p
from tungsten.control.node import STATUS_PATH, ControlNode
from tungsten.control.protocol import Route, View
from tungsten.store import open_store

WAIT = 20.0  # generous upper bound for a condition to become true (never asserted on)


class Agent:
    """A fake vRouter agent: one stream, the view built from what the node sends."""

    def __init__(self, http: aiohttp.ClientSession, url: str, node: str,
                 ports: list[str]) -> None:
        self.http, self.url, self.node, self.ports = http, url, node, ports
        self.msgs: list[dict[str, Any]] = []
        self.view: View = {}
        self.session: str | None = None
        self.revision: int | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None

    async def connect(self, resume: bool = False) -> None:
        self.ws = await self.http.ws_connect(self.url + p.STREAM_PATH)
        await self.ws.send_str(p.encode({
            "type": p.HELLO, "node": self.node, "underlay_ip": self.node, "ports": self.ports,
            "session": self.session if resume else None,
            "revision": self.revision if resume else None}))
        self.reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            msg = p.decode(frame.data)
            self.msgs.append(msg)
            if msg["type"] == p.SNAPSHOT:
                self.view, self.session, self.revision = msg["view"], msg["session"], \
                    msg["revision"]
            elif msg["type"] == p.DELTA:
                assert self.revision is not None and msg["revision"] == self.revision + 1
                p.apply_delta(self.view, msg)
                self.revision = msg["revision"]

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(p.encode(msg))

    async def publish(self, *routes: Route) -> None:
        await self.send({"type": p.ROUTES, "add": list(routes)})

    async def drop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await self.reader
        self.ws = self.reader = None

    def prefixes(self) -> set[tuple[str, str]]:
        return {(r["ri"], r["prefix"]) for r in self.view.get("routes", {}).values()}

    def withdrawn(self) -> list[str]:
        return [k for m in self.msgs if m["type"] == p.DELTA
                for k in m["remove"].get("routes", [])]

    async def wait(self, cond: Callable[[], bool], what: str) -> None:
        for _ in range(int(WAIT / 0.01)):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.node}: timed out waiting for {what}; got {self.msgs}")


@contextlib.asynccontextmanager
async def serve(api: ConfigApi, **kw: Any) -> AsyncIterator[tuple[ControlNode, str]]:
    app = build_app(api)
    node = ControlNode(api, **kw)
    node.mount(app)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield node, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def agents() -> AsyncIterator[Callable[[str, str, list[str]], Awaitable[Agent]]]:
    made: list[Agent] = []
    async with aiohttp.ClientSession() as http:
        async def make(url: str, node: str, ports: list[str]) -> Agent:
            a = Agent(http, url, node, ports)
            made.append(a)
            await a.connect()
            await a.wait(lambda: a.session is not None, "a snapshot")
            return a
        try:
            yield make
        finally:
            for a in made:
                await a.drop()


def route(f: Fabric, vn: str, port: str, address: str, node: str) -> Route:
    return Route(ri=f.ri_name(vn), prefix=f"{address}/32", mac="02:00:00:00:00:01",
                 nexthop=node, vni=5, encap="vxlan", port=port, node=node, sgs=[], tags=[])


def address(f: Fabric, port: str) -> str:
    iip = next(u for u in f.api.db.back[port] if f.api.db.objs[u].type == "instance-ip")
    return str(f.api.db.objs[iip].props["instance_ip_address"])


def run(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(fn())


def two_networks() -> tuple[Fabric, str, str, list[str]]:
    f = Fabric()
    red, blue = f.network("red", "198.51.100.0/24"), f.network("blue", "203.0.113.0/24")
    return f, red, blue, [f.port(red), f.port(red), f.port(blue)]


def test_routes_reach_agents_of_the_same_network_only() -> None:
    async def body() -> None:
        f, red, blue, (pa, pb, pc) = two_networks()
        async with serve(f.api) as (_, url), agents() as make:
            a = await make(url, "192.0.2.1", [pa])
            b = await make(url, "192.0.2.2", [pb])
            c = await make(url, "192.0.2.3", [pc])
            snap = a.msgs[0]
            assert snap["type"] == p.SNAPSHOT and snap["revision"] == 1
            assert list(snap["view"]["ports"]) == [pa]
            assert list(snap["view"]["networks"]) == [red]
            assert snap["view"]["routes"] == {}
            await a.publish(route(f, red, pa, address(f, pa), "192.0.2.1"))
            await c.publish(route(f, blue, pc, address(f, pc), "192.0.2.3"))
            want = (f.ri_name(red), f"{address(f, pa)}/32")
            await b.wait(lambda: want in b.prefixes(), "A's route")
            await c.wait(lambda: len(c.prefixes()) == 1, "C's own route")
            assert b.prefixes() == {want}
            assert c.prefixes() == {(f.ri_name(blue), f"{address(f, pc)}/32")}
    run(body)


def test_connections_and_shared_route_targets_leak_routes() -> None:
    async def body() -> None:
        f, red, blue, (pa, _, pc) = two_networks()
        async with serve(f.api) as (node, url), agents() as make:
            a = await make(url, "192.0.2.1", [pa])
            c = await make(url, "192.0.2.3", [pc])
            ra = route(f, red, pa, address(f, pa), "192.0.2.1")
            rc = route(f, blue, pc, address(f, pc), "192.0.2.3")
            await a.publish(ra)
            await c.publish(rc)
            await c.wait(lambda: len(c.prefixes()) == 1, "C's own route")
            await a.wait(lambda: len(a.prefixes()) == 1, "A's own route")
            assert c.prefixes() == {(f.ri_name(blue), rc["prefix"])}  # isolated so far
            # mutual connections, as the transformer makes for a policy between the two
            f.update("routing-instance", f.ri(red), {"routing_instance_refs": [
                {"uuid": f.ri(blue), "attr": {}}]})
            f.update("routing-instance", f.ri(blue), {"routing_instance_refs": [
                {"uuid": f.ri(red), "attr": {}}]})
            leaked = (f.ri_name(blue), ra["prefix"])
            await c.wait(lambda: leaked in c.prefixes(), "A's route leaked into blue")
            await a.wait(lambda: (f.ri_name(red), rc["prefix"]) in a.prefixes(),
                         "C's route leaked into red")
            # connections gone, a shared route target instead (import and export)
            rt = f.route_target("target:64512:8000100")
            for vn in (red, blue):
                f.update("routing-instance", f.ri(vn), {
                    "routing_instance_refs": [],
                    "route_target_refs": [{"uuid": rt, "attr": {"import_export": None}}]})
            both = {f.ri_name(red), f.ri_name(blue)}
            await c.wait(lambda: node.rib.sources(f.ri_name(blue)) == both
                         and not node.rib.pending(f.ri_name(blue)), "the targets applied")
            await asyncio.sleep(0.1)  # let the deltas of that flush arrive
            assert leaked in c.prefixes()
            # export only from red: blue no longer imports it
            f.update("routing-instance", f.ri(blue), {"route_target_refs": [
                {"uuid": rt, "attr": {"import_export": "export"}}]})
            await c.wait(lambda: leaked not in c.prefixes(), "the leak withdrawn")
            await a.wait(lambda: (f.ri_name(red), rc["prefix"]) in a.prefixes(),
                         "blue still exports into red")
    run(body)


def test_reconnect_within_hold_time_resumes_and_flaps_nothing() -> None:
    async def body() -> None:
        f, red, _, (pa, pb, _) = two_networks()
        async with serve(f.api, hold_time=1.0) as (node, url), agents() as make:
            a = await make(url, "192.0.2.1", [pa])
            b = await make(url, "192.0.2.2", [pb])
            ra = route(f, red, pa, address(f, pa), "192.0.2.1")
            await a.publish(ra)
            await b.wait(lambda: len(b.prefixes()) == 1, "A's route")
            await a.wait(lambda: len(a.prefixes()) == 1, "A's own route back")
            await a.drop()
            await b.publish(route(f, red, pb, address(f, pb), "192.0.2.2"))
            await a.connect(resume=True)
            await a.wait(lambda: any(m["type"] == p.RESUMED for m in a.msgs), "resumed")
            await a.wait(lambda: len(a.prefixes()) == 2, "the delta missed while away")
            await a.publish(ra)  # an agent re-announces after a reconnect: no change
            await asyncio.sleep(1.5)  # past the hold time
            assert b.withdrawn() == []
            assert len(b.prefixes()) == 2
            assert node.stats()["agents"] == 2
    run(body)


def test_disconnect_beyond_hold_time_withdraws() -> None:
    async def body() -> None:
        f, red, _, (pa, pb, _) = two_networks()
        async with serve(f.api, hold_time=0.3) as (node, url), agents() as make:
            a = await make(url, "192.0.2.1", [pa])
            b = await make(url, "192.0.2.2", [pb])
            await a.publish(route(f, red, pa, address(f, pa), "192.0.2.1"))
            await b.wait(lambda: len(b.prefixes()) == 1, "A's route")
            await a.drop()
            await b.wait(lambda: len(b.withdrawn()) == 1, "the withdraw")
            assert b.prefixes() == set()
            assert node.stats()["agents"] == 1
            await a.connect(resume=True)  # too late: a new session and snapshot
            await a.wait(lambda: a.msgs[-1]["type"] == p.SNAPSHOT, "a fresh snapshot")
            assert a.session is not None and a.session != b.session
    run(body)


def test_config_change_reaches_the_agent_as_a_delta() -> None:
    async def body() -> None:
        f, _, _, (pa, _, _) = two_networks()
        async with serve(f.api) as (_, url), agents() as make:
            a = await make(url, "192.0.2.1", [pa])
            web_sg = f.sg("web")
            sg_id = f.api.db.objs[web_sg].props["security_group_id"]
            f.update("virtual-machine-interface", pa, {
                "security_group_refs": [{"uuid": web_sg}]})
            await a.wait(lambda: a.view["ports"][pa]["sgs"] == [sg_id], "the port's SG")
            assert str(sg_id) in a.view["security_groups"]
            assert a.msgs[-1]["type"] == p.DELTA
    run(body)


def test_subscription_is_not_held_by_the_coalescing_window() -> None:
    """A flush just went out (an agent's route); a subscription right after it is flushed
    at once, not after the window (a CNI ADD waits for that port's config), while another
    route within the window still waits for it."""
    window = 6.0

    async def body() -> None:
        f, red, _, (pa, pb, _) = two_networks()
        async with serve(f.api, window=window) as (_, url), agents() as make:
            a = await make(url, "192.0.2.1", [pa])
            loop = asyncio.get_running_loop()
            await a.publish(route(f, red, pa, address(f, pa), "192.0.2.1"))
            await a.wait(lambda: len(a.prefixes()) == 1, "its route (leading edge)")
            t0 = loop.time()
            await a.send({"type": p.SUBSCRIBE, "ports": [pb]})
            await a.wait(lambda: pb in a.view["ports"], "the new port's config")
            assert loop.time() - t0 < window / 2, "the subscription waited for the window"
            await a.publish(route(f, red, pb, address(f, pb), "192.0.2.1"))
            await asyncio.sleep(window / 4)
            assert len(a.prefixes()) == 1, "a route within the window was not coalesced"
            await a.wait(lambda: len(a.prefixes()) == 2, "the second route, after the window")
    run(body)


def test_status_endpoint_and_protocol_errors() -> None:
    async def body() -> None:
        f, red, _, (pa, _, _) = two_networks()
        async with serve(f.api, name="control-1") as (_, url), agents() as make:
            a = await make(url, "192.0.2.1", [pa])
            await a.publish(route(f, red, pa, address(f, pa), "192.0.2.1"))
            await a.wait(lambda: len(a.prefixes()) == 1, "own route")
            async with aiohttp.ClientSession() as http:
                async with http.get(url + STATUS_PATH) as resp:
                    stats = await resp.json()
                assert stats["name"] == "control-1" and stats["agents"] == 1
                assert stats["routes_per_ri"] == {f.ri_name(red): 1}
                async with http.ws_connect(url + p.STREAM_PATH) as ws:
                    await ws.send_str(p.encode({"type": p.ROUTES, "add": []}))
                    msg = await ws.receive_json(timeout=WAIT)
                    assert msg["type"] == p.ERROR and "hello" in msg["message"]
    run(body)


def test_two_control_nodes_serve_an_agent_independently(tmp_path: Path) -> None:
    async def body() -> None:
        url_store = f"sqlite:///{tmp_path / 'config.db'}"
        f = Fabric(ConfigApi(open_store(url_store)))
        other = ConfigApi(open_store(url_store))  # a second controller on the same store
        red = f.network("red", "198.51.100.0/24")
        pa, pb = f.port(red), f.port(red)
        async with serve(f.api, name="c1") as (_, url1), \
                serve(other, name="c2") as (_, url2), agents() as make:
            a1 = await make(url1, "192.0.2.1", [pa])
            a2 = await make(url2, "192.0.2.1", [pa])
            b1 = await make(url1, "192.0.2.2", [pb])
            b2 = await make(url2, "192.0.2.2", [pb])
            ra = route(f, red, pa, address(f, pa), "192.0.2.1")
            for a in (a1, a2):
                await a.publish(ra)
            for b in (b1, b2):
                await b.wait(partial(lambda x: len(x.prefixes()) == 1, b), "A's route via each")
            # a write on the first controller reaches the second node's agents (catch-up)
            web_sg = f.sg("web")
            f.update("virtual-machine-interface", pb, {"security_group_refs": [{"uuid": web_sg}]})
            for b in (b1, b2):
                await b.wait(partial(lambda x: bool(x.view["ports"][pb]["sgs"]), b), "the SG")
    run(body)
