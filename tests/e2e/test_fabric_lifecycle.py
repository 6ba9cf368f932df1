"""Ports and agents come and go: a deleted port's route is withdrawn everywhere; a lost agent's
routes go when the hold time expires, and come back when it restarts with its state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from tests.e2e.fabric import (
    Api,
    Fabric,
    assert_no_duplicates,
    check_delivered,
    connected,
    has_route,
    ip,
    plug,
    run,
)
from tests.waits import until


def test_deleting_a_port_withdraws_its_route_everywhere(controller_factory: Any) -> None:
    ctl = controller_factory(args=["--hold-time", "1"])

    async def main() -> None:
        async with connected(ctl.url) as (api, fab):
            await api.network("red", "198.51.100.0/24")
            nodes = [await fab.agent(f"n{i}", f"198.19.0.{i}", [ctl.url])
                     for i in (1, 2, 3)]
            ports = [await plug(n, "red", f"p{i}") for i, n in enumerate(nodes, 1)]
            extra = await plug(nodes[0], "red", "p1b")  # a second port on n1
            await until(lambda: all(n.converged_routes() == 4 for n in nodes),
                        "four routes on every node")
            check_delivered(nodes[1], ports[1], ports[0])
            check_delivered(nodes[2], ports[2], extra, "tcp", 80)

            # delete p1: gone from every node, its VMI gone from the config
            assert await nodes[0].delete_port(ports[0]["uuid"])
            await until(lambda: all(not has_route(n, ip(ports[0])) for n in nodes),
                        "p1's route withdrawn on every node")
            await until(lambda: all(n.converged_routes() == 3 for n in nodes),
                        "three routes on every node")
            for n, src in ((nodes[1], ports[1]), (nodes[2], ports[2]), (nodes[0], extra)):
                res = n.trace(src["uuid"], ip(ports[0]))
                assert res.verdict == "no_route", res
            async with api.http.get(f"{ctl.url}/virtual-machine-interface/"
                                f"{ports[0]['uuid']}") as r:
                assert r.status == 404
            # the other port of that node is untouched
            check_delivered(nodes[2], ports[2], extra, "tcp", 80)
            check_delivered(nodes[0], extra, ports[1])
            # deleting again is a no-op
            assert not await nodes[0].delete_port(ports[0]["uuid"])
            # the last port of a node goes: that node's VRF goes with it
            assert await nodes[2].delete_port(ports[2]["uuid"])
            await until(lambda: nodes[2].converged_routes() == 0, "n3 holds no VRF")
            await until(lambda: all(n.converged_routes() == 2 for n in nodes[:2]),
                        "two routes left on n1 and n2")
            res = nodes[1].trace(ports[1]["uuid"], ip(ports[2]))
            assert res.verdict == "no_route", res
            # a new port converges as before
            again = await plug(nodes[2], "red", "p3b")
            await until(lambda: all(has_route(n, ip(again)) for n in nodes[:2]),
                        "the new port's route on n1 and n2")
            check_delivered(nodes[0], extra, again)
            for n in nodes:
                assert_no_duplicates(n)

    run(main())


def test_lost_agent_is_withdrawn_after_hold_time_and_restarts(controller_factory: Any,
                                                               tmp_path: Path) -> None:
    ctl = controller_factory(args=["--hold-time", "1"])

    async def main() -> None:
        async with ClientSession() as http:
            api = Api(http, ctl.url)
            await api.network("red", "198.51.100.0/24")
            fab = Fabric(http)
            state = tmp_path / "n2-state"
            try:
                n1 = await fab.agent("n1", "198.19.0.1", [ctl.url])
                n2 = await fab.agent("n2", "198.19.0.2", [ctl.url], state_dir=state)
                n3 = await fab.agent("n3", "198.19.0.3", [ctl.url])
                p1 = await plug(n1, "red", "p1")
                lost = [await plug(n2, "red", f"p2-{i}") for i in range(2)]
                p3 = await plug(n3, "red", "p3")
                await until(lambda: all(n.converged_routes() == 4 for n in (n1, n2, n3)),
                            "four routes on every node")
                check_delivered(n1, p1, lost[0])
                before = n1.converged_routes()

                # n2 is lost: stopped without deleting its ports (its datapath leaves too)
                await fab.stop(n2)
                await until(lambda: all(not has_route(n, ip(p)) for n in (n1, n3)
                                        for p in lost),
                            "n2's routes withdrawn once the hold time expired")
                assert n1.converged_routes() == n3.converged_routes() == before - 2
                res = n1.trace(p1["uuid"], ip(lost[1]), proto_="tcp", dport=80)
                assert res.verdict == "no_route", res
                check_delivered(n1, p1, p3)  # the rest is untouched
                # its ports stay in the config: a lost node is not a deleted port
                for p in lost:
                    async with api.http.get(f"{ctl.url}/virtual-machine-interface/"
                                        f"{p['uuid']}") as r:
                        assert r.status == 200

                # n2 comes back with its state dir: it re-adopts its ports
                back = await fab.agent("n2", "198.19.0.2", [ctl.url], state_dir=state)
                await until(lambda: {p["uuid"] for p in back.ports() if p["plugged"]}
                            == {p["uuid"] for p in lost}, "n2 re-adopted its ports")
                assert [p["ips"] for p in back.ports()] == [p["ips"] for p in
                                                            sorted(lost,
                                                                   key=lambda p: p["uuid"])]
                await until(lambda: all(n.converged_routes() == 4 for n in (n1, back, n3)),
                            "n2's routes are back everywhere")
                for p in lost:
                    check_delivered(n1, p1, p, "tcp", 80)
                    check_delivered(n3, p3, p)
                check_delivered(back, lost[0], p1)
                for n in (n1, back, n3):
                    assert_no_duplicates(n)
            finally:
                await fab.close()

    run(main())
