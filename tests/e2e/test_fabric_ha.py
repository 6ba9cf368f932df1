"""Two control nodes on one store: agents hold a session to each; one is killed (-9) and
traffic keeps flowing on the routes of the other session, new ports still converge through
the survivor, and its transformer takes the lease over."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from tests.e2e.fabric import (
    PROJECT,
    Api,
    Fabric,
    assert_no_duplicates,
    check_delivered,
    has_route,
    holds_lease,
    ip,
    plug,
    route_table,
    routes_removed,
    run,
    transformed,
)
from tests.waits import until
from tungsten.api.fsck import check_store
from tungsten.store import open_store


def test_two_control_nodes_survive_a_kill(controller_factory: Any, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    first = controller_factory(store=store, args=["--hold-time", "1"])
    second = controller_factory(store=store, args=["--hold-time", "1"])

    async def main() -> None:
        async with ClientSession() as http:
            await until(lambda: holds_lease(first) or holds_lease(second),
                        "one transformer holds the lease")
            assert not (holds_lease(first) and holds_lease(second))
            # kill the lease holder; the agents' first (primary) session goes to it, and
            # they use the survivor's config API
            doomed, survivor = (first, second) if holds_lease(first) else (second, first)
            api = Api(http, survivor.url)
            await api.network("red", "198.51.100.0/24")
            await Api(http, doomed.url).network("blue", "203.0.113.0/24")
            fab = Fabric(http)

            try:
                nodes = [await fab.agent(f"n{i}", f"198.19.0.{i}", [doomed.url, survivor.url],
                                         api_url=survivor.url) for i in (1, 2, 3)]
                red = [await plug(n, "red", f"r{i}") for i, n in enumerate(nodes, 1)]
                blue = [await plug(n, "blue", f"b{i}") for i, n in enumerate(nodes[:2], 1)]
                await until(lambda: all(len(s["sessions"]) == 2 and all(
                    x["established"] for x in s["sessions"]) for s in
                    (n.status() for n in nodes)), "two sessions per agent")
                await until(lambda: all(n.converged_routes() == c for n, c in
                                        zip(nodes, (5, 5, 3), strict=True)),
                            "every route on every node")
                # both control nodes have every route (each agent announces to both)
                for c in (first, second):
                    async with http.get(c.url + "/control/v1/status") as r:
                        status = await r.json()
                    assert status["routes"] == 5 and status["agents"] == 3, status
                await transformed(api, [*PROJECT, "red"])
                for n in nodes:
                    assert_no_duplicates(n)  # two sessions, each route once
                tables = [route_table(n) for n in nodes]
                removed = [routes_removed(n) for n in nodes]

                await asyncio.to_thread(doomed.kill9)
                await until(lambda: all(
                    sum(x["established"] for x in n.status()["sessions"]) == 1
                    and any(x["primary"] and x["url"] == survivor.url
                            for x in n.status()["sessions"]) for n in nodes),
                    "the survivor is every agent's primary")
                assert not any(n.headless for n in nodes)
                # the routes are those the survivor has: the same as before, and none was
                # withdrawn and re-added on the way
                assert [route_table(n) for n in nodes] == tables
                assert [routes_removed(n) for n in nodes] == removed
                check_delivered(nodes[0], red[0], red[1], "tcp", 80)
                check_delivered(nodes[2], red[2], red[0])
                check_delivered(nodes[1], blue[1], blue[0], "udp", 53)
                res = nodes[0].trace(red[0]["uuid"], ip(blue[1]))
                assert res.verdict == "no_route", res

                # new ports converge through the survivor
                late = await plug(nodes[2], "red", "r3b")
                b3 = await plug(nodes[2], "blue", "b3")
                await until(lambda: all(has_route(n, ip(late)) for n in nodes)
                            and all(has_route(n, ip(b3)) for n in nodes[:2]),
                            "the new ports' routes everywhere")
                check_delivered(nodes[0], red[0], late, "tcp", 80)
                check_delivered(nodes[1], blue[1], b3)
                # a port deleted now is withdrawn through the survivor too
                assert await nodes[1].delete_port(red[1]["uuid"])
                await until(lambda: not any(has_route(n, ip(red[1])) for n in nodes),
                            "r2's route withdrawn everywhere")
                for n in nodes:
                    assert_no_duplicates(n)
                # the survivor's transformer took the lease over and serves new config
                await until(lambda: holds_lease(survivor), "the survivor holds the lease")
                await api.network("green", "192.0.2.0/24")
                await transformed(api, [*PROJECT, "green"])
            finally:
                await fab.close()
        await asyncio.to_thread(survivor.stop)
        s = open_store(store)
        try:
            assert check_store(s) == []
        finally:
            s.close()

    run(main())
