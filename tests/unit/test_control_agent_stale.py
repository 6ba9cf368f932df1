"""The control node's agent stale time: routes of an agent whose stream broke without a
goodbye (a crash; its kernel datapath forwards on) outlive the hold time; a goodbye (a clean
stop) gets the hold time only."""

from __future__ import annotations

import asyncio

from tests.unit.test_control_fanout import FakeLink, hello, route, run
from tests.unit.test_control_views import Fabric
from tungsten.control.node import ControlNode
from tungsten.control.protocol import route_key


async def held_after(goodbye: bool, wait: float) -> tuple[bool, list[str]]:
    """Detach A (with or without a goodbye), wait: is A's session still held, and which of
    A's routes did B see withdrawn?"""
    f = Fabric()
    red = f.network("red", "198.51.100.0/24")
    pa, pb = f.port(red), f.port(red)
    node = ControlNode(f.api, hold_time=0.05, agent_stale_time=0.5)
    la, lb = FakeLink(), FakeLink()
    sa = node.attach(hello("192.0.2.1", [pa]), la)
    node.attach(hello("192.0.2.2", [pb]), lb)
    r = route(f, red, pa, 1, "192.0.2.1")
    node.handle(sa, {"type": "routes", "add": [r]})
    node.flush()
    node.detach(sa, la, goodbye)
    await asyncio.sleep(wait)
    node.flush()
    held = sa.id in node.sessions
    await node.stop()
    return held, [k for k in lb.withdrawn() if k == route_key(r)]


def test_a_crashed_agent_keeps_its_routes_past_the_hold_time() -> None:
    async def body() -> None:
        held, withdrawn = await held_after(goodbye=False, wait=0.2)
        assert held and withdrawn == []
    run(body)


def test_a_crashed_agent_loses_its_routes_after_the_stale_time() -> None:
    async def body() -> None:
        held, withdrawn = await held_after(goodbye=False, wait=0.8)
        assert not held and len(withdrawn) == 1, withdrawn
    run(body)


def test_a_goodbye_gets_the_hold_time_only() -> None:
    async def body() -> None:
        held, withdrawn = await held_after(goodbye=True, wait=0.2)
        assert not held and len(withdrawn) == 1, withdrawn
    run(body)


def test_the_stale_time_is_never_shorter_than_the_hold_time() -> None:
    f = Fabric()
    assert ControlNode(f.api, hold_time=5, agent_stale_time=1).agent_stale_time == 5
    assert ControlNode(f.api, hold_time=5).agent_stale_time == 5
