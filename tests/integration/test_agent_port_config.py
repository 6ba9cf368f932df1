"""``Agent.wait_port_config``: a port's config wakes its waiter as soon as the control
node's delta lands, not after the reconcile pass (and datapath apply) that delta starts;
the CNI ADD plugs meanwhile."""

from __future__ import annotations

import asyncio

from tests.integration.test_agent_fake_control import (
    N1,
    P1,
    VN,
    agent,
    fake_control,
    network,
    port_cfg,
    run,
)
from tests.waits import until
from tungsten.control import protocol as proto
from tungsten.datapath.base import DatapathState
from tungsten.datapath.sim import SimDatapath


class HeldDatapath(SimDatapath):
    """Once ``hold`` is set, applies only when ``release`` is set (a datapath busy
    programming the kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.release = asyncio.Event()
        self.applying = 0

    async def apply_async(self, state: DatapathState) -> None:
        if self.hold:
            self.applying += 1
            await self.release.wait()
        self.apply(state)


def test_config_wakes_the_waiter_before_the_datapath_pass() -> None:
    async def main() -> None:
        dp = HeldDatapath()
        async with fake_control() as fc, agent("n1", N1, [fc.url], dp) as a:
            await until(lambda: bool(fc.msgs(proto.HELLO)), "hello")
            await a.add_port(P1, wait=0)
            await until(lambda: any(P1 in m["ports"] for m in fc.msgs(proto.SUBSCRIBE)),
                        "subscribe")
            assert await a.wait_port_config(P1, 0.2) is None  # no config yet: times out
            dp.hold = True
            waiter = asyncio.ensure_future(a.wait_port_config(P1, 30))
            # the port without addresses yet is not complete: still waiting
            cfg = port_cfg(P1, "198.51.100.1")
            await fc.delta({"ports": {P1: {**cfg, "ips": []}}, "networks": {VN: network()}})
            await until(lambda: dp.applying > 0, "a pass started on the delta")
            await asyncio.sleep(0.1)
            assert not waiter.done()
            await fc.delta({"ports": {P1: cfg}})
            info = await asyncio.wait_for(waiter, 10)
            assert info is not None
            assert (info["mac"], info["ips"], info["network"], info["mtu"]) == (
                cfg["mac"], ["198.51.100.1"], VN, 1450)
            # ... while the pass the first delta started is still held in the datapath
            cur = dp.current()
            assert cur is None or P1 not in cur.ports
            assert a.live_config()["networks"][VN]["subnets"][0]["gateway"] == "198.51.100.254"
            dp.release.set()
            plugged = await a.add_port(P1, wait=10)
            assert plugged["plugged"] is True

    run(main())


def test_stop_cancels_config_waiters() -> None:
    async def main() -> None:
        async with fake_control() as fc:
            async with agent("n1", N1, [fc.url], SimDatapath()) as a:
                await until(lambda: bool(fc.msgs(proto.HELLO)), "hello")
                waiter = asyncio.ensure_future(a.wait_port_config(P1, 30))
                await asyncio.sleep(0.05)
            # the agent stopped: the waiter ends (cancelled), it does not hang
            done, _ = await asyncio.wait({waiter}, timeout=5)
            assert done and waiter.cancelled()

    run(main())
