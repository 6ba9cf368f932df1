"""The control node's fan-out without sockets: fake links, explicit flushes.  Coalescing,
shared delta bodies, consecutive revisions, config deltas, resume, hold time, takeover."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from tests.unit.test_control_views import Fabric
from tungsten.control import wire
from tungsten.control.node import ControlNode
from tungsten.control.protocol import Route, View, apply_delta, route_key


class FakeLink:
    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.closed = False

    def send(self, data: bytes) -> None:
        self.raw.append(data)

    def send_delta(self, revision: int, body: bytes) -> None:
        self.raw.append(wire.delta(revision, body))

    def close(self) -> None:
        self.closed = True

    @property
    def msgs(self) -> list[dict[str, Any]]:
        return [orjson.loads(r) for r in self.raw]

    def view(self) -> View:
        """The view an agent builds from everything received, checking revisions."""
        view: View = {}
        rev = None
        for m in self.msgs:
            if m["type"] == "snapshot":
                view, rev = m["view"], m["revision"]
            elif m["type"] == "delta":
                assert rev is not None and m["revision"] == rev + 1
                apply_delta(view, m)
                rev = m["revision"]
        return view

    def withdrawn(self) -> list[str]:
        return [k for m in self.msgs if m["type"] == "delta"
                for k in m["remove"].get("routes", [])]


def route(f: Fabric, vn: str, port: str, last: int, nexthop: str) -> Route:
    return Route(ri=f.ri_name(vn), prefix=f"198.51.100.{last}/32", mac="02:00:00:00:00:01",
                 nexthop=nexthop, vni=5, encap="vxlan", port=port, node=nexthop, sgs=[], tags=[])


def run(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(fn())


def hello(node: str, ports: list[str], **kw: Any) -> dict[str, Any]:
    return {"type": "hello", "node": node, "underlay_ip": node, "ports": ports, **kw}


def test_route_changes_are_coalesced_into_one_shared_delta() -> None:
    async def body() -> None:
        f = Fabric()
        red = f.network("red", "198.51.100.0/24")
        pa, pb, pc = f.port(red), f.port(red), f.port(red)
        node = ControlNode(f.api)
        la, lb, lc = FakeLink(), FakeLink(), FakeLink()
        sa = node.attach(hello("192.0.2.1", [pa]), la)
        sb = node.attach(hello("192.0.2.2", [pb]), lb)
        sc = node.attach(hello("192.0.2.3", [pc]), lc)
        for batch in range(3):
            node.handle(sa, {"type": "routes", "add": [
                route(f, red, pa, 10 * batch + i, "192.0.2.1") for i in range(10)]})
        node.handle(sa, {"type": "routes", "del": [route_key(route(f, red, pa, 0, "192.0.2.1"))]})
        node.flush()
        for link in (lb, lc):
            assert [m["type"] for m in link.msgs] == ["snapshot", "delta"]
            assert len(link.view()["routes"]) == 29
        # the same change for B and C: one body, shared
        assert sb.buffer[-1][1] is sc.buffer[-1][1]
        node.flush()  # nothing new: no empty deltas
        assert len(lb.msgs) == 2
    run(body)


def test_isolated_networks_and_a_late_joiner_gets_the_routes_in_its_snapshot() -> None:
    async def body() -> None:
        f = Fabric()
        red, blue = f.network("red", "198.51.100.0/24"), f.network("blue", "203.0.113.0/24")
        pa, pb = f.port(red), f.port(blue)
        node = ControlNode(f.api)
        la, lb = FakeLink(), FakeLink()
        sa = node.attach(hello("192.0.2.1", [pa]), la)
        node.attach(hello("192.0.2.2", [pb]), lb)
        node.handle(sa, {"type": "routes", "add": [route(f, red, pa, 1, "192.0.2.1")]})
        node.flush()
        assert lb.view()["routes"] == {}
        lc = FakeLink()
        node.attach(hello("192.0.2.3", [f.port(red)]), lc)
        assert [r["prefix"] for r in lc.view()["routes"].values()] == ["198.51.100.1/32"]
    run(body)


def test_config_change_reaches_only_the_affected_agent() -> None:
    async def body() -> None:
        f = Fabric()
        red = f.network("red", "198.51.100.0/24")
        pa, pb = f.port(red), f.port(red)
        node = ControlNode(f.api)
        await node.start()
        try:
            la, lb = FakeLink(), FakeLink()
            node.attach(hello("192.0.2.1", [pa]), la)
            node.attach(hello("192.0.2.2", [pb]), lb)
            web = f.sg("web")
            f.update("virtual-machine-interface", pa, {"security_group_refs": [{"uuid": web}]})
            node.flush()
            sg_id = f.api.db.objs[web].props["security_group_id"]
            assert la.view()["ports"][pa]["sgs"] == [sg_id]
            assert list(la.view()["security_groups"]) == [str(sg_id)]
            assert len(lb.msgs) == 1
            f.acl("virtual-network", red, "red", [{"rule_uuid": "r"}])
            node.flush()
            assert la.view()["networks"][red]["acl"] == [{"rule_uuid": "r"}]
            assert lb.view()["networks"][red]["acl"] == [{"rule_uuid": "r"}]
        finally:
            await node.stop()
    run(body)


def test_moving_a_port_swaps_the_routes_of_the_old_network_for_the_new() -> None:
    async def body() -> None:
        f = Fabric()
        red, blue = f.network("red", "198.51.100.0/24"), f.network("blue", "203.0.113.0/24")
        pr, pb, mine = f.port(red), f.port(blue), f.port(red)
        node = ControlNode(f.api)
        sr = node.attach(hello("192.0.2.1", [pr]), FakeLink())
        sb = node.attach(hello("192.0.2.2", [pb]), FakeLink())
        node.handle(sr, {"type": "routes", "add": [route(f, red, pr, 1, "192.0.2.1")]})
        node.handle(sb, {"type": "routes", "add": [route(f, blue, pb, 2, "192.0.2.2")]})
        node.flush()
        link = FakeLink()
        s = node.attach(hello("192.0.2.3", [mine]), link)
        assert {r["ri"] for r in link.view()["routes"].values()} == {f.ri_name(red)}
        node.handle(s, {"type": "unsubscribe", "ports": [mine]})
        node.handle(s, {"type": "subscribe", "ports": [pb]})
        node.flush()
        view = link.view()
        assert list(view["networks"]) == [blue]
        assert {r["ri"] for r in view["routes"].values()} == {f.ri_name(blue)}
    run(body)


def test_resume_within_hold_time_flaps_nothing() -> None:
    async def body() -> None:
        f = Fabric()
        red = f.network("red", "198.51.100.0/24")
        pa, pb = f.port(red), f.port(red)
        node = ControlNode(f.api, hold_time=0.2)
        la, lb = FakeLink(), FakeLink()
        sa = node.attach(hello("192.0.2.1", [pa]), la)
        sb = node.attach(hello("192.0.2.2", [pb]), lb)
        node.handle(sa, {"type": "routes", "add": [route(f, red, pa, 1, "192.0.2.1")]})
        node.flush()
        last = la.msgs[-1]["revision"]
        node.detach(sa, la)
        node.handle(sb, {"type": "routes", "add": [route(f, red, pb, 2, "192.0.2.2")]})
        node.flush()  # A is away: its delta is kept for it
        la2 = FakeLink()
        again = node.attach(hello("192.0.2.1", [pa], session=sa.id, revision=last), la2)
        assert again is sa
        msgs = la2.msgs
        assert msgs[0] == {"type": "resumed", "session": sa.id, "revision": last}
        assert [m["revision"] for m in msgs[1:]] == [last + 1]
        await asyncio.sleep(0.4)  # past the hold time: nothing may expire now
        node.flush()
        assert lb.withdrawn() == []
        assert sa.id in node.sessions
    run(body)


def test_hold_time_expiry_withdraws_the_routes() -> None:
    async def body() -> None:
        f = Fabric()
        red = f.network("red", "198.51.100.0/24")
        pa, pb = f.port(red), f.port(red)
        node = ControlNode(f.api, hold_time=0.05)
        la, lb = FakeLink(), FakeLink()
        sa = node.attach(hello("192.0.2.1", [pa]), la)
        node.attach(hello("192.0.2.2", [pb]), lb)
        r = route(f, red, pa, 1, "192.0.2.1")
        node.handle(sa, {"type": "routes", "add": [r]})
        node.flush()
        node.detach(sa, la)
        for _ in range(100):
            if sa.id not in node.sessions:
                break
            await asyncio.sleep(0.01)
        node.flush()
        assert lb.withdrawn() == [route_key(r)]
        # the session is gone: resuming it gets a new snapshot
        la2 = FakeLink()
        s = node.attach(hello("192.0.2.1", [pa], session=sa.id, revision=3), la2)
        assert s.id != sa.id and la2.msgs[0]["type"] == "snapshot"
    run(body)


def test_too_old_a_revision_gets_a_snapshot_in_the_same_session() -> None:
    async def body() -> None:
        f = Fabric()
        red = f.network("red", "198.51.100.0/24")
        pa = f.port(red)
        node = ControlNode(f.api, hold_time=5)
        la = FakeLink()
        sa = node.attach(hello("192.0.2.1", [pa]), la)
        sa.ack(sa.revision)
        node.handle(sa, {"type": "routes", "add": [route(f, red, pa, 1, "192.0.2.1")]})
        node.flush()
        node.handle(sa, {"type": "ack", "revision": sa.revision})
        node.detach(sa, la)
        la2 = FakeLink()
        assert node.attach(hello("192.0.2.1", [pa], session=sa.id, revision=1), la2) is sa
        snap = la2.msgs[0]
        assert snap["type"] == "snapshot" and snap["session"] == sa.id
        assert snap["revision"] == 3 and len(snap["view"]["routes"]) == 1
        await node.stop()
    run(body)


def test_a_restarted_agent_takes_over_its_routes_without_a_flap() -> None:
    async def body() -> None:
        f = Fabric()
        red = f.network("red", "198.51.100.0/24")
        pa, pb = f.port(red), f.port(red)
        node = ControlNode(f.api, hold_time=0.1)
        la, lb = FakeLink(), FakeLink()
        sa = node.attach(hello("192.0.2.1", [pa]), la)
        node.attach(hello("192.0.2.2", [pb]), lb)
        kept, dropped = route(f, red, pa, 1, "192.0.2.1"), route(f, red, pa, 2, "192.0.2.1")
        node.handle(sa, {"type": "routes", "add": [kept, dropped]})
        node.flush()
        new = node.attach(hello("192.0.2.1", [pa]), FakeLink())  # no session: a restart
        assert new.id != sa.id and la.closed
        node.handle(new, {"type": "routes", "add": [kept]})
        node.flush()
        assert lb.withdrawn() == []
        for _ in range(100):
            if new.sweep is None:
                break
            await asyncio.sleep(0.01)
        node.flush()
        assert lb.withdrawn() == [route_key(dropped)]
        assert list(lb.view()["routes"]) == [route_key(kept)]
        await node.stop()
    run(body)


def test_stats_report_agents_sessions_and_routes() -> None:
    async def body() -> None:
        f = Fabric()
        red = f.network("red", "198.51.100.0/24")
        pa = f.port(red)
        node = ControlNode(f.api, name="control-1")
        sa = node.attach(hello("192.0.2.1", [pa]), FakeLink())
        node.handle(sa, {"type": "routes", "add": [route(f, red, pa, 1, "192.0.2.1")]})
        stats = node.stats()
        assert stats["name"] == "control-1" and stats["agents"] == 1
        assert stats["routes_per_ri"] == {f.ri_name(red): 1}
        assert stats["sessions"][sa.id]["node"] == "192.0.2.1"
    run(body)
